#!/usr/bin/env python3
"""Reference fixtures of Qwen3-Omni's MoE thinker decoder for tests/test_qwen3_omni.cpp, made with
Hugging Face transformers (5.x: Qwen3OmniMoeThinkerTextModel, float32, eager attention, on CPU).

Run on a machine with torch + transformers:  python3 tools/qwen3_omni_fixtures.py --out OUTDIR
Writes OUTDIR/<name>/{config.json, model.safetensors, ref.safetensors, ref.json} for several tiny
random shapes (expert counts, top-k, decoder_sparse_step, mlp_only_layers, GQA / MHA, norm_topk_prob,
head_dim apart from hidden / heads), in three tensor layouts:
  fused       model.layers.N.mlp.experts.gate_up_proj [E, 2I, D] / down_proj [E, D, I] (transformers 5)
  per_expert  model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight (the released checkpoints)
  released    the released Qwen3OmniMoeForConditionalGeneration layout: thinker.model.*, thinker.lm_head,
              with a few talker.* / code2wav.* tensors beside them (a renamed copy; the full model with
              a talker is too big to build as a tiny fixture)
ref.safetensors: text.logits [n, V] over the prompt (every row), text.resid_post.L [n, D],
text.mlp_out.L, text.router.L [n, E] (router logits, MoE layers), text.experts.L [n, k] (chosen
experts, as floats, in the router's top-k order), text.weights.L [n, k]; and a "mixed" prompt fed as
embeddings with 3-D positions (t, h, w rows, interleaved M-RoPE) and DeepStack features added to
the first layers' outputs at the visual rows: mixed.embeds [n, D], mixed.positions [3, n] (floats),
mixed.visual [n] (0/1), mixed.deepstack [layers, n_visual, D], mixed.logits [n, V],
mixed.resid_post.L.
It also tries to build a whole tiny Qwen3OmniMoeThinkerForConditionalGeneration and save it with
save_pretrained (OUTDIR/thinker_saved: what transformers writes, with thinker logits), and writes
OUTDIR/outro_q3/: a Qwen3-MoE thinker with planted sinks and OutRo's reference outputs computed with
the hooks of tools/outro_fixtures.py (written from ../shared/docs/method.md).
And OUTDIR/towers_a, towers_b: whole tiny thinkers (Qwen3OmniMoeThinkerForConditionalGeneration) with
both towers, for tests/test_qwen3_omni_media.cpp: pixel values of an image (grid 1x4x6) and a video
(2x4x4), log-mel clips (130 and 250 frames, and a 60-frame one alone); the vision tower's merged
output and DeepStack features (image.embeds, image.deepstack.J, video.*), the audio tower's
(audio.embeds: both clips in one call, short.embeds); two prompts, "mixed" (image, a video with its
own audio, an audio clip; use_audio_in_video) and "plain" (video, audio, image), expanded by the
processor's own replace_multimodal_special_tokens (ref.json: template_ids, ids), their
get_rope_index positions and rope delta, the spliced embeddings, the DeepStack rows and features the
text model receives, and the logits. `--only towers` makes just these.
Every part is tried on its own; OUTDIR/report.json says what was made and what failed.
"""
import argparse
import copy
import json
import os
import sys
import traceback

import torch
from safetensors.torch import save_file

torch.set_grad_enabled(False)
import transformers  # noqa: E402
from transformers.models.qwen3_omni_moe import configuration_qwen3_omni_moe as C  # noqa: E402
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as M  # noqa: E402

V = 128
REPORT = {"transformers": transformers.__version__, "torch": torch.__version__, "made": [], "failed": {}}

# name, layers, heads, kv heads, head_dim, hidden, experts, top-k, sparse step, mlp_only, norm_topk, layout
SHAPES = [
    dict(name="e4k2_mha", L=2, H=4, KV=4, hd=8, D=32, E=4, k=2, step=1, mlp_only=[], norm=True, I=48, mI=16,
         layout="fused", seed=1),
    dict(name="e8k3_step2_gqa", L=4, H=4, KV=2, hd=8, D=32, E=8, k=3, step=2, mlp_only=[3], norm=False, I=40, mI=12,
         layout="per_expert", seed=2),
    dict(name="e6k1_hd16_gqa", L=3, H=4, KV=1, hd=16, D=32, E=6, k=1, step=1, mlp_only=[1], norm=True, I=24, mI=8,
         layout="fused", seed=3),
    dict(name="e5k5_norm_off", L=2, H=2, KV=2, hd=8, D=16, E=5, k=5, step=1, mlp_only=[], norm=False, I=32, mI=8,
         layout="per_expert", seed=4),
    dict(name="released_e4k2", L=3, H=4, KV=2, hd=8, D=32, E=4, k=2, step=1, mlp_only=[0], norm=True, I=40, mI=16,
         layout="released", seed=5),
]


def mrope_section(hd):
    half = hd // 2
    h = w = max(1, (half * 5) // 16)  # the released 24/20/20 of 64, scaled
    return [half - h - w, h, w]


def tiny_vision(D):
    return dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, in_channels=3, patch_size=4,
                spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=D, num_position_embeddings=16,
                deepstack_visual_indexes=[0])


