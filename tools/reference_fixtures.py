#!/usr/bin/env python3
"""Reference fixtures for outro's parity tests, made with Hugging Face transformers.

Run on a machine with torch + transformers (the GPU machine): `python3 tools/reference_fixtures.py OUTDIR`.
Writes OUTDIR/models/<name>/: the tiny random checkpoint exactly as save_pretrained writes it, plus
ref.safetensors (reference tensors, float32 / int64) and ref.json (what each tensor is).

Everything is computed on CPU in float32 (16-bit models: also run in their own dtype) through a
patched eager attention that records q/k/v (after RoPE) and patterns and can apply the project's
interventions (sink-out rows, value alignment, sink-key dimension zeroing), and hooks on the
residual stream (hidden alignment) and on o_proj's input (z, head ablation).
"""
import json
import os
import sys
import traceback

import torch
import transformers
from safetensors.torch import save_file

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

# ---------------------------------------------------------------- patched attention
STATE = {"rec": None, "sinkout": None, "value_align": None, "dimzero": False}


def rotate_toward(x, target, lam):
    """x [..., d] rotated toward target [d] (broadcast): |x| * normalize((1-l) x/|x| + l t/|t|)."""
    nx = x.norm(dim=-1, keepdim=True)
    t = target / target.norm(dim=-1, keepdim=True)
    m = (1 - lam) * x / nx + lam * t
    return nx * m / m.norm(dim=-1, keepdim=True)


def patched_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    layer = module.layer_idx
    b, H, n, hd = query.shape
    KV = key.shape[1]
    key = key.clone()
    value = value.clone()
    va = STATE["value_align"]
    if va is not None and layer in va["layers"]:
        sinks, lam = va["sinks"], va["lambda"]
        for h in range(KV):
            t = value[0, h, sinks, :].mean(dim=0)
            for i in range(n):
                if i not in sinks:
                    value[0, h, i, :] = rotate_toward(value[0, h, i, :], t, lam)
    if STATE["dimzero"]:
        for h in range(KV):
            c = int(key[0, h, 0, :].abs().argmax())
            key[0, h, 0, c] = 0.0
    rec = STATE["rec"]
    if rec is not None:
        rec[f"q.{layer}"] = query[0].detach().float().clone()
        rec[f"k.{layer}"] = key[0].detach().float().clone()
        rec[f"v.{layer}"] = value[0].detach().float().clone()
    g = H // KV
    k = key.repeat_interleave(g, dim=1)
    v = value.repeat_interleave(g, dim=1)
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    so = STATE["sinkout"]
    if so is not None and layer == so["layer"]:
        for s in so["sinks"]:
            allowed[s, : so["end"]] = True
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    if rec is not None:
        rec[f"attn.{layer}"] = probs[0].detach().float().clone()
    out = torch.matmul(probs, v).transpose(1, 2).contiguous()
    return out, probs


def patch_modules():
    import importlib
    for name in ["qwen2.modeling_qwen2", "llama.modeling_llama", "qwen2_5_omni.modeling_qwen2_5_omni",
                 "qwen2_5_vl.modeling_qwen2_5_vl"]:
        try:
            mod = importlib.import_module("transformers.models." + name)
            mod.eager_attention_forward = patched_attention
        except Exception as e:  # noqa: BLE001
            print("could not patch", name, e)


# ---------------------------------------------------------------- models
def text_model(m):
    inner = m.model
    if hasattr(inner, "language_model"):
        inner = inner.language_model
    return inner


def randomize(m, seed):
    g = torch.Generator().manual_seed(seed)
    tm = text_model(m)
    params = dict(tm.named_parameters())
    if hasattr(m, "lm_head"):
        params["lm_head.weight"] = m.lm_head.weight
    with torch.no_grad():
        for name, p in params.items():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * r)
            else:
                p.copy_(0.1 * r)


