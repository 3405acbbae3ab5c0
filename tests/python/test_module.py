# The Python module against the CLI on the same engine: forward's logits and hook tensors bit for
# bit, edits at hook points against the C++ interventions, generation, the analyses, and bad input.
import json
import threading
import time

import numpy as np
import pytest

import outro
from conftest import DEMO, FIXTURES, OMNI_DEMO, read_safetensors, run_cli, same_bits

TOKENS = [1, 17, 42, 5, 99, 3, 250, 7, 64, 11]
HOOKS = [
    "embed",
    "blocks.0.attn.hook_pattern",
    "blocks.1.hook_resid_pre",
    "blocks.0.attn.hook_q",
    "blocks.1.attn.hook_k",
    "blocks.1.attn.hook_v",
    "blocks.1.attn.hook_z",
    "blocks.0.hook_mlp_out",
    "blocks.1.hook_resid_post",
    "ln_final",
]
# Fixture folders (random tiny checkpoints of every dtype / layout) and the trained demo model.
MODELS = ["qwen2_gqa_f32", "llama_bias_f16", "qwen2_mqa_bf16", "qwen2_sharded_f32", "outro-demo"]


def model_dir(name):
    return DEMO if name == "outro-demo" else FIXTURES / name


_cache = {}


def model(name):
    if name not in _cache:
        _cache[name] = outro.Model(str(model_dir(name)), device="cpu")
    return _cache[name]


# OutRo settings that act on the 2-layer random fixtures, which have no massive activation (Φ_LLM
# finds nothing there): both layers, token 0 given as the sink by the research override.
SMALL_OUTRO = {"end_layer": 2, "override_sinks": [0], "gamma": 2.0}


# The outro preset on the demo model, which has no sink either: OutRo must change nothing there.
CASES = [(n, mode) for n in MODELS for mode in ("plain", "config")] + [("outro-demo", "strategy")]


@pytest.mark.parametrize("name,mode", CASES)
def test_forward_equals_cli_bit_for_bit(name, mode, tmp_path):
    m = model(name)
    out = tmp_path / "f.safetensors"
    args = ["forward", "--model", model_dir(name), "--device", "cpu", "--tokens", ",".join(map(str, TOKENS)),
            "--hooks", ",".join(HOOKS), "--out", out]
    kw = {}
    if mode == "config":
        cfg = tmp_path / "outro.json"
        cfg.write_text(json.dumps(SMALL_OUTRO))
        args += ["--outro-config", cfg]
        kw["config"] = SMALL_OUTRO
    elif mode == "strategy":
        args += ["--strategy", "outro"]
        kw["strategy"] = "outro"
    run_cli(*args)
    ref = read_safetensors(out)
    r = m.forward(TOKENS, hooks=HOOKS, **kw)
    assert r.logits.dtype == np.float32
    assert r.logits.shape == (len(TOKENS), m.config["vocab_size"])
    assert same_bits(r.logits, ref["logits"])
    assert sorted(r.hooks) == sorted(HOOKS)
    for h in HOOKS:
        assert same_bits(r.hooks[h], ref[h]), h
    assert r.tokens == TOKENS
    if name == "outro-demo" and mode == "plain":  # ids as a numpy array are the same prompt
        assert same_bits(m.forward(np.array(TOKENS, dtype=np.int64)).logits, r.logits)
    if mode == "config":
        # the edit is real: the logits moved away from the plain model's, and the sinks are the override's
        assert not np.array_equal(r.logits, m.forward(TOKENS).logits)
        assert r.sinks == [[0] if l < 2 else [] for l in range(m.config["layers"])]
    elif mode == "strategy":
        # no massive activation in the demo model: no sink at any layer, the plain model bit for bit
        assert same_bits(r.logits, m.forward(TOKENS).logits)
        assert r.sinks == [[]] * m.config["layers"]
        assert any("no sink at any layer" in line for line in r.explain)
    else:
        assert r.sinks is None


def test_sinks_per_layer_equal_the_reference_on_planted_sinks():
    # tools/outro_fixtures.py's checkpoint: the reference's per-layer sink sets (transformers, method.md).
    d = FIXTURES.parent / "outro_release" / "q14_gqa"
    meta = json.loads((d / "ref.json").read_text())
    m = outro.Model(str(d), device="cpu")
    r = m.forward(meta["ids"], strategy="outro")
    assert r.sinks == meta["presets"]["outro"]["sinks"]
    base = m.forward(meta["ids"], strategy="baseline")
    assert base.sinks is None and not np.array_equal(base.logits, r.logits)