def tiny_audio(D):
    return dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16,
                output_dim=D, max_source_positions=64, n_window=4, n_window_infer=8, downsample_hidden_size=8,
                conv_chunksize=16)


def text_config_dict(s):
    return dict(vocab_size=V, hidden_size=s["D"], intermediate_size=s["I"], num_hidden_layers=s["L"],
                num_attention_heads=s["H"], num_key_value_heads=s["KV"], head_dim=s["hd"],
                max_position_embeddings=256, rms_norm_eps=1e-6, attention_bias=False, hidden_act="silu",
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope_section(s["hd"]),
                                 "interleaved": True, "mrope_interleaved": True},
                decoder_sparse_step=s["step"], moe_intermediate_size=s["mI"], num_experts_per_tok=s["k"],
                num_experts=s["E"], norm_topk_prob=s["norm"], mlp_only_layers=list(s["mlp_only"]),
                tie_word_embeddings=False)


def thinker_config(s):
    """The thinker's config with tiny encoders; falls back (and says so in the report) where this
    transformers refuses a field: head_dim (not a declared field of the text config), the tiny encoders."""
    tc = text_config_dict(s)
    tries = [(tc, True), ({k: v for k, v in tc.items() if k != "head_dim"}, True), (tc, False),
             ({k: v for k, v in tc.items() if k != "head_dim"}, False)]
    errs = []
    for t, enc in tries:
        try:
            kw = dict(vision_config=tiny_vision(s["D"]), audio_config=tiny_audio(s["D"])) if enc else {}
            cfg = C.Qwen3OmniMoeThinkerConfig(text_config=dict(t), tie_word_embeddings=False, **kw)
            if errs:
                REPORT.setdefault("config_fallbacks", {})[s["name"]] = errs
            return cfg
        except Exception as e:  # noqa: BLE001
            errs.append(f"head_dim={'head_dim' in t} encoders={enc}: {e!r}"[:600])
    raise RuntimeError("; ".join(errs))


def make_text_model(tcfg):
    kw = dict(attn_implementation="eager")
    try:
        m = M.Qwen3OmniMoeThinkerTextModel._from_config(tcfg, experts_implementation="eager", **kw)
    except Exception:
        REPORT["experts_implementation_kwarg"] = "refused"
        m = M.Qwen3OmniMoeThinkerTextModel._from_config(tcfg, **kw)
    return m.float().eval()


def randomise(model, seed):
    torch.manual_seed(seed)
    for n, p in model.named_parameters():
        if "norm" in n:
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
        elif n.endswith("bias"):
            p.copy_(0.1 * torch.randn_like(p))
        else:
            fan_in = p.shape[-1]
            p.copy_(torch.randn_like(p) / fan_in ** 0.5 * 0.7)
    # Router logits spread wide enough that the top-k choice is far from ties.
    for layer in model.layers:
        if hasattr(layer.mlp, "gate") and hasattr(layer.mlp.gate, "weight") and layer.mlp.gate.weight.dim() == 2 \
                and hasattr(layer.mlp, "experts"):
            layer.mlp.gate.weight.mul_(3.0)


def is_moe(layer):
    return hasattr(layer.mlp, "experts")


class Capture:
    def __init__(self, model):
        self.d = {}
        self.handles = []
        for l, layer in enumerate(model.layers):
            self.handles.append(layer.register_forward_hook(self._put(f"resid_post.{l}")))
            self.handles.append(layer.mlp.register_forward_hook(self._put(f"mlp_out.{l}")))
            if is_moe(layer):
                self.handles.append(layer.mlp.gate.register_forward_hook(self._router(l)))

    def _put(self, key):
        def fn(mod, args, out):
            t = out[0] if isinstance(out, tuple) else out
            self.d[key] = t.reshape(-1, t.shape[-1]).detach().clone().float()
        return fn

    def _router(self, l):
        def fn(mod, args, out):
            logits, scores, idx = out
            self.d[f"router.{l}"] = logits.detach().clone().float()
            self.d[f"weights.{l}"] = scores.detach().clone().float()
            self.d[f"experts.{l}"] = idx.detach().clone().float()
        return fn

    def remove(self):
        for h in self.handles:
            h.remove()


def text_ids(n=13, seed=0):
    g = torch.Generator().manual_seed(100 + seed)
    return [int(x) for x in torch.randint(3, V, (n,), generator=g)]