def build(kind, seed, **kw):
    torch.manual_seed(seed)
    text = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=kw.get("layers", 2),
                num_attention_heads=kw.get("heads", 4), num_key_value_heads=kw.get("kv", 2),
                rope_theta=kw.get("theta", 10000.0), rms_norm_eps=1e-6, max_position_embeddings=512,
                tie_word_embeddings=kw.get("tied", False))
    if "head_dim" in kw:
        text["head_dim"] = kw["head_dim"]
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(**text)
        cls = transformers.Qwen2ForCausalLM
    elif kind == "llama":
        cfg = transformers.LlamaConfig(**text, attention_bias=kw.get("bias", False))
        cls = transformers.LlamaForCausalLM
    elif kind == "omni":
        t = dict(text)
        t.pop("tie_word_embeddings")
        t["rope_scaling"] = {"rope_type": "default", "type": "default", "mrope_section": [2, 3, 3]}
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      fullatt_block_indexes=[0], in_channels=3, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, window_size=112)
        audio = dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=128,
                     output_dim=64, max_source_positions=1500, n_window=100)
        cfg = transformers.Qwen2_5OmniThinkerConfig(text_config=t, vision_config=vision, audio_config=audio)
        cls = transformers.Qwen2_5OmniThinkerForConditionalGeneration
    elif kind == "vl":
        t = dict(text)
        t["rope_scaling"] = {"rope_type": "default", "type": "default", "mrope_section": [2, 3, 3]}
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      fullatt_block_indexes=[0], in_chans=3, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, window_size=112)
        cfg = transformers.Qwen2_5_VLConfig(text_config=t, vision_config=vision,
                                            tie_word_embeddings=kw.get("tied", False))
        cls = transformers.Qwen2_5_VLForConditionalGeneration
    else:
        raise ValueError(kind)
    try:
        cfg._attn_implementation = "eager"
    except Exception:  # noqa: BLE001
        pass
    m = cls(cfg)
    if hasattr(m, "set_attn_implementation"):
        try:
            m.set_attn_implementation("eager")
        except Exception as e:  # noqa: BLE001
            print("set_attn_implementation:", e)
    m.eval()
    randomize(m, seed)
    if kw.get("tied", False) and hasattr(m, "tie_weights"):
        m.tie_weights()
    return m


def run(m, ids, rec=False, align_hidden=None, ablate=None):
    """Full forward; returns logits [n, V] float32 and the recorded dict."""
    STATE["rec"] = {} if rec else None
    tm = text_model(m)
    hooks = []
    hidden = {}
    L = len(tm.layers)

    def pre_layer(idx):
        def fn(mod, args, kwargs):
            hs = args[0] if args else kwargs["hidden_states"]
            if align_hidden is not None and idx in align_hidden["layers"]:
                sinks, lam = align_hidden["sinks"], align_hidden["lambda"]
                hs = hs.clone()
                t = hs[0, sinks, :].mean(dim=0)
                for i in range(hs.shape[1]):
                    if i not in sinks:
                        hs[0, i, :] = rotate_toward(hs[0, i, :], t, lam)
            hidden[f"hidden.{idx}"] = hs[0].detach().float().clone()
            if args:
                return (hs,) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = hs
            return args, kwargs
        return fn

    def pre_o(idx):
        def fn(mod, args):
            z = args[0]
            if ablate is not None and ablate[0] == idx:
                z = z.clone()
                hd = z.shape[-1] // m.config.get_text_config().num_attention_heads
                z[..., ablate[1] * hd:(ablate[1] + 1) * hd] = 0
            hidden[f"z.{idx}"] = z[0].detach().float().clone()
            return (z,)
        return fn

    for i, layer in enumerate(tm.layers):
        hooks.append(layer.register_forward_pre_hook(pre_layer(i), with_kwargs=True))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(pre_o(i)))
    hooks.append(tm.norm.register_forward_hook(lambda mod, a, out: hidden.__setitem__(f"hidden.{L}", out[0].detach().float().clone())))
    try:
        with torch.no_grad():
            out = m(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    recd = STATE["rec"] or {}
    recd.update(hidden)
    STATE["rec"] = None
    return out.logits[0].float(), recd


def greedy(m, ids, steps=8):
    seq = list(ids)
    toks, margins = [], []
    for _ in range(steps):
        logits, _ = run(m, seq)
        last = logits[-1]
        top2 = torch.topk(last, 2).values
        t = int(last.argmax())
        toks.append(t)
        margins.append(float(top2[0] - top2[1]))
        seq.append(t)
    return toks, margins


def make(outdir, name, kind, seed, dtype=torch.float32, shards=False, interventions=False, **kw):
    d = os.path.join(outdir, "models", name)
    os.makedirs(d, exist_ok=True)
    m = build(kind, seed, **kw)
    if dtype != torch.float32:
        m = m.to(dtype)
    save_kw = {"max_shard_size": "60KB"} if shards else {}
    m.save_pretrained(d, **save_kw)
    g = torch.Generator().manual_seed(seed + 1000)
    ids = [1] + torch.randint(3, 200, (11,), generator=g).tolist()
    ref = {"input_ids": torch.tensor(ids, dtype=torch.int64)}
    desc = {"class": type(m).__name__, "transformers": transformers.__version__, "dtype": str(dtype),
            "input_ids": ids, "conventions": {
                "hidden.i": "i < L: input of layer i (hidden.0 = embedding output); hidden.L: final norm output",
                "attn.l": "[heads, n, n] post-softmax", "q.l": "[heads, n, hd] after RoPE", "k.l/v.l": "[kv_heads, n, hd]",
                "z.l": "[n, heads*hd] input of o_proj", "greedy": "8 greedy tokens, full recompute each step"}}
    if dtype != torch.float32:
        lo, _ = run(m, ids)
        ref["logits"] = lo
        # A fresh float32 model with the 16-bit weights: casting back would leave the rotary
        # inverse frequencies rounded to 16 bits.
        m32 = build(kind, seed, **kw)
        m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()}, strict=False)
        m = m32
        lf, recd = run(m, ids, rec=True)
        ref["logits_f32math"] = lf
        desc["logits"] = f"transformers run in {dtype}"
        desc["logits_f32math"] = "same weights upcast to float32, float32 math"
    else:
        lf, recd = run(m, ids, rec=True)
        ref["logits"] = lf
    ref.update(recd)
    toks, margins = greedy(m, ids)
    ref["greedy"] = torch.tensor(toks, dtype=torch.int64)
    ref["greedy_margin"] = torch.tensor(margins, dtype=torch.float32)
    if interventions:
        L = len(text_model(m).layers)
        for (l, h) in [(1, 2), (0, 0)]:
            ref[f"ablate.l{l}h{h}.logits"], _ = run(m, ids, ablate=(l, h))
        l_out, lam, sinks = 1, 0.3, [0]
        align_layers = list(range(l_out + 1, L))
        n = len(ids)
        STATE["sinkout"] = {"layer": l_out, "sinks": sinks, "end": n}
        lo, recd = run(m, ids, rec=True)
        ref["outro_sinkout.logits"] = lo
        for k, v in recd.items():
            if k.startswith("attn."):
                ref["outro_sinkout." + k] = v
        ref["outro_full.logits"], _ = run(m, ids, align_hidden={"layers": align_layers, "sinks": sinks, "lambda": lam})
        STATE["sinkout"] = None
        ref["outro_align_hidden.logits"], _ = run(m, ids, align_hidden={"layers": align_layers, "sinks": sinks, "lambda": lam})
        STATE["value_align"] = {"layers": align_layers, "sinks": sinks, "lambda": lam}
        ref["outro_align_value.logits"], _ = run(m, ids)
        STATE["value_align"] = None
        ids16 = ids + toks[:4]
        STATE["sinkout"] = {"layer": l_out, "sinks": sinks, "end": n}
        ref["outro_prompt.input_ids"] = torch.tensor(ids16, dtype=torch.int64)
        ref["outro_prompt.logits"], _ = run(m, ids16, align_hidden={"layers": align_layers, "sinks": sinks, "lambda": lam})
        STATE["sinkout"] = None
        STATE["dimzero"] = True
        lo, recd = run(m, ids, rec=True)
        STATE["dimzero"] = False
        ref["dimzero.logits"] = lo
        for k, v in recd.items():
            if k.startswith("attn."):
                ref["dimzero." + k] = v
        desc["interventions"] = {
            "ablate.lLhH.logits": "o_proj input columns of head H in layer L set to 0",
            "outro": {"sinks": sinks, "l_out": l_out, "lambda": lam, "align_layers": align_layers,
                      "sinkout": "at l_out, sink rows see keys [0, end); end = n (outro_prompt: 12 of 16)",
                      "align_hidden": "resid_pre of align layers, non-sink rows rotated toward mean sink row",
                      "align_value": "value vectors per kv head of non-sink rows rotated toward mean sink value",
                      "outro_full": "sinkout + align_hidden"},
            "dimzero": "per kv head, channel argmax|k[0]| of the key at position 0 (after RoPE) set to 0"}
    ref = {k: v.contiguous() for k, v in ref.items()}
    save_file(ref, os.path.join(d, "ref.safetensors"))
    desc["tensors"] = sorted(ref.keys())
    with open(os.path.join(d, "ref.json"), "w") as f:
        json.dump(desc, f, indent=1)
    print("ok", name, "greedy", toks, "min margin %.4f" % min(margins), flush=True)