def test_model_folder_thresholds_apply_to_outro_and_prompt_sinks(tmp_path):
    # A folder's sink_thresholds.json replaces the release's thresholds unless the call sets its own.
    src = FIXTURES.parent / "outro_release" / "q14_gqa"
    meta = json.loads((src / "ref.json").read_text())
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    (tmp_path / "sink_thresholds.json").write_text('{"abs_thr": 1e9, "med_mul": 0, "note": "test"}')
    m = outro.Model(str(tmp_path), device="cpu")
    r = m.forward(meta["ids"], strategy="outro")
    assert all(s == [] for s in r.sinks)
    assert np.array_equal(r.logits, m.forward(meta["ids"]).logits)  # no sink: the plain model
    assert all(s["phi_llm"] == [] for s in m.prompt_sinks(meta["ids"]))
    assert any(s["phi_llm"] for s in m.prompt_sinks(meta["ids"], tau_abs=100.0, tau_rel=1000.0))
    r = m.forward(meta["ids"], strategy="outro", config={"abs_thr": 100})
    assert r.sinks == meta["presets"]["outro"]["sinks"]
    (tmp_path / "sink_thresholds.json").write_text('{"abs_thr": 1, "med_mul": 1, "gamma": 2}')
    with pytest.raises(ValueError, match="sink_thresholds.json: unknown key 'gamma'"):
        m.forward(meta["ids"], strategy="outro")


def test_hook_layout():
    m = model("outro-demo")
    c = m.config
    r = m.forward(TOKENS, hooks=["blocks.2.attn.hook_pattern", "blocks.2.hook_resid_pre", "blocks.2.attn.hook_z"])
    p = r.hooks["blocks.2.attn.hook_pattern"]
    n = len(TOKENS)
    assert p.shape == (c["heads"], n, n)
    assert np.allclose(p.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(p, 1) == 0)  # causal
    assert r.hooks["blocks.2.hook_resid_pre"].shape == (n, c["hidden_size"])
    assert r.hooks["blocks.2.attn.hook_z"].shape == (n, c["heads"], c["head_dim"])


def test_edit_zeroing_a_head_equals_cpp_head_ablation():
    m = model("outro-demo")
    plain = m.forward(TOKENS).logits
    cpp = m.forward(TOKENS, ablate_heads=[(3, 1)]).logits

    def zero_head(z):
        z = z.copy()
        z[:, 1, :] = 0
        return z

    py = m.forward(TOKENS, edits={"blocks.3.attn.hook_z": zero_head}).logits
    assert same_bits(py, cpp)
    assert not np.array_equal(py, plain)
    # the same with the array edited in place and None returned
    def in_place(z):
        z[:, 1, :] = 0

    assert same_bits(m.forward(TOKENS, edits={"blocks.3.attn.hook_z": in_place}).logits, cpp)


def test_identity_edit_keeps_the_model_and_hooks_see_the_edit():
    m = model("outro-demo")
    plain = m.forward(TOKENS).logits
    seen = []

    def identity(h):
        seen.append(h.shape)
        return h

    assert same_bits(m.forward(TOKENS, edits={"blocks.1.hook_resid_pre": identity}).logits, plain)
    assert seen == [(len(TOKENS), m.config["hidden_size"])]

    def double(h):
        return h * 2

    r = m.forward(TOKENS, hooks=["blocks.1.hook_resid_pre"], edits={"blocks.1.hook_resid_pre": double})
    base = m.forward(TOKENS, hooks=["blocks.1.hook_resid_pre"]).hooks["blocks.1.hook_resid_pre"]
    assert same_bits(r.hooks["blocks.1.hook_resid_pre"], base * 2)
    assert not np.array_equal(r.logits, plain)


def test_edit_on_values_and_in_generation():
    m = model("outro-demo")
    prompt = "Q: What is 2 + 3? A:"
    calls = []

    def count(v):
        calls.append(v.shape[0])

    g = m.generate(prompt=prompt, max_new_tokens=4, edits={"blocks.0.attn.hook_v": count})
    # prefill once with every prompt row, then one row per decode step
    assert calls[0] == g.prompt_tokens and all(c == 1 for c in calls[1:])
    assert len(calls) == len(g.tokens)


def test_generate_equals_cli():
    m = model("outro-demo")
    prompt = "There is a red circle. Question: What colour is the circle?"
    _, out, _ = run_cli("generate", "--model", DEMO, "--device", "cpu", "--prompt", prompt, "--max-new-tokens", 8, "--json")
    ref = json.loads(out[out.index("{"):])
    g = m.generate(prompt=prompt, max_new_tokens=8)
    assert g.tokens == ref["tokens"]
    assert g.text == ref["text"]
    assert g.prompt_tokens == ref["prompt_tokens"]