def save_weights(sd, layout, path, E):
    out = {}
    for k, v in sd.items():
        v = v.detach().contiguous().float()
        if layout in ("per_expert", "released") and (k.endswith("mlp.experts.gate_up_proj") or
                                                     k.endswith("mlp.experts.down_proj")):
            base = k.rsplit(".", 1)[0]
            if k.endswith("gate_up_proj"):
                I = v.shape[1] // 2
                for e in range(E):
                    out[f"{base}.{e}.gate_proj.weight"] = v[e, :I].clone()
                    out[f"{base}.{e}.up_proj.weight"] = v[e, I:].clone()
            else:
                for e in range(E):
                    out[f"{base}.{e}.down_proj.weight"] = v[e].clone()
            continue
        out[k] = v
    if layout == "released":
        out = {"thinker." + k: v for k, v in out.items()}
        g = torch.Generator().manual_seed(9)
        # The talker and code2wav as the released checkpoint names them: never loaded by outro.
        out["talker.model.codec_embedding.weight"] = torch.randn(16, 8, generator=g)
        out["talker.model.layers.0.self_attn.q_proj.weight"] = torch.randn(8, 8, generator=g)
        out["talker.codec_head.weight"] = torch.randn(16, 8, generator=g)
        out["code2wav.pre_transformer.layers.0.self_attn.q_proj.weight"] = torch.randn(8, 8, generator=g)
        out["code2wav.upsample.0.0.conv.weight"] = torch.randn(4, 4, 2, generator=g)
    save_file(out, path, metadata={"format": "pt"})
    return sorted(out)


