#!/usr/bin/env python3
"""Reference fixtures of OutRo as the authors' release computes it, for tests/test_outro.cpp.

The reference is written from ../shared/docs/method.md ("OutRo, as the authors' release computes
it") on top of Hugging Face transformers' Qwen2 (float32, eager attention), with its own hooks:
  - a forward pre-hook on every decoder layer reads the residual stream entering it and finds the
    layer's sinks (max|h| >= max(abs_thr, med_mul * lower median |h|)), and updates the enhanced and
    cumulative sets;
  - a forward hook on v_proj takes the mean sink value per KV head;
  - a registered attention function computes causal eager attention and, at enhancement layers,
    recomputes the enhanced sinks' rows over every prompt key with no mask;
  - a forward pre-hook on o_proj applies the cosine-gated rotation to the per-head outputs.
Decode steps use transformers' KV cache; the gating of a new token follows the decode mode.

The checkpoints are tiny random Qwen2 decoders whose embeddings carry planted massive channels,
and whose MLP neurons are set so that real sinks exist at several layers:
  token A (position 0) is a sink at every layer; token B is a sink at layers 0-1 and then stops
  (a layer-1 neuron brings its massive channel down to 200); token D is no sink at first and becomes one from
  layer 3 (a layer-2 neuron writes a massive value), at two positions of the prompt.
Run on the GPU machine (CPU is fine too):  python3 tools/outro_fixtures.py OUTDIR
Writes OUTDIR/<name>/{config.json, model.safetensors, ref.safetensors, ref.json}.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AttentionInterface, Qwen2Config, Qwen2ForCausalLM

A, B, D = 3, 4, 5            # planted token ids
CH_A, CH_B, CH_D = 5, 9, 11  # their massive channels
MASSIVE = 3000.0
PRESETS = {
    "baseline": dict(enhance=False, gate=False),
    "outro": dict(enhance=True, gate=True),
    "outro-sinkout-only": dict(enhance=True, gate=False),
    "outro-align-only": dict(enhance=False, gate=True),
}


def params(L, **kw):
    p = dict(start_layer=0, end_layer=L - 2, apply_interval=max(1, L // 7), apply_once=True, abs_thr=100.0,
             med_mul=1000.0, gamma=3.0, temp=0.1, rescale=True, enhance=True, gate=True, decode="official")
    p.update(kw)
    return p


class State:
    """OutRo's state for one prompt (method.md: reset at every prefill)."""

    def __init__(self, L, p):
        self.L, self.p = L, p
        self.prefill = True
        self.sinks = [[] for _ in range(L)]
        self.enh = [[] for _ in range(L)]
        self.vbar = [None] * L
        self.done = set()
        self.cum_at = [set() for _ in range(L)]  # the cumulative set after layer l's detection
        self.cum = set()
        self.tau = [0.0] * L
        self.on = False


ST = None


def in_range(l):
    return ST.p["start_layer"] <= l < ST.p["end_layer"]


def layer_pre(idx):
    def fn(mod, args, kwargs):
        if ST is None or not ST.on or not ST.prefill or not in_range(idx):
            return None
        h = kwargs.get("hidden_states", args[0] if args else None)[0]  # [S, D]
        a = h.abs()
        m = a.flatten().median()  # torch's median: the lower middle value
        tau = torch.maximum(torch.tensor(ST.p["abs_thr"], dtype=a.dtype), ST.p["med_mul"] * m)
        s = [int(i) for i in (a.max(dim=-1).values >= tau).nonzero().flatten()]
        ST.sinks[idx] = s
        ST.tau[idx] = float(tau)
        if ST.p["enhance"] and idx % ST.p["apply_interval"] == 0:
            e = [i for i in s if i not in ST.done]
            ST.enh[idx] = e
            if ST.p["apply_once"]:
                ST.done.update(e)
        ST.cum.update(s)
        ST.cum_at[idx] = set(ST.cum)
        return None
    return fn


def v_hook(idx, kv, hd):
    def fn(mod, args, out):
        if ST is None or not ST.on or not ST.prefill or not in_range(idx) or not ST.sinks[idx]:
            return None
        v = out[0].view(out.shape[1], kv, hd)  # bias included, no RoPE
        ST.vbar[idx] = v[ST.sinks[idx]].mean(dim=0)  # [KV, hd]
        return None
    return fn


def attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Eager attention (causal in the prefill, every cached key in a decode step) with OutRo's sink
    enhancement. query [1, H, S, hd], key/value [1, KV, T, hd]; returns ([1, S, H, hd], weights)."""
    l = int(module.layer_idx)
    _, H, S, hd = query.shape
    KV, T = key.shape[1], key.shape[2]
    g = H // KV
    k = key.repeat_interleave(g, dim=1)
    v = value.repeat_interleave(g, dim=1)
    sc = torch.matmul(query, k.transpose(2, 3)) * scaling  # [1, H, S, T]
    allowed = torch.ones(S, T, dtype=torch.bool).tril(diagonal=T - S)
    w = torch.softmax(sc.masked_fill(~allowed, float("-inf")), dim=-1)
    out = torch.matmul(w, v)  # [1, H, S, hd]
    if ST is not None and ST.on and ST.prefill and in_range(l) and ST.enh[l]:
        rows = ST.enh[l]
        wf = torch.softmax(sc[:, :, rows, :], dim=-1)  # no mask at all
        out[:, :, rows, :] = torch.matmul(wf, v)
    return out.transpose(1, 2).contiguous(), w


def gate(o, vb, p):
    """o [S, H, hd], vb [H, hd] (each head's KV head's sink value)."""
    c = (torch.nn.functional.normalize(o, dim=-1, eps=1e-12) *
         torch.nn.functional.normalize(vb, dim=-1, eps=1e-12)[None]).sum(-1, keepdim=True)
    gt = torch.tanh(torch.relu(c) / p["temp"])
    dot = (o * vb[None]).sum(-1, keepdim=True)
    proj = dot.abs() / ((vb * vb).sum(-1, keepdim=True)[None] + 1e-8) * vb[None]
    o2 = o + gt * p["gamma"] * proj
    if p["rescale"]:
        o2 = o2 * o.norm(dim=-1, keepdim=True) / (o2.norm(dim=-1, keepdim=True) + 1e-8)
    return o2


def o_pre(idx, H, KV, hd):
    def fn(mod, args):
        if ST is None or not ST.on or not ST.p["gate"] or not in_range(idx) or ST.vbar[idx] is None:
            return None
        z = args[0].clone()
        S = z.shape[1]
        o = z[0].view(S, H, hd)
        vb = ST.vbar[idx].repeat_interleave(H // KV, dim=0)  # [H, hd]
        if ST.prefill:
            rows = [i for i in range(S) if i not in ST.cum_at[idx]]
        else:
            mode = ST.p["decode"]
            if mode == "off":
                return None
            # official: the step's own row indices compared with the layer's prompt sink positions
            rows = [i for i in range(S) if not (mode == "official" and i in ST.sinks[idx])]
        if rows:
            o[rows] = gate(o[rows], vb, ST.p)
        return (z.view(1, S, H * hd),)
    return fn


def build(name, L, H, KV, hd, seed, outdir):
    torch.manual_seed(seed)
    Dm, I, V = H * hd, 2 * H * hd, 128
    cfg = Qwen2Config(vocab_size=V, hidden_size=Dm, intermediate_size=I, num_hidden_layers=L, num_attention_heads=H,
                      num_key_value_heads=KV, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, attn_implementation="eager")
    m = Qwen2ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for n_, p_ in m.named_parameters():
            if "norm" in n_:
                p_.copy_(1.0 + 0.1 * torch.randn_like(p_))
            elif n_.endswith("bias"):
                p_.copy_(0.1 * torch.randn_like(p_))
            else:
                p_.copy_(torch.randn_like(p_) / p_.shape[-1] ** 0.5 * 0.5)
        e = m.model.embed_tokens.weight
        e.copy_(torch.randn_like(e))
        e[:, [CH_A, CH_B, CH_D]] = 0.0
        e[A, CH_A] = MASSIVE
        e[B] = 0.0
        e[B, CH_B] = MASSIVE
        e[D] = 0.0
        e[D, CH_D] = 300.0  # below the threshold until layer 2's neuron adds to it
        for l, ch in ((1, CH_B), (2, CH_D)):
            mlp = m.model.layers[l].mlp
            mlp.gate_proj.weight[0] = 0.0
            mlp.up_proj.weight[0] = 0.0
            mlp.down_proj.weight[:, 0] = 0.0
            mlp.gate_proj.weight[0, ch] = 4.0
            mlp.up_proj.weight[0, ch] = 4.0
    # The detector neurons' output weights: B's channel brought down to 200 at layer 2's input (below
    # every layer's threshold, yet far from 0, so that the float32 sum is well conditioned), D's raised to MASSIVE.
    ids = prompt_ids(V)
    for l, tok, ch, target in ((1, B, CH_B, 200.0), (2, D, CH_D, MASSIVE)):
        acts, hin = {}, {}
        mlp = m.model.layers[l].mlp
        h1 = mlp.down_proj.register_forward_pre_hook(lambda mod, a: acts.__setitem__("a", a[0][0, :, 0].clone()))
        h2 = m.model.layers[l + 1].register_forward_pre_hook(
            lambda mod, a, kw: hin.__setitem__("h", kw.get("hidden_states", a[0] if a else None)[0].clone()),
            with_kwargs=True)
        with torch.no_grad():
            m(input_ids=torch.tensor([ids]), use_cache=False)
        h1.remove(), h2.remove()
        pos = ids.index(tok)
        with torch.no_grad():
            mlp.down_proj.weight[ch, 0] = (target - hin["h"][pos, ch]) / acts["a"][pos]
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    m.save_pretrained(d, safe_serialization=True)
    return m, cfg


def prompt_ids(V):
    g = torch.Generator().manual_seed(7)
    rest = [int(x) for x in torch.randint(8, V, (24,), generator=g)]
    ids = rest[:]
    ids[0] = A
    ids[5] = B
    ids[9] = D
    ids[16] = D
    return ids


def nosink_ids(V):
    g = torch.Generator().manual_seed(11)
    return [int(x) for x in torch.randint(8, V, (20,), generator=g)]


def run(m, L, p, ids, steps):
    """Prefill logits [S, V] and per-step logits of the given next tokens; the state after the prefill."""
    global ST
    ST = State(L, p)
    ST.on = True
    x = torch.tensor([ids])
    with torch.no_grad():
        out = m(input_ids=x, use_cache=True)
        logits = [out.logits[0].clone()]
        cache = out.past_key_values
        ST.prefill = False
        pos = len(ids)
        for t in steps:
            o = m(input_ids=torch.tensor([[t]]), past_key_values=cache, use_cache=True,
                  cache_position=torch.tensor([pos]))
            cache = o.past_key_values
            logits.append(o.logits[0].clone())
            pos += 1
    st = ST
    ST = None
    return logits, st


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/outro_release"
    AttentionInterface.register("outro_ref", attention)
    summary = {}
    for name, L, H, KV, hd, seed in (("q14_gqa", 14, 4, 2, 8, 1), ("q8_mha", 8, 4, 4, 8, 2)):
        m, cfg = build(name, L, H, KV, hd, seed, outdir)
        m.set_attn_implementation("outro_ref")
        for l, layer in enumerate(m.model.layers):
            layer.register_forward_pre_hook(layer_pre(l), with_kwargs=True)
            layer.self_attn.v_proj.register_forward_hook(v_hook(l, KV, hd))
            layer.self_attn.o_proj.register_forward_pre_hook(o_pre(l, H, KV, hd))
        ids, quiet = prompt_ids(cfg.vocab_size), nosink_ids(cfg.vocab_size)
        steps = [17, 42, 99]
        ref, meta = {}, {"layers": L, "ids": ids, "nosink_ids": quiet, "steps": steps, "params": params(L),
                         "presets": {}}
        for preset, over in PRESETS.items():
            p = params(L, **over)
            lg, st = run(m, L, p, ids, steps)
            ref[f"{preset}.prompt"] = lg[0]
            for i, s in enumerate(lg[1:]):
                ref[f"{preset}.step{i}"] = s
            ref[f"{preset}.nosink"] = run(m, L, p, quiet, [])[0][0]
            meta["presets"][preset] = {"sinks": st.sinks, "enhanced": st.enh, "tau": st.tau}
        for mode in ("on", "off"):
            lg, _ = run(m, L, params(L, decode=mode), ids, steps)
            for i, s in enumerate(lg[1:]):
                ref[f"outro.decode_{mode}.step{i}"] = s
        # A second setting: interval 3, no apply_once, no rescale, other gamma/temp, layers [1, L-1).
        p2 = params(L, apply_interval=3, apply_once=False, rescale=False, gamma=2.0, temp=0.25, start_layer=1,
                    end_layer=L - 1)
        lg, st = run(m, L, p2, ids, steps[:1])
        ref["custom.prompt"], ref["custom.step0"] = lg[0], lg[1]
        meta["custom"] = {"params": p2, "sinks": st.sinks, "enhanced": st.enh}
        save_file({k: v.contiguous().float() for k, v in ref.items()}, os.path.join(outdir, name, "ref.safetensors"))
        with open(os.path.join(outdir, name, "ref.json"), "w") as f:
            json.dump(meta, f, indent=1)
        s = meta["presets"]["outro"]
        summary[name] = {"sinks": s["sinks"], "enhanced": s["enhanced"],
                         "outro_vs_baseline": float((ref["outro.prompt"] - ref["baseline.prompt"]).abs().max()),
                         "nosink_diff": float((ref["outro.nosink"] - ref["baseline.nosink"]).abs().max())}
        # The planted pattern must hold, or the fixture tests nothing of what it claims.
        sk = s["sinks"]
        assert all(0 in sk[l] for l in range(L - 2)), f"{name}: token A is not a sink at every layer: {sk}"
        assert 5 in sk[0] and 5 in sk[1] and all(5 not in sk[l] for l in range(2, L - 2)), f"{name}: B pattern {sk}"
        assert all(9 not in sk[l] for l in range(3)) and all(9 in sk[l] and 16 in sk[l] for l in range(3, L - 2)), \
            f"{name}: D pattern {sk}"
        assert all(set(sk[l]) <= {0, 5, 9, 16} for l in range(L - 2)), f"{name}: unplanted sinks {sk}"
        assert summary[name]["nosink_diff"] == 0.0
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