def test_generate_on_the_omni_demo_clip():
    m = outro.Model(str(OMNI_DEMO), device="cpu")
    q = "Question: What colour is the shape? Options: A. blue B. green C. purple D. red E. white F. yellow"
    g = m.generate(prompt=q, video=str(OMNI_DEMO / "demo.mp4"), use_audio_in_video=True,
                   system="You are a helpful assistant.", max_new_tokens=4, strategy="baseline")
    assert g.text.strip() == "E"
    # media rows in a forward: video and audio tokens are marked
    r = m.forward(prompt=q, video=str(OMNI_DEMO / "demo.mp4"), use_audio_in_video=True,
                  system="You are a helpful assistant.")
    assert 2 in r.modality and 3 in r.modality and len(r.modality) == len(r.tokens) == r.logits.shape[0]


def test_tokenize_and_config():
    m = model("outro-demo")
    ids = m.tokenize("a red circle")
    assert ids and all(isinstance(i, int) for i in ids)
    assert m.detokenize(ids) == "a red circle"
    chat = m.tokenize("a red circle", chat=True)
    assert m.forward(prompt="a red circle").tokens == chat
    assert len(chat) > len(ids)
    c = m.config
    assert c["architecture"] == "Qwen2ForCausalLM" and c["layers"] == 6 and c["vocab_size"] == 595
    assert c["backend"] == "cpu"
    assert len(m.hook_names()) == 2 + 10 * c["layers"]
    assert set(outro.strategies) >= {"baseline", "outro", "outro-sinkout-only", "outro-align-only"}


def test_analyses_return_dicts_equal_to_the_cli(tmp_path):
    m = model("outro-demo")
    rep = m.analyze(tokens=TOKENS, pruning=False, single_head=False, tsne=False)
    assert isinstance(rep, dict)
    run_cli("analyze", "--model", DEMO, "--device", "cpu", "--tokens", ",".join(map(str, TOKENS)), "--no-pruning",
            "--no-single-head", "--no-tsne", "--quiet", "--out", tmp_path)
    ref = json.loads((tmp_path / "report.json").read_text())
    assert rep["fig1a"] == ref["fig1a"]
    assert rep["head_focus"] == ref["head_focus"]
    assert len(rep["fig1a"]["phi_llm"]) == m.config["layers"]
    sinks = m.prompt_sinks(TOKENS)
    assert len(sinks) == m.config["layers"]
    assert all(len(s["head_scores"]) == m.config["heads"] for s in sinks)
    assert [len(s["phi_llm"]) for s in sinks] == rep["fig1a"]["phi_llm"]
    # thresholds of 0 make Φ_LLM mark every token
    low = m.prompt_sinks(TOKENS, tau_abs=0.0, tau_rel=0.0)
    assert all(s["phi_llm"] == list(range(len(TOKENS))) for s in low)
    with pytest.raises(ValueError, match="give tokens=.* or prompts="):
        m.analyze()
    # a prompts file, with the report written as the CLI writes it
    heldout = str(DEMO / "heldout.jsonl")
    rep2 = m.analyze(prompts=heldout, max_prompts=2, pruning=False, single_head=False, tsne=False,
                     out=str(tmp_path / "py"))
    assert rep2["prompts"]["file"] == heldout and rep2["prompts"]["count"] == 2
    assert (tmp_path / "py" / "report.html").stat().st_size > 0
    assert json.loads((tmp_path / "py" / "report.json").read_text())["fig1a"] == rep2["fig1a"]


def test_gil_is_released_while_the_engine_runs():
    m = model("outro-demo")
    long = (TOKENS * 100)[:1000]
    done = threading.Event()
    errors, spent = [], []

    def work():
        try:
            t = time.perf_counter()
            m.forward(long)
            spent.append(time.perf_counter() - t)
        except Exception as e:  # reported below; the loop must end either way
            errors.append(e)
        done.set()

    # The main thread keeps running Python while the engine works: the longest pause between two
    # of its iterations stays far below the call's duration. With the GIL held by the engine it
    # would be the whole call.
    t = threading.Thread(target=work)
    last = time.perf_counter()
    longest = 0.0
    t.start()
    while not done.is_set() and time.perf_counter() - last < 120:
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    t.join(10)
    assert not errors and done.is_set()
    assert spent[0] > 0.05, spent  # long enough to tell
    assert longest < 0.5 * spent[0], (longest, spent[0])


# --- bad input: Python exceptions naming the argument and the accepted values


def test_bad_path():
    with pytest.raises(ValueError, match=r"path: '/nonexistent/model' is not a folder"):
        outro.Model("/nonexistent/model")
    with pytest.raises(ValueError, match="is not a folder"):
        outro.Model(str(DEMO / "config.json"))


def test_bad_device():
    with pytest.raises(ValueError, match=r"device: expected 'cpu', 'cuda' or 'auto', found 'tpu'"):
        outro.Model(str(DEMO), device="tpu")