def build_text_fixture(s, outdir):
    cfg = thinker_config(s)
    tcfg = cfg.text_config
    model = make_text_model(tcfg)
    randomise(model, s["seed"])
    torch.manual_seed(1000 + s["seed"])
    lm_head = torch.randn(V, s["D"]) / s["D"] ** 0.5
    # The module's real head size (the config's head_dim, if transformers honours it).
    hd = model.layers[0].self_attn.head_dim
    assert hd == s["hd"], f"head_dim {hd} != {s['hd']}"
    moe_layers = [l for l, layer in enumerate(model.layers) if is_moe(layer)]

    def logits_of(h):
        return h[0] @ lm_head.T

    ref, meta = {}, {"shape": s, "moe_layers": moe_layers}
    # Text prompt.
    ids = text_ids(13, s["seed"])
    cap = Capture(model)
    out = model(input_ids=torch.tensor([ids]), use_cache=False)
    ref["text.logits"] = logits_of(out.last_hidden_state)
    for k, v in cap.d.items():
        ref["text." + k] = v
    cap.remove()
    meta["text_ids"] = ids
    # Decode over the cache: prefill 9, then 4 single steps (the same rows as the full prompt's).
    cache = None
    rows = []
    o = model(input_ids=torch.tensor([ids[:9]]), use_cache=True)
    cache = o.past_key_values
    rows.append(logits_of(o.last_hidden_state))
    for t in ids[9:]:
        o = model(input_ids=torch.tensor([[t]]), past_key_values=cache, use_cache=True)
        cache = o.past_key_values
        rows.append(logits_of(o.last_hidden_state))
    ref["text.cached_logits"] = torch.cat(rows, 0)

    # Mixed prompt: text rows, a 2x3 "image" grid (t fixed, h, w vary), text rows.
    n_pre, gh, gw, n_post = 4, 2, 3, 4
    n_vis = gh * gw
    n = n_pre + n_vis + n_post
    mids = text_ids(n, s["seed"] + 50)
    emb = model.embed_tokens.weight[torch.tensor(mids)].clone()
    g = torch.Generator().manual_seed(200 + s["seed"])
    vis_rows = list(range(n_pre, n_pre + n_vis))
    emb[vis_rows] = torch.randn(n_vis, s["D"], generator=g)
    pos = torch.zeros(3, n, dtype=torch.long)
    for i in range(n_pre):
        pos[:, i] = i
    for j in range(n_vis):
        pos[0, n_pre + j] = n_pre
        pos[1, n_pre + j] = n_pre + j // gw
        pos[2, n_pre + j] = n_pre + j % gw
    start = int(pos.max()) + 1
    for i in range(n_post):
        pos[:, n_pre + n_vis + i] = start + i
    n_ds = min(2, s["L"])
    ds = [torch.randn(n_vis, s["D"], generator=g) for _ in range(n_ds)]
    mask = torch.zeros(1, n, dtype=torch.bool)
    mask[0, vis_rows] = True
    cap = Capture(model)
    out = model(inputs_embeds=emb[None], position_ids=pos[:, None, :], use_cache=False, visual_pos_masks=mask,
                deepstack_visual_embeds=ds)
    ref["mixed.logits"] = logits_of(out.last_hidden_state)
    for k, v in cap.d.items():
        if k.startswith("resid_post") or k.startswith("router"):
            ref["mixed." + k] = v
    cap.remove()
    ref["mixed.embeds"] = emb
    ref["mixed.positions"] = pos.float()
    ref["mixed.visual"] = mask[0].float()
    ref["mixed.deepstack"] = torch.stack(ds, 0)
    meta["mixed_ids"] = mids
    meta["note"] = ("mixed.resid_post.L is the decoder layer's output before DeepStack's addition "
                    "(transformers adds the features after the layer returns)")

    d = os.path.join(outdir, s["name"])
    os.makedirs(d, exist_ok=True)
    sd = {"model." + k: v for k, v in model.state_dict().items()}
    sd["lm_head.weight"] = lm_head
    meta["state_dict_keys_in_memory"] = sorted(k for k in sd if ".layers.0." in k or ".layers." not in k)
    meta["saved_keys_sample"] = [k for k in save_weights(sd, s["layout"], os.path.join(d, "model.safetensors"), s["E"])
                                 if ".layers.0." in k or ".layers." not in k]
    cj = cfg.to_dict()
    if s["layout"] == "released":
        try:
            top = C.Qwen3OmniMoeConfig().to_dict()
        except Exception as e:  # noqa: BLE001
            REPORT["released_top_config"] = repr(e)[:600]
            top = {"talker_config": {}, "code2wav_config": {}, "enable_audio_output": True}
        top = {k: v for k, v in top.items() if k not in ("thinker_config",)}
        top["thinker_config"] = cj
        top["architectures"] = ["Qwen3OmniMoeForConditionalGeneration"]
        top["model_type"] = "qwen3_omni_moe"
        cj = top
    else:
        cj["architectures"] = ["Qwen3OmniMoeThinkerForConditionalGeneration"]
        cj["model_type"] = "qwen3_omni_moe_thinker"
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cj, f, indent=1, default=str)
    save_file({k: v.contiguous().float() for k, v in ref.items()}, os.path.join(d, "ref.safetensors"))
    with open(os.path.join(d, "ref.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return model, lm_head, cfg


def saved_thinker(outdir, s):
    """A whole tiny thinker saved by transformers itself: which names and layout it writes."""
    cfg = thinker_config(s)
    try:
        m = M.Qwen3OmniMoeThinkerForConditionalGeneration._from_config(cfg, attn_implementation="eager")
    except Exception:
        m = M.Qwen3OmniMoeThinkerForConditionalGeneration(cfg)
    m = m.float().eval()
    randomise(m.model, s["seed"])
    torch.manual_seed(77)
    m.lm_head.weight.copy_(torch.randn_like(m.lm_head.weight) / s["D"] ** 0.5)
    d = os.path.join(outdir, "thinker_saved")
    m.save_pretrained(d, safe_serialization=True)
    ids = text_ids(11, 9)
    try:
        out = m(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                use_cache=False)
        save_file({"text.logits": out.logits[0].contiguous().float()}, os.path.join(d, "ref.safetensors"))
    except Exception:  # noqa: BLE001
        REPORT["thinker_saved_forward"] = traceback.format_exc()[-1500:]
    from safetensors import safe_open
    keys = []
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".safetensors") and fn != "ref.safetensors":
            with safe_open(os.path.join(d, fn), "pt") as f:
                keys += [(k, list(f.get_slice(k).get_shape())) for k in f.keys()]
    with open(os.path.join(d, "ref.json"), "w") as f:
        json.dump({"text_ids": ids, "shape": s, "saved_keys": keys}, f, indent=1)


# ------------------------------------------------------------------ OutRo on a Qwen3-MoE thinker
def outro_fixture(outdir):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import outro_fixtures as of
    from transformers import AttentionInterface
    AttentionInterface.register("outro_ref", of.attention)
    L, H, KV, hd, D = 10, 4, 2, 8, 32
    s = dict(name="outro_q3", L=L, H=H, KV=KV, hd=hd, D=D, E=4, k=2, step=1, mlp_only=[1, 2], norm=True, I=64,
             mI=16, layout="fused", seed=11)
    cfg = thinker_config(s)
    model = make_text_model(cfg.text_config)
    torch.manual_seed(s["seed"])
    randomise(model, s["seed"])
    lm_head = torch.randn(V, D) / D ** 0.5
    e = model.embed_tokens.weight
    e.copy_(torch.randn_like(e))
    e[:, [of.CH_A, of.CH_B, of.CH_D]] = 0.0
    e[of.A, of.CH_A] = of.MASSIVE
    e[of.B] = 0.0
    e[of.B, of.CH_B] = of.MASSIVE
    e[of.D] = 0.0
    e[of.D, of.CH_D] = 300.0
    for l, ch in ((1, of.CH_B), (2, of.CH_D)):
        mlp = model.layers[l].mlp
        mlp.gate_proj.weight[0] = 0.0
        mlp.up_proj.weight[0] = 0.0
        mlp.down_proj.weight[:, 0] = 0.0
        mlp.gate_proj.weight[0, ch] = 4.0
        mlp.up_proj.weight[0, ch] = 4.0
    ids = of.prompt_ids(V)
    for l, tok, ch, target in ((1, of.B, of.CH_B, 200.0), (2, of.D, of.CH_D, of.MASSIVE)):
        acts, hin = {}, {}
        mlp = model.layers[l].mlp
        h1 = mlp.down_proj.register_forward_pre_hook(lambda mod, a: acts.__setitem__("a", a[0][0, :, 0].clone()))
        h2 = model.layers[l + 1].register_forward_pre_hook(
            lambda mod, a, kw: hin.__setitem__("h", kw.get("hidden_states", a[0] if a else None)[0].clone()),
            with_kwargs=True)
        model(input_ids=torch.tensor([ids]), use_cache=False)
        h1.remove(), h2.remove()
        p_ = ids.index(tok)
        mlp.down_proj.weight[ch, 0] = (target - hin["h"][p_, ch]) / acts["a"][p_]
    d = os.path.join(outdir, "outro_q3")
    os.makedirs(d, exist_ok=True)
    sd = {"model." + k: v for k, v in model.state_dict().items()}
    sd["lm_head.weight"] = lm_head
    save_weights(sd, "fused", os.path.join(d, "model.safetensors"), s["E"])
    cj = cfg.to_dict()
    cj["architectures"] = ["Qwen3OmniMoeThinkerForConditionalGeneration"]
    cj["model_type"] = "qwen3_omni_moe_thinker"
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cj, f, indent=1, default=str)

    model.set_attn_implementation("outro_ref")
    for l, layer in enumerate(model.layers):
        layer.register_forward_pre_hook(of.layer_pre(l), with_kwargs=True)
        layer.self_attn.v_proj.register_forward_hook(of.v_hook(l, KV, hd))
        layer.self_attn.o_proj.register_forward_pre_hook(of.o_pre(l, H, KV, hd))

    def run(p, ids_, steps):
        of.ST = of.State(L, p)
        of.ST.on = True
        out = model(input_ids=torch.tensor([ids_]), use_cache=True)
        lg = [out.last_hidden_state[0] @ lm_head.T]
        cache = out.past_key_values
        of.ST.prefill = False
        for t in steps:
            o = model(input_ids=torch.tensor([[t]]), past_key_values=cache, use_cache=True)
            cache = o.past_key_values
            lg.append(o.last_hidden_state[0] @ lm_head.T)
        st = of.ST
        of.ST = None
        return lg, st

    quiet = of.nosink_ids(V)
    steps = [17, 42, 99]
    ref, meta = {}, {"layers": L, "ids": ids, "nosink_ids": quiet, "steps": steps, "params": of.params(L),
                     "presets": {}}
    for preset, over in of.PRESETS.items():
        p = of.params(L, **over)
        lg, st = run(p, ids, steps)
        ref[f"{preset}.prompt"] = lg[0]
        for i, x in enumerate(lg[1:]):
            ref[f"{preset}.step{i}"] = x
        ref[f"{preset}.nosink"] = run(p, quiet, [])[0][0]
        meta["presets"][preset] = {"sinks": st.sinks, "enhanced": st.enh, "tau": st.tau}
    save_file({k: v.contiguous().float() for k, v in ref.items()}, os.path.join(d, "ref.safetensors"))
    sk = meta["presets"]["outro"]["sinks"]
    meta["checks"] = {
        "A_every_layer": all(0 in sk[l] for l in range(L - 2)),
        "B_layers_0_1": 5 in sk[0] and 5 in sk[1] and all(5 not in sk[l] for l in range(2, L - 2)),
        "D_from_3": all(9 not in sk[l] for l in range(3)) and all(9 in sk[l] and 16 in sk[l] for l in range(3, L - 2)),
        "no_other": all(set(sk[l]) <= {0, 5, 9, 16} for l in range(L - 2)),
        "nosink_diff": float((ref["outro.nosink"] - ref["baseline.nosink"]).abs().max()),
        "outro_vs_baseline": float((ref["outro.prompt"] - ref["baseline.prompt"]).abs().max()),
    }
    with open(os.path.join(d, "ref.json"), "w") as f:
        json.dump(meta, f, indent=1)
    REPORT["outro_checks"] = meta["checks"]