def main():
    out = sys.argv[1]
    patch_modules()
    torch.set_num_threads(4)
    specs = [
        ("qwen2_gqa_f32", "qwen2", 11, {}, dict(interventions=True)),
        ("qwen2_tied_f32", "qwen2", 12, dict(layers=3, kv=4, theta=1e6, tied=True), dict(interventions=True)),
        ("qwen2_mqa_bf16", "qwen2", 13, dict(kv=1), dict(dtype=torch.bfloat16)),
        ("llama_gqa_f32", "llama", 14, dict(heads=8, kv=2, head_dim=8, theta=500000.0), {}),
        ("llama_bias_f16", "llama", 15, dict(bias=True, tied=True), dict(dtype=torch.float16)),
        ("qwen2_sharded_f32", "qwen2", 16, {}, dict(shards=True)),
        ("omni_thinker_f32", "omni", 17, {}, {}),
        ("vl_f32", "vl", 18, {}, {}),
    ]
    failed = []
    for name, kind, seed, kw, opts in specs:
        try:
            make(out, name, kind, seed, **opts, **kw)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            failed.append(name)
            STATE.update({"rec": None, "sinkout": None, "value_align": None, "dimzero": False})
    print("failed:", failed, flush=True)


if __name__ == "__main__":
    main()