def test_unknown_hook():
    m = model("outro-demo")
    with pytest.raises(ValueError) as e:
        m.forward(TOKENS, hooks=["blocks.0.attn.hook_patern"])
    msg = str(e.value)
    assert msg.startswith("hooks: unknown hook point 'blocks.0.attn.hook_patern'")
    assert "accepted:" in msg and "blocks.{0..5}.attn.hook_pattern" in msg
    with pytest.raises(ValueError, match="hooks: unknown hook point 'blocks.6.hook_resid_pre'"):
        m.forward(TOKENS, hooks=["blocks.6.hook_resid_pre"])
    with pytest.raises(ValueError, match="hooks: expected a list"):
        m.forward(TOKENS, hooks="embed")


def test_unknown_strategy_and_bad_config():
    m = model("outro-demo")
    with pytest.raises(ValueError) as e:
        m.forward(TOKENS, strategy="outroo")
    msg = str(e.value)
    assert msg.startswith("strategy:") and "outroo" in msg
    for p in ["baseline", "outro", "outro-align-only", "outro-sinkout-only"]:
        assert p in msg
    with pytest.raises(ValueError, match=r"config.*lamda"):
        m.forward(TOKENS, config={"lamda": 0.5})
    with pytest.raises(ValueError, match=r"config.*end_layer = 99"):
        m.forward(TOKENS, config={"end_layer": 99})
    with pytest.raises(ValueError, match=r"config.*apply_interval"):
        m.forward(TOKENS, config={"apply_interval": 0})
    with pytest.raises(ValueError, match="config: expected a dict"):
        m.forward(TOKENS, config="gamma = 1")


def test_bad_tokens_and_edits():
    m = model("outro-demo")
    with pytest.raises(ValueError, match=r"tokens: token id 595 is outside the vocabulary \[0, 595\)"):
        m.forward([1, 595])
    with pytest.raises(ValueError, match="either tokens or prompt"):
        m.forward([1], prompt="x")
    with pytest.raises(ValueError, match=r"edits: 'blocks.0.hook_mlp_out' is not an edit point; accepted:"):
        m.forward(TOKENS, edits={"blocks.0.hook_mlp_out": lambda x: x})
    with pytest.raises(ValueError, match=r"shape \[3\], expected \[10, 256\]"):
        m.forward(TOKENS, edits={"blocks.0.hook_resid_pre": lambda h: np.zeros(3, np.float32)})
    with pytest.raises(TypeError, match="expected a numpy array"):
        m.forward(TOKENS, edits={"blocks.0.hook_resid_pre": lambda h: "nope"})
    with pytest.raises(ValueError, match=r"ablate_heads: \(6, 0\) is not a layer in \[0, 6\)"):
        m.forward(TOKENS, ablate_heads=[(6, 0)])

    class Boom(Exception):
        pass

    def boom(h):
        raise Boom("from the callback")

    with pytest.raises(Boom, match="from the callback"):
        m.forward(TOKENS, edits={"blocks.2.attn.hook_q": boom})
    # the model still works after a failed call
    assert same_bits(m.forward(TOKENS).logits, m.forward(TOKENS).logits)


def test_engine_errors_are_outro_errors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(outro.Error, match="config.json"):
        outro.Model(str(tmp_path))
    assert issubclass(outro.Error, RuntimeError)


def test_a_callback_calling_its_own_model_is_an_error_not_a_deadlock():
    m = model("outro-demo")

    def again(h):
        m.forward([1, 2])

    with pytest.raises(outro.Error, match="already running on this thread"):
        m.forward(TOKENS, edits={"blocks.0.hook_resid_pre": again})
    assert m.forward(TOKENS).logits.shape[0] == len(TOKENS)


def test_qwen3_omni_takes_media_when_the_folder_has_its_towers(tmp_path):
    # A Qwen3-Omni thinker with its towers takes an image as the command line does; the decoder
    # saved alone says why it cannot.
    import subprocess
    imgs = {}
    for colour in ("red", "blue"):
        p = tmp_path / f"{colour}.png"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"color={colour}:s=32x32",
                        "-frames:v", "1", str(p)], check=True)
        imgs[colour] = str(p)
    q3 = FIXTURES.parent / "qwen3_omni"
    cfg = json.loads((q3 / "towers_a" / "config.json").read_text())
    ids = [10, cfg["vision_start_token_id"], cfg["image_token_id"], cfg["vision_end_token_id"], 20]
    m = outro.Model(str(q3 / "towers_a"), device="cpu")
    red = np.asarray(m.forward(tokens=ids, image=imgs["red"]).logits)
    blue = np.asarray(m.forward(tokens=ids, image=imgs["blue"]).logits)
    assert red.shape[0] > len(ids)  # the placeholder became the image's rows
    assert np.isfinite(red).all()
    assert np.abs(red - blue).max() > 1e-4  # the pixels reach the logits
    with pytest.raises(ValueError, match="towers"):
        outro.Model(str(q3 / "e4k2_mha"), device="cpu").forward(tokens=[10, 20], image=imgs["red"])