# ------------------------------------------------------------------ the towers (vision, audio) and media prompts
# Token ids of the media markers in the tower fixtures' vocabulary (the released ids are beyond a tiny vocab).
VT = 160
TOK = dict(audio=150, image=151, video=152, vision_start=153, vision_end=154, audio_start=155, audio_end=156)
SPECIAL = {"<|audio_pad|>": TOK["audio"], "<|image_pad|>": TOK["image"], "<|video_pad|>": TOK["video"],
           "<|vision_start|>": TOK["vision_start"], "<|vision_end|>": TOK["vision_end"],
           "<|audio_start|>": TOK["audio_start"], "<|audio_end|>": TOK["audio_end"]}
KEEP_DEBUG = False
PPS = 13  # position_id_per_seconds: the processor's default; the config gets the same

TOWER_SHAPES = [
    dict(name="towers_a", L=3, H=4, KV=2, hd=8, D=32, E=4, k=2, step=1, mlp_only=[], norm=True, I=40, mI=16,
         layout="fused", seed=21,
         vis=dict(depth=3, hidden_size=16, intermediate_size=32, num_heads=2, in_channels=3, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                  deepstack_visual_indexes=[0, 2]),
         aud=dict(num_mel_bins=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16,
                  max_source_positions=64, n_window=50, n_window_infer=200, downsample_hidden_size=8,
                  conv_chunksize=500)),
    dict(name="towers_b", L=2, H=2, KV=1, hd=16, D=24, E=3, k=2, step=1, mlp_only=[1], norm=False, I=32, mI=8,
         layout="per_expert", seed=22,
         vis=dict(depth=2, hidden_size=24, intermediate_size=40, num_heads=3, in_channels=3, patch_size=2,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=25,
                  deepstack_visual_indexes=[1]),
         aud=dict(num_mel_bins=20, encoder_layers=1, encoder_attention_heads=4, encoder_ffn_dim=24, d_model=24,
                  max_source_positions=32, n_window=50, n_window_infer=100, downsample_hidden_size=6,
                  conv_chunksize=2)),
]


def towers_config(s):
    tc = text_config_dict(s)
    tc["vocab_size"] = VT
    vis = dict(s["vis"], out_hidden_size=s["D"])
    aud = dict(s["aud"], output_dim=s["D"])
    kw = dict(vision_config=vis, audio_config=aud, tie_word_embeddings=False, image_token_id=TOK["image"],
              video_token_id=TOK["video"], audio_token_id=TOK["audio"], audio_start_token_id=TOK["audio_start"],
              position_id_per_seconds=PPS)
    try:
        cfg = C.Qwen3OmniMoeThinkerConfig(text_config=dict(tc), **kw)
    except Exception as e:  # noqa: BLE001
        REPORT.setdefault("config_fallbacks", {})[s["name"]] = repr(e)[:600]
        tc.pop("head_dim", None)
        cfg = C.Qwen3OmniMoeThinkerConfig(text_config=dict(tc), **kw)
    # get_rope_index reads these; 5.17's thinker config does not declare them (the released one has them).
    for k, v in (("vision_start_token_id", TOK["vision_start"]), ("vision_end_token_id", TOK["vision_end"]),
                 ("audio_end_token_id", TOK["audio_end"]), ("image_token_id", TOK["image"]),
                 ("video_token_id", TOK["video"]), ("audio_token_id", TOK["audio"]),
                 ("audio_start_token_id", TOK["audio_start"]), ("position_id_per_seconds", PPS)):
        setattr(cfg, k, v)
    return cfg


def randomise_all(model, seed):
    torch.manual_seed(seed)
    for n, p in model.named_parameters():
        if n.endswith("bias"):
            p.copy_(0.1 * torch.randn_like(p))
        elif "norm" in n or n.endswith("ln_q.weight") or n.endswith("ln_post.weight"):
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
        else:
            fan_in = p[0].numel() if p.dim() >= 2 else p.shape[-1]
            if "experts" in n and p.dim() == 3:
                fan_in = p.shape[-1]
            p.copy_(torch.randn_like(p) / fan_in ** 0.5 * 0.7)
    for layer in model.model.layers:
        if hasattr(layer.mlp, "experts") and hasattr(layer.mlp, "gate"):
            layer.mlp.gate.weight.mul_(3.0)


def tokenize(text):
    import re
    pat = "|".join(re.escape(t) for t in SPECIAL)
    ids, pos = [], 0
    for m in re.finditer(pat, text):
        ids += [3 + (ord(ch) % 97) for ch in text[pos:m.start()]]
        ids.append(SPECIAL[m.group()])
        pos = m.end()
    ids += [3 + (ord(ch) % 97) for ch in text[pos:]]
    return ids


def expand(text, audio_lengths, image_grids, video_grids, spg, use_aiv, merge):
    """The processor's own placeholder expansion (Qwen3OmniMoeProcessor.replace_multimodal_special_tokens)
    run on a stand-in for the processor that has only the attributes it reads."""
    from types import SimpleNamespace
    import numpy as np
    from transformers.models.qwen3_omni_moe import processing_qwen3_omni_moe as P
    fake = SimpleNamespace(audio_token="<|audio_pad|>", image_token="<|image_pad|>", video_token="<|video_pad|>",
                           vision_bos_token="<|vision_start|>", vision_eos_token="<|vision_end|>",
                           audio_bos_token="<|audio_start|>", audio_eos_token="<|audio_end|>",
                           image_processor=SimpleNamespace(merge_size=merge),
                           video_processor=SimpleNamespace(merge_size=merge))
    out = P.Qwen3OmniMoeProcessor.replace_multimodal_special_tokens(
        fake, [text], iter(audio_lengths), iter([np.array(g, dtype=np.int64) for g in image_grids]),
        iter([np.array(g, dtype=np.int64) for g in video_grids]), video_second_per_grid=iter(spg), use_audio_in_video=use_aiv,
        position_id_per_seconds=PPS, seconds_per_chunk=2.0)
    return out[0]


def feat_lengths(frames, nw):
    try:
        return M._get_feat_extract_output_lengths(torch.tensor(frames), nw)
    except TypeError:
        REPORT.setdefault("towers_notes", []).append("_get_feat_extract_output_lengths takes no n_window")
        return M._get_feat_extract_output_lengths(torch.tensor(frames))


def vision_out(o):
    """(merged embeddings, [deepstack per index], last hidden or None) from whatever get_*_features returns."""
    if hasattr(o, "pooler_output"):
        pooled = o.pooler_output
        pooled = torch.cat(list(pooled), 0) if isinstance(pooled, (list, tuple)) else pooled
        ds = [torch.cat(list(f), 0) if isinstance(f, (list, tuple)) else f for f in o.deepstack_features]
        return pooled, ds, getattr(o, "last_hidden_state", None)
    emb, ds = o[0], o[1]
    emb = torch.cat(list(emb), 0) if isinstance(emb, (list, tuple)) else emb
    return emb, [torch.cat(list(f), 0) if isinstance(f, (list, tuple)) else f for f in ds], None


def audio_out(o):
    return o.last_hidden_state if hasattr(o, "last_hidden_state") else o


def towers_fixture(s, outdir):
    cfg = towers_config(s)
    m = None
    for kw in (dict(attn_implementation="eager", experts_implementation="eager"), dict(attn_implementation="eager"),
               None):
        try:
            m = (M.Qwen3OmniMoeThinkerForConditionalGeneration._from_config(cfg, **kw) if kw is not None
                 else M.Qwen3OmniMoeThinkerForConditionalGeneration(cfg))
            break
        except Exception as e:  # noqa: BLE001
            REPORT.setdefault("towers_notes", []).append(f"_from_config({kw}) refused: {e!r}"[:400])
    m = m.float().eval()
    randomise_all(m, s["seed"])
    d = os.path.join(outdir, s["name"])
    os.makedirs(d, exist_ok=True)
    save_weights(dict(m.state_dict()), s["layout"], os.path.join(d, "model.safetensors"), s["E"])
    cj = cfg.to_dict()
    for k in ("vision_start_token_id", "vision_end_token_id", "audio_end_token_id", "position_id_per_seconds"):
        cj[k] = getattr(cfg, k)
    cj["architectures"] = ["Qwen3OmniMoeThinkerForConditionalGeneration"]
    cj["model_type"] = "qwen3_omni_moe_thinker"
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cj, f, indent=1, default=str)
    ref, meta = {}, {}
    try:
        towers_refs(m, s, ref, meta)
    finally:
        # The residual stream and the tower's last hidden state are for debugging only: left out of the
        # committed files (--keep-debug keeps them).
        kept = {k: v for k, v in ref.items() if KEEP_DEBUG or ("resid_post" not in k and k != "image.hidden")}
        save_file({k: v.detach().contiguous().float() for k, v in kept.items()}, os.path.join(d, "ref.safetensors"))
        with open(os.path.join(d, "ref.json"), "w") as f:
            json.dump(meta, f, indent=1, default=str)
        REPORT.setdefault("towers_sizes", {})[s["name"]] = {
            k: list(v.shape) for k, v in ref.items() if "resid_post" not in k}


def vision_refs(m, px_img, px_vid, igt, vgt, ref):
    emb, ds, hid = vision_out(m.get_image_features(px_img, igt, return_dict=True))
    ref["image.embeds"] = emb
    if hid is not None:
        ref["image.hidden"] = hid
    for j, f in enumerate(ds):
        ref[f"image.deepstack.{j}"] = f
    emb, ds, _ = vision_out(m.get_video_features(px_vid, vgt, return_dict=True))
    ref["video.embeds"] = emb
    for j, f in enumerate(ds):
        ref[f"video.deepstack.{j}"] = f


def towers_refs(m, s, ref, meta):
    merge = s["vis"]["spatial_merge_size"]
    P_, T_ = s["vis"]["patch_size"], s["vis"]["temporal_patch_size"]
    cols = 3 * T_ * P_ * P_
    n_mels = s["aud"]["num_mel_bins"]
    nw = s["aud"]["n_window"]
    g = torch.Generator().manual_seed(300 + s["seed"])
    image_grid = [1, 4, 6]
    video_grid = [2, 4, 4]
    px_img = torch.randn(image_grid[0] * image_grid[1] * image_grid[2], cols, generator=g)
    px_vid = torch.randn(video_grid[0] * video_grid[1] * video_grid[2], cols, generator=g)
    frames = [130, 250]  # the video's own audio, then a separate clip
    mels = [torch.randn(n_mels, f, generator=g) * 0.8 for f in frames]
    short = torch.randn(n_mels, 60, generator=g) * 0.8  # one clip under a chunk: its own chunk length
    meta.update({"shape": {k: v for k, v in s.items()}, "image_grid": image_grid, "video_grid": video_grid,
                 "audio_frames": frames, "short_frames": 60, "video_second_per_grid": 1.0, "tokens": TOK,
                 "position_id_per_seconds": PPS})
    ref["image.pixels"] = px_img
    ref["video.pixels"] = px_vid
    for i, x in enumerate(mels):
        ref[f"audio.{i}.mel"] = x
    ref["short.mel"] = short
    igt = torch.tensor([image_grid])
    vgt = torch.tensor([video_grid])
    # Vision tower.
    try:
        vision_refs(m, px_img, px_vid, igt, vgt, ref)
    except Exception:  # noqa: BLE001
        REPORT["failed"][f"{s['name']}.vision"] = traceback.format_exc()[-3000:]
    # Audio tower: both clips in one call (as the thinker's forward runs them), and the short clip alone.
    T = max(frames)
    feats = torch.zeros(len(frames), n_mels, T)
    fmask = torch.zeros(len(frames), T, dtype=torch.long)
    for i, x in enumerate(mels):
        feats[i, :, :x.shape[1]] = x
        fmask[i, :x.shape[1]] = 1
    lens = feat_lengths(frames, nw)
    meta["audio_tokens"] = [int(x) for x in lens]
    meta["short_tokens"] = int(feat_lengths([60], nw)[0])
    try:
        ao = m.get_audio_features(feats, fmask, return_dict=True)
        ref["audio.embeds"] = audio_out(ao)
        so = m.get_audio_features(short[None], torch.ones(1, 60, dtype=torch.long), return_dict=True)
        ref["short.embeds"] = audio_out(so)
    except Exception:  # noqa: BLE001
        REPORT["failed"][f"{s['name']}.audio"] = traceback.format_exc()[-3000:]

    # Prompts: the chat text with one placeholder per item, expanded by the processor's own code.
    VB, VE, AB, AE = "<|vision_start|>", "<|vision_end|>", "<|audio_start|>", "<|audio_end|>"
    prompts = {
        # image, video with its own audio, separate audio (use_audio_in_video)
        "mixed": ("<|im_start|>user\n" + VB + "<|image_pad|>" + VE + "look " + VB + "<|video_pad|>" + VE +
                  " and " + AB + "<|audio_pad|>" + AE + "what?<|im_end|>\n<|im_start|>assistant\n", True),
        # the video alone, the audio, then the image (no audio in video)
        "plain": ("sys" + VB + "<|video_pad|>" + VE + AB + "<|audio_pad|>" + AE + "x" + VB + "<|image_pad|>" + VE +
                  "end", False),
    }
    for name, (text, aiv) in prompts.items():
        try:
            alens = [int(x) for x in lens] if aiv else [int(lens[1])]
            expanded = expand(text, alens, [image_grid], [video_grid], [1.0], aiv, merge)
            template_ids, ids = tokenize(text), tokenize(expanded)
            meta[name] = {"template_ids": template_ids, "ids": ids, "use_audio_in_video": aiv, "text": text}
            ii = torch.tensor([ids])
            am = torch.ones_like(ii)
            if aiv:
                f_, fm_ = feats, fmask
            else:
                f_ = mels[1][None]
                fm_ = torch.ones(1, frames[1], dtype=torch.long)
            pos, delta = m.get_rope_index(ii, igt, vgt, am, aiv, fm_.sum(-1), torch.tensor([1.0]))
            ref[f"{name}.positions"] = pos[:, 0, :].float()
            meta[name]["rope_delta"] = float(delta.reshape(-1)[0])
            got = {}

            def pre(mod, args, kw):
                got["embeds"] = kw["inputs_embeds"][0].detach().clone()
                if kw.get("deepstack_visual_embeds") is not None:
                    got["deepstack"] = torch.stack([d.detach().clone() for d in kw["deepstack_visual_embeds"]], 0)
                    got["visual"] = kw["visual_pos_masks"][0].float().clone()
            h = m.model.register_forward_pre_hook(pre, with_kwargs=True)
            res = {}
            hs = [layer.register_forward_hook(
                (lambda l: lambda mod, a, o: res.__setitem__(l, (o[0] if isinstance(o, tuple) else o)[0].clone()))(l))
                for l, layer in enumerate(m.model.layers)]
            out = m(input_ids=ii, attention_mask=am, input_features=f_, feature_attention_mask=fm_,
                    pixel_values=px_img, image_grid_thw=igt, pixel_values_videos=px_vid, video_grid_thw=vgt,
                    use_audio_in_video=aiv, video_second_per_grid=torch.tensor([1.0]), use_cache=False)
            h.remove()
            for x in hs:
                x.remove()
            ref[f"{name}.logits"] = out.logits[0]
            ref[f"{name}.embeds"] = got["embeds"]
            if "deepstack" in got:
                ref[f"{name}.deepstack"] = got["deepstack"]
                ref[f"{name}.visual"] = got["visual"]
            for l, v in res.items():
                ref[f"{name}.resid_post.{l}"] = v
        except Exception:  # noqa: BLE001
            REPORT["failed"][f"{s['name']}.{name}"] = traceback.format_exc()[-3000:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/qwen3_omni")
    ap.add_argument("--only", default="", help="towers: only the tower fixtures (towers_a, towers_b)")
    ap.add_argument("--keep-debug", action="store_true", help="towers: keep resid_post.L and image.hidden")
    a = ap.parse_args()
    global KEEP_DEBUG
    KEEP_DEBUG = a.keep_debug
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(4)
    for s in TOWER_SHAPES:
        try:
            towers_fixture(s, a.out)
            REPORT["made"].append(s["name"])
        except Exception:
            REPORT["failed"][s["name"]] = traceback.format_exc()
    if a.only == "towers":
        with open(os.path.join(a.out, "report.json"), "w") as f:
            json.dump(REPORT, f, indent=1)
        print(json.dumps(REPORT, indent=1, default=str)[-6000:])
        return
    for s in SHAPES:
        try:
            build_text_fixture(s, a.out)
            REPORT["made"].append(s["name"])
        except Exception:
            REPORT["failed"][s["name"]] = traceback.format_exc()
    for name, fn in (("thinker_saved", lambda: saved_thinker(a.out, SHAPES[0])), ("outro_q3", lambda: outro_fixture(a.out))):
        try:
            fn()
            REPORT["made"].append(name)
        except Exception:
            REPORT["failed"][name] = traceback.format_exc()
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(REPORT, f, indent=1)
    print(json.dumps({k: (v if k != "failed" else {n: t[-1500:] for n, t in v.items()}) for k, v in REPORT.items()},
                     indent=1))


if __name__ == "__main__":
    main()
