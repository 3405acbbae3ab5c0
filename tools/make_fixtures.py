#!/usr/bin/env python3
"""Reference fixtures for outro's parity tests, made with Hugging Face transformers.

Usage (on the GPU machine; needs torch, transformers 5.x, safetensors, no network):

    python3 tools/make_fixtures.py OUTDIR

Writes OUTDIR/models/<name>/ for every fixture model: the tiny random checkpoint exactly as
``save_pretrained`` writes it, plus ``ref.safetensors`` (reference tensors, float32 / int64) and
``ref.json`` (what each tensor is, how it was made, the checks run, the tolerances to use).

Everything runs on CPU, in float32 unless a 16-bit run is the point, with TF32 off and one thread,
so that a rerun gives the same bytes. Each model is made inside its own try/except: a failure
prints its traceback and the script goes on to the next one; a summary comes at the end and the
exit status is 1 when any model failed.

How the references are taken
  * plain run: the checkpoint reloaded with ``from_pretrained(dir, dtype=float32,
    attn_implementation="eager")`` and run by transformers unchanged, with
    ``output_hidden_states=True, output_attentions=True`` -> logits, hidden.i, attn.l.
  * recording run: the same model with a custom attention function registered through
    ``AttentionInterface`` (it records q/k/v, builds the mask itself, applies the interventions and
    then calls transformers' own ``eager_attention_forward``) and forward pre-hooks on ``o_proj``
    (z, head ablation) -> q.l, k.l, v.l, z.l and
    every intervention reference. Its plain logits and patterns are checked against the plain run.
"""
import glob
import inspect
import json
import math
import os
import shutil
import struct
import sys
import time
import traceback

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_num_threads(1)
torch.set_default_dtype(torch.float32)

import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

try:
    import safetensors as _st

    SAFETENSORS_VERSION = getattr(_st, "__version__", "?")
except Exception:  # noqa: BLE001
    SAFETENSORS_VERSION = "?"

ATTN_NAME = "outro_fixture_recorder"
N_TOKENS = 12
GREEDY_STEPS = 8
VOCAB = 256

# ---------------------------------------------------------------------------- fixture specs
# text: the decoder's dims; kind selects the class; interventions: ablation / dimzero refs (OutRo's
# references are tools/outro_fixtures.py's).
SPECS = [
    dict(name="qwen2_gqa_f32", kind="qwen2", seed=101, dtype="float32", interventions=True,
         text=dict(layers=2, heads=4, kv=2, theta=10000.0, tied=False)),
    dict(name="qwen2_tied_f32", kind="qwen2", seed=102, dtype="float32", interventions=True,
         text=dict(layers=3, heads=4, kv=4, theta=1000000.0, tied=True)),
    dict(name="qwen2_mqa_bf16", kind="qwen2", seed=103, dtype="bfloat16",
         text=dict(layers=2, heads=4, kv=1, theta=10000.0, tied=False)),
    dict(name="llama_gqa_f32", kind="llama", seed=104, dtype="float32",
         text=dict(layers=2, heads=8, kv=2, head_dim=8, theta=500000.0, tied=False, bias=False)),
    dict(name="llama_bias_f16", kind="llama", seed=105, dtype="float16",
         text=dict(layers=2, heads=4, kv=2, theta=10000.0, tied=True, bias=True)),
    dict(name="qwen2_sharded_f32", kind="qwen2", seed=106, dtype="float32", shard="100KB",
         text=dict(layers=2, heads=4, kv=2, theta=10000.0, tied=False)),
    dict(name="omni_thinker_f32", kind="omni", seed=107, dtype="float32",
         text=dict(layers=2, heads=4, kv=2, theta=10000.0, tied=False)),
    dict(name="vl_f32", kind="vl", seed=108, dtype="float32",
         text=dict(layers=2, heads=4, kv=2, theta=10000.0, tied=False)),
]

ABLATIONS = [(1, 2), (0, 0)]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------- configs
def _text_common(t):
    d = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=t["layers"],
             num_attention_heads=t["heads"], num_key_value_heads=t["kv"], rms_norm_eps=1e-6,
             max_position_embeddings=512, hidden_act="silu", tie_word_embeddings=t["tied"],
             use_cache=True, attention_dropout=0.0)
    if "head_dim" in t:
        d["head_dim"] = t["head_dim"]
    return d


def config_variants(spec):
    """[(label, callable -> (config, model class))] tried in order until one builds and runs."""
    kind, t = spec["kind"], spec["text"]
    theta = float(t["theta"])
    out = []
    if kind in ("qwen2", "llama"):
        cfg_cls = transformers.Qwen2Config if kind == "qwen2" else transformers.LlamaConfig
        model_cls = transformers.Qwen2ForCausalLM if kind == "qwen2" else transformers.LlamaForCausalLM
        extra = {}
        if kind == "llama":
            extra = dict(attention_bias=bool(t.get("bias", False)), mlp_bias=False)
        else:
            extra = dict(use_sliding_window=False)

        def legacy():
            return cfg_cls(**_text_common(t), rope_theta=theta, **extra), model_cls

        def native():
            return cfg_cls(**_text_common(t), rope_parameters={"rope_type": "default", "rope_theta": theta},
                           **extra), model_cls

        out = [("legacy rope_theta kwarg", legacy), ("rope_parameters", native)]
    elif kind in ("omni", "vl"):
        sec = [2, 3, 3]  # sums to head_dim/2 = 8

        def text_dict(rope_style):
            d = _text_common(t)
            d["use_sliding_window"] = False
            if rope_style == "default_type":  # how Qwen2.5-Omni checkpoints and HF's tests write it
                d["rope_theta"] = theta
                d["rope_scaling"] = {"mrope_section": list(sec), "rope_type": "default", "type": "default"}
            elif rope_style == "mrope_type":  # how Qwen2.5-VL checkpoints write it
                d["rope_theta"] = theta
                d["rope_scaling"] = {"type": "mrope", "mrope_section": list(sec)}
            else:  # transformers 5 native
                d["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, "mrope_section": list(sec)}
            return d

        if kind == "omni":
            vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, in_channels=3, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=64,
                          fullatt_block_indexes=[0], hidden_act="silu")
            audio = dict(num_mel_bins=20, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16,
                         max_source_positions=200, n_window=100, output_dim=64)

            def mk(style):
                def f():
                    cfg = transformers.Qwen2_5OmniThinkerConfig(text_config=text_dict(style), vision_config=dict(vision),
                                                               audio_config=dict(audio), tie_word_embeddings=False)
                    return cfg, transformers.Qwen2_5OmniThinkerForConditionalGeneration
                return f
        else:
            vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, in_channels=3, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=64,
                          fullatt_block_indexes=[0], hidden_act="silu")

            def mk(style):
                def f():
                    cfg = transformers.Qwen2_5_VLConfig(text_config=text_dict(style), vision_config=dict(vision),
                                                        tie_word_embeddings=False)
                    return cfg, transformers.Qwen2_5_VLForConditionalGeneration
                return f

        out = [("rope_scaling {rope_type: default, type: default, mrope_section}", mk("default_type")),
               ("rope_parameters {rope_type: default, mrope_section}", mk("native")),
               ("rope_scaling {type: mrope, mrope_section}", mk("mrope_type"))]
    else:
        raise ValueError(kind)
    return out


# Qwen2.5-Omni special ids. transformers 5.17's Qwen2_5OmniThinkerConfig has no vision_start_token_id field but
# the thinker's get_rope_index reads config.vision_start_token_id (AttributeError on every forward with an
# attention_mask); the full Qwen2.5-Omni config.json carries these ids in thinker_config, so set them.
OMNI_IDS = {"vision_start_token_id": 151652, "vision_end_token_id": 151653}


def fixup_config(cfg):
    """Returns notes on what was set."""
    notes = []
    if getattr(cfg, "model_type", "") == "qwen2_5_omni_thinker":
        for k, v in OMNI_IDS.items():
            if getattr(cfg, k, None) is None:
                setattr(cfg, k, v)
                notes.append(f"set config.{k} = {v} (missing in the thinker config)")
    return notes


# ---------------------------------------------------------------------------- model anatomy
def text_parts(m):
    """The text decoder: (module, its name, layers, final norm, embedding, lm_head)."""
    best = None
    for name, mod in m.named_modules():
        layers = getattr(mod, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
            continue
        if not all(hasattr(mod, a) for a in ("norm", "embed_tokens")):
            continue
        sa = getattr(layers[0], "self_attn", None)
        if sa is None or not hasattr(sa, "o_proj"):
            continue
        if best is None or len(name) < len(best[0]):
            best = (name, mod)
    if best is None:
        raise RuntimeError("could not find the text decoder (module with layers/norm/embed_tokens)")
    name, tm = best
    head = getattr(m, "lm_head", None)
    if head is None:
        head = m.get_output_embeddings()
    return dict(module=tm, name=name, layers=list(tm.layers), norm=tm.norm, embed=tm.embed_tokens, lm_head=head)


def attn_dims(parts):
    sa = parts["layers"][0].self_attn
    cfg = sa.config if hasattr(sa, "config") else None
    hd = int(getattr(sa, "head_dim"))
    H = int(sa.q_proj.out_features // hd)
    KV = int(sa.k_proj.out_features // hd)
    return H, KV, hd, cfg


def is_tied(parts):
    a = parts["embed"].weight
    b = parts["lm_head"].weight
    return a is b or a.data_ptr() == b.data_ptr()


def randomize(m, seed):
    """Every parameter: norm weights 1 + 0.1 N(0,1); everything else (linear, embedding, bias, conv) 0.1 N(0,1).
    named_parameters() lists a tied tensor once, so tying is kept."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            low = name.lower()
            is_norm = p.dim() == 1 and name.endswith("weight") and (
                "norm" in low or ".ln_" in low or low.startswith("ln_") or "layer_norm" in low or "layernorm" in low)
            p.copy_((1.0 + 0.1 * r) if is_norm else (0.1 * r))


def rope_check(parts, theta, hd):
    """Compare every inv_freq buffer of the decoder with 1/theta^(2i/hd)."""
    want = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    found = []
    for name, buf in parts["module"].named_buffers():
        if name.endswith("inv_freq"):
            got = buf.detach().float().cpu()
            if got.shape != want.shape:
                found.append((name, None))
            else:
                found.append((name, float((got - want).abs().max() / want.abs().max())))
    return found


def set_impl(m, parts, name):
    """Select the attention implementation for the text decoder; returns notes."""
    notes = []
    try:
        m.set_attn_implementation(name)
    except Exception as e:  # noqa: BLE001
        notes.append(f"set_attn_implementation({name!r}) raised {e!r}; setting the text config directly")
    cfgs = {}
    for c in [getattr(parts["module"], "config", None)] + [getattr(l.self_attn, "config", None) for l in parts["layers"]]:
        if c is not None:
            cfgs[id(c)] = c
    for c in cfgs.values():
        if getattr(c, "_attn_implementation", None) != name:
            try:
                c._attn_implementation = name
            except Exception:  # noqa: BLE001
                c._attn_implementation_internal = name
    return notes


# ---------------------------------------------------------------------------- recording attention
class Control:
    def __init__(self):
        self.reset()

    def reset(self):
        self.rec = None          # dict to fill, or None
        self.dimzero = False
        self.calls = 0
        self.eager_used = None


CTL = Control()
ORIG_EAGER = {}  # module name -> transformers' own eager_attention_forward (before any patching)


def own_eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Same math as transformers' eager_attention_forward (used only if that cannot be called)."""
    g = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(g, dim=1)
    v = value.repeat_interleave(g, dim=1)
    w = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask[:, :, :, : k.shape[-2]]
    w = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(w, v).transpose(1, 2).contiguous()
    return out, w


def find_eager(module):
    modname = type(module).__module__
    if modname in ORIG_EAGER:
        return ORIG_EAGER[modname], modname
    mod = sys.modules.get(modname)
    fn = getattr(mod, "eager_attention_forward", None) if mod is not None else None
    if fn is not None and fn is not fixture_attention:
        ORIG_EAGER[modname] = fn
        return fn, modname
    try:
        from transformers.models.llama import modeling_llama
        return modeling_llama.eager_attention_forward, "transformers.models.llama.modeling_llama"
    except Exception:  # noqa: BLE001
        return own_eager, "own_eager (fallback)"


def fixture_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Registered attention function: records q/k/v, applies the interventions, builds the causal mask
    itself (rows of sink positions widened at the sink-out layer) and calls the eager computation.
    The mask transformers passes is ignored (for a custom implementation name it is None anyway)."""
    CTL.calls += 1
    layer = int(module.layer_idx)
    b, H, nq, hd = query.shape
    KV, nk = key.shape[1], key.shape[2]
    if b != 1 or nq != nk:
        raise RuntimeError(f"fixture attention expects one full sequence without cache, got q {tuple(query.shape)} "
                           f"k {tuple(key.shape)}")
    if scaling is None:
        scaling = getattr(module, "scaling", hd ** -0.5)
    n = nq
    key = key.clone()
    value = value.clone()
    if CTL.dimzero:
        chans = []
        for h in range(KV):
            c = int(key[0, h, 0, :].abs().argmax())
            key[0, h, 0, c] = 0.0
            chans.append(c)
        if CTL.rec is not None:
            CTL.rec[f"dimzero_channels.{layer}"] = torch.tensor(chans, dtype=torch.int64)
    allowed = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
    mask = torch.zeros(n, n, dtype=query.dtype, device=query.device)
    mask = mask.masked_fill(~allowed, torch.finfo(query.dtype).min)[None, None]
    fn, where = find_eager(module)
    try:
        out, w = fn(module, query, key, value, mask, scaling=scaling, dropout=0.0)
    except TypeError:
        out, w = own_eager(module, query, key, value, mask, scaling=scaling)
        where = "own_eager (transformers' eager raised TypeError)"
    CTL.eager_used = where
    if CTL.rec is not None:
        CTL.rec[f"q.{layer}"] = query[0].detach().float().clone()
        CTL.rec[f"k.{layer}"] = key[0].detach().float().clone()
        CTL.rec[f"v.{layer}"] = value[0].detach().float().clone()
        CTL.rec[f"attn.{layer}"] = w[0].detach().float().clone()
        CTL.rec[f"scaling.{layer}"] = float(scaling)
    return out, w


def register_attention():
    notes = []
    try:
        from transformers import AttentionInterface
        AttentionInterface.register(ATTN_NAME, fixture_attention)
        notes.append("registered with transformers.AttentionInterface.register")
    except Exception as e:  # noqa: BLE001
        notes.append(f"AttentionInterface.register failed: {e!r}")
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        ALL_ATTENTION_FUNCTIONS[ATTN_NAME] = fixture_attention
        notes.append("registered with ALL_ATTENTION_FUNCTIONS[...] = fn")
    return notes


class Recording:
    """Context: the text decoder runs fixture_attention; restores eager afterwards.
    Mechanism 'interface' (registered name) is tried first; 'patch' replaces the modeling module's
    eager_attention_forward and keeps attn_implementation='eager'."""

    def __init__(self, m, parts, mechanism):
        self.m, self.parts, self.mechanism = m, parts, mechanism
        self.patched = []

    def __enter__(self):
        if self.mechanism == "interface":
            set_impl(self.m, self.parts, ATTN_NAME)
        else:
            set_impl(self.m, self.parts, "eager")
            for l in self.parts["layers"]:
                modname = type(l.self_attn).__module__
                mod = sys.modules[modname]
                if modname not in ORIG_EAGER:
                    ORIG_EAGER[modname] = mod.eager_attention_forward
                if mod.eager_attention_forward is not fixture_attention:
                    mod.eager_attention_forward = fixture_attention
                    self.patched.append(mod)
        return self

    def __exit__(self, *exc):
        for mod in self.patched:
            mod.eager_attention_forward = ORIG_EAGER[mod.__name__]
        set_impl(self.m, self.parts, "eager")
        CTL.reset()
        return False


# ---------------------------------------------------------------------------- runs
def forward(m, ids, **kw):
    x = torch.tensor([ids], dtype=torch.int64)
    with torch.no_grad():
        return m(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False, **kw)


def plain_run(m, parts, ids):
    """transformers unchanged (eager): logits, output_hidden_states, output_attentions, plus passive hooks
    (input of each layer, output of the final norm) to check the hidden-state convention."""
    L = len(parts["layers"])
    hooked = {}
    hs = []

    def pre(i):
        def fn(mod, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            hooked[i] = h[0].detach().float().clone()
        return fn

    for i, layer in enumerate(parts["layers"]):
        hs.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
    hs.append(parts["norm"].register_forward_hook(
        lambda mod, a, out: hooked.__setitem__(L, (out[0] if isinstance(out, tuple) else out)[0].detach().float().clone())))
    try:
        out = forward(m, ids, output_hidden_states=True, output_attentions=True)
    finally:
        for h in hs:
            h.remove()
    res = dict(logits=out.logits[0].detach().float().clone(), hooked=hooked)
    res["hidden"] = [h[0].detach().float().clone() for h in out.hidden_states] if out.hidden_states is not None else None
    res["attn"] = ([a[0].detach().float().clone() for a in out.attentions]
                   if getattr(out, "attentions", None) is not None else None)
    return res


def recorded_run(m, parts, ids, mechanism, rec=True, ablate=None, dimzero=False):
    """Run with fixture_attention and hooks; returns (logits [n,V], recorded dict)."""
    L = len(parts["layers"])
    out_rec = {}
    hooks = []

    def pre_o(idx):
        def fn(mod, args):
            z = args[0]
            if ablate is not None and ablate[0] == idx:
                hd = parts["layers"][idx].self_attn.head_dim
                z = z.clone()
                z[..., ablate[1] * hd:(ablate[1] + 1) * hd] = 0
            if rec:
                out_rec[f"z.{idx}"] = z[0].detach().float().clone()
            return (z,) + tuple(args[1:])
        return fn

    for i, layer in enumerate(parts["layers"]):
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(pre_o(i)))
    try:
        with Recording(m, parts, mechanism):
            CTL.rec = {} if rec else None
            CTL.dimzero = dimzero
            CTL.calls = 0
            out = forward(m, ids)
            calls, recd, eager_used = CTL.calls, CTL.rec or {}, CTL.eager_used
    finally:
        for h in hooks:
            h.remove()
    if calls != L:
        raise RuntimeError(f"fixture attention ran {calls} times for {L} layers (mechanism {mechanism})")
    recd.update(out_rec)
    recd["_eager_used"] = eager_used
    return out.logits[0].detach().float().clone(), recd


def pick_mechanism(m, parts, ids, ref_logits):
    """'interface' if the registered function is really called for every layer and reproduces the plain
    logits, else 'patch'. Returns (mechanism, notes)."""
    notes = []
    for mech in ("interface", "patch"):
        try:
            lo, _ = recorded_run(m, parts, ids, mech, rec=False)
            d = float((lo - ref_logits).abs().max())
            notes.append(f"{mech}: max|logits - plain eager| = {d:.3g}")
            if d <= 1e-3 * max(1.0, float(ref_logits.abs().max())):
                return mech, notes
        except Exception as e:  # noqa: BLE001
            notes.append(f"{mech}: failed: {e!r}")
    raise RuntimeError("custom attention could not be installed: " + "; ".join(notes))


def greedy(m, ids, steps=GREEDY_STEPS):
    seq = list(ids)
    toks, margins = [], []
    for _ in range(steps):
        last = forward(m, seq).logits[0, -1].detach().float()
        top2 = torch.topk(last, 2).values
        t = int(torch.argmax(last))
        toks.append(t)
        margins.append(float(top2[0] - top2[1]))
        seq.append(t)
    return toks, margins


def maxdiff(a, b):
    return float((a.float() - b.float()).abs().max())


# ---------------------------------------------------------------------------- checkpoint io
def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def weight_listing(d):
    files = sorted(glob.glob(os.path.join(d, "model*.safetensors")))
    names = {}
    for f in files:
        for k, v in read_header(f).items():
            names[k] = dict(dtype=v["dtype"], shape=v["shape"], file=os.path.basename(f))
    return [os.path.basename(f) for f in files], names


def save_checkpoint(m, d, shard):
    kw = {}
    params = inspect.signature(m.save_pretrained).parameters
    if "safe_serialization" in params:
        kw["safe_serialization"] = True
    if shard:
        kw["max_shard_size"] = shard
    m.save_pretrained(d, **kw)
    return kw


def load_checkpoint(cls, d, dtype):
    notes = []
    m = None
    for key in ("dtype", "torch_dtype"):
        try:
            m = cls.from_pretrained(d, **{key: dtype}, attn_implementation="eager")
        except Exception as e:  # noqa: BLE001
            notes.append(f"from_pretrained({key}={dtype}) raised {e!r}")
            m = None
            continue
        if next(m.parameters()).dtype == dtype:
            break
        notes.append(f"from_pretrained({key}={dtype}) gave {next(m.parameters()).dtype}")
    if m is None:
        raise RuntimeError("; ".join(notes))
    if next(m.parameters()).dtype != dtype:
        notes.append(f"cast to {dtype} with .to()")
        m = m.to(dtype)
    m.eval()
    return m, notes


def tensor_desc(t):
    return dict(dtype=str(t.dtype).replace("torch.", ""), shape=list(t.shape))


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, torch.dtype):
        return str(x).replace("torch.", "")
    return str(x)


# ---------------------------------------------------------------------------- one fixture
def build_model(spec):
    errors = []
    for label, make in config_variants(spec):
        try:
            torch.manual_seed(spec["seed"])
            cfg, cls = make()
            fixup_config(cfg)
            m = cls(cfg)
            m.eval()
            randomize(m, spec["seed"])
            parts = text_parts(m)
            try:
                set_impl(m, parts, "eager")
            except Exception:  # noqa: BLE001
                pass
            ids = [1] + [5] * (N_TOKENS - 1)
            lo = forward(m, ids).logits
            if lo.shape[-1] != VOCAB or not torch.isfinite(lo).all():
                raise RuntimeError(f"test forward gave logits {tuple(lo.shape)} finite={bool(torch.isfinite(lo).all())}")
            H, KV, hd, _ = attn_dims(parts)
            rc = rope_check(parts, spec["text"]["theta"], hd)
            bad = [r for r in rc if r[1] is None or r[1] > 1e-6]
            if bad:
                raise RuntimeError(f"rotary inv_freq does not match theta={spec['text']['theta']}: {rc}")
            return m, cls, label, errors, rc, fixup_config(m.config)
        except Exception as e:  # noqa: BLE001
            errors.append(f"config variant '{label}' failed: {e!r}")
            log(f"  [{spec['name']}] config variant '{label}' failed:")
            traceback.print_exc()
    raise RuntimeError("no config variant worked: " + " | ".join(errors))


def make_fixture(outdir, spec):
    name = spec["name"]
    t0 = time.time()
    d = os.path.join(outdir, "models", name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    warnings = []
    checks = {}
    desc = {}
    save_dtype = DTYPES[spec["dtype"]]

    # 1. build, randomize, save
    m, cls, variant, variant_errors, rope_found, _ = build_model(spec)
    fix_notes = [f"set before saving: {k} = {getattr(m.config, k)}" for k in OMNI_IDS
                 if getattr(m.config, "model_type", "") == "qwen2_5_omni_thinker"]
    parts = text_parts(m)
    tied = is_tied(parts)
    if tied != bool(spec["text"]["tied"]):
        warnings.append(f"lm_head tied={tied}, but the spec asked for tied={spec['text']['tied']} (dims.tied is the truth)")
    if save_dtype != torch.float32:
        m = m.to(save_dtype)
    save_kw = save_checkpoint(m, d, spec.get("shard"))
    files, weights = weight_listing(d)
    if fix_notes:
        with open(os.path.join(d, "config.json")) as f:
            cj = json.load(f)
        fix_notes += [f"config.json {k}: {cj.get(k, 'absent')}" for k in OMNI_IDS]
    if spec.get("shard"):
        if len(files) < 2 or not os.path.exists(os.path.join(d, "model.safetensors.index.json")):
            raise RuntimeError(f"sharded save gave {files}")
    for k, v in weights.items():
        want = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[spec["dtype"]]
        if v["dtype"] != want:
            warnings.append(f"saved tensor {k} is {v['dtype']}, expected {want}")

    # 2. reload as users do: float32 math model (all references) and, for 16-bit, the native-dtype model
    m32, notes = load_checkpoint(cls, d, torch.float32)
    warnings += notes
    fix_notes += ["after reload: " + x for x in fixup_config(m32.config)]
    p32 = text_parts(m32)
    warnings += set_impl(m32, p32, "eager")
    H, KV, hd, tcfg = attn_dims(p32)
    L = len(p32["layers"])
    if is_tied(p32) != tied:
        warnings.append(f"reloaded model tied={is_tied(p32)} but saved model tied={tied}")
    mnat = None
    if save_dtype != torch.float32:
        try:
            mnat, notes = load_checkpoint(cls, d, save_dtype)
            warnings += notes
            fixup_config(mnat.config)
            warnings += set_impl(mnat, text_parts(mnat), "eager")
        except Exception as e:  # noqa: BLE001
            warnings.append(f"could not load in {spec['dtype']}: {e!r}")

    g = torch.Generator().manual_seed(spec["seed"] + 7)
    ids = [1] + torch.randint(3, VOCAB, (N_TOKENS - 1,), generator=g).tolist()

    # in-memory (as saved) vs reloaded: same weights, same dtype -> same logits
    try:
        set_impl(m, parts, "eager")
        lo_mem = forward(m, ids).logits[0].float()
        m_cmp = mnat if save_dtype != torch.float32 else m32
        if m_cmp is not None:
            lo_re = forward(m_cmp, ids).logits[0].float()
            checks["saved_model_vs_reloaded_max_abs_diff"] = maxdiff(lo_mem, lo_re)
            lim = 1e-5 if save_dtype == torch.float32 else 5e-2
            if checks["saved_model_vs_reloaded_max_abs_diff"] > lim:
                warnings.append("reloaded checkpoint does not reproduce the in-memory model "
                                f"(max diff {checks['saved_model_vs_reloaded_max_abs_diff']:.3g}): check weight names "
                                "(for 16-bit, a rotary inv_freq buffer cast to 16 bits by .to() can also explain it)")
    except Exception as e:  # noqa: BLE001
        warnings.append(f"in-memory vs reloaded comparison failed: {e!r}")
    del m

    # 3. plain run (transformers eager, unchanged)
    plain = plain_run(m32, p32, ids)
    ref = {"input_ids": torch.tensor(ids, dtype=torch.int64)}
    hidden = plain["hidden"]
    hook_hidden = [plain["hooked"].get(i) for i in range(L + 1)]
    if hidden is None or len(hidden) != L + 1:
        warnings.append(f"output_hidden_states gave {None if hidden is None else len(hidden)} tensors, expected {L + 1}; "
                        "hidden.* taken from hooks (input of layer i; final norm output)")
        hidden = hook_hidden
        checks["hidden_source"] = "hooks"
    else:
        checks["hidden_source"] = "output_hidden_states"
        diffs = [maxdiff(hidden[i], hook_hidden[i]) if hook_hidden[i] is not None else None for i in range(L + 1)]
        checks["hidden_vs_hooks_max_abs_diff"] = diffs
        if any(x is None or x > 1e-6 for x in diffs):
            warnings.append(f"output_hidden_states differs from the convention (layer inputs, final norm output): {diffs}")
    for i in range(L + 1):
        ref[f"hidden.{i}"] = hidden[i]

    # 4. recording run (custom attention via AttentionInterface, o_proj pre-hooks)
    mech, notes = pick_mechanism(m32, p32, ids, plain["logits"])
    checks["attention_mechanism"] = mech
    checks["attention_mechanism_notes"] = notes
    lo_rec, recd = recorded_run(m32, p32, ids, mech)
    checks["eager_function_called"] = recd.get("_eager_used")
    checks["recorded_vs_plain_logits_max_abs_diff"] = maxdiff(lo_rec, plain["logits"])
    if checks["recorded_vs_plain_logits_max_abs_diff"] > 1e-5:
        warnings.append("recording run logits differ from plain eager by "
                        f"{checks['recorded_vs_plain_logits_max_abs_diff']:.3g}")
    attn_src = plain["attn"] if plain["attn"] is not None and len(plain["attn"]) == L else None
    if attn_src is None:
        warnings.append("output_attentions gave no patterns; attn.* taken from the recording run")
    adiff, qkdiff = [], []
    causal = torch.ones(N_TOKENS, N_TOKENS, dtype=torch.bool).tril()
    for l in range(L):
        ref[f"q.{l}"] = recd[f"q.{l}"]
        ref[f"k.{l}"] = recd[f"k.{l}"]
        ref[f"v.{l}"] = recd[f"v.{l}"]
        ref[f"z.{l}"] = recd[f"z.{l}"]
        ref[f"attn.{l}"] = attn_src[l] if attn_src is not None else recd[f"attn.{l}"]
        adiff.append(maxdiff(recd[f"attn.{l}"], ref[f"attn.{l}"]))
        # the recorded q, k (after RoPE) reproduce the pattern
        q, k = recd[f"q.{l}"], recd[f"k.{l}"].repeat_interleave(H // KV, dim=0)
        s = (q @ k.transpose(1, 2)) * recd[f"scaling.{l}"]
        s = s.masked_fill(~causal, float("-inf"))
        qkdiff.append(maxdiff(torch.softmax(s, dim=-1), ref[f"attn.{l}"]))
    checks["recorded_vs_output_attentions_max_abs_diff"] = adiff
    checks["softmax_of_recorded_qk_vs_attn_max_abs_diff"] = qkdiff
    checks["scaling"] = [recd[f"scaling.{l}"] for l in range(L)]
    if any(x > 1e-5 for x in adiff + qkdiff):
        warnings.append(f"pattern self-checks above 1e-5: recorded {adiff}, from q/k {qkdiff}")

    # logits
    native_run = None
    if mnat is not None:
        try:
            native_run = forward(mnat, ids).logits[0].detach().float().clone()
            if not torch.isfinite(native_run).all():
                raise RuntimeError("non-finite logits")
        except Exception as e:  # noqa: BLE001
            warnings.append(f"transformers run in {spec['dtype']} failed: {e!r}")
            native_run = None
    if save_dtype == torch.bfloat16:
        if native_run is None:
            raise RuntimeError("the bfloat16 run is required for this fixture's `logits` and it failed")
        ref["logits"] = native_run
        ref["logits_f32math"] = plain["logits"]
    elif save_dtype == torch.float16:
        ref["logits"] = plain["logits"]
        ref["logits_f32math"] = plain["logits"].clone()
        if native_run is not None:
            ref["logits_f16run"] = native_run
    else:
        ref["logits"] = plain["logits"]
    if native_run is not None:
        checks[f"{spec['dtype']}_run_vs_f32math_max_abs_diff"] = maxdiff(native_run, plain["logits"])
        checks[f"{spec['dtype']}_run_vs_f32math_rel_err"] = float(
            (native_run - plain["logits"]).norm() / plain["logits"].norm())

    # greedy (float32 math model; full recompute each step)
    toks, margins = greedy(m32, ids)
    ref["greedy"] = torch.tensor(toks, dtype=torch.int64)
    ref["greedy_margin"] = torch.tensor(margins, dtype=torch.float32)
    if min(margins) < 1e-3:
        warnings.append(f"greedy margin {min(margins):.2e} is tiny: greedy tokens are fragile")
    if mnat is not None and native_run is not None:
        try:
            nt, nm = greedy(mnat, ids)
            ref[f"greedy_{spec['dtype']}run"] = torch.tensor(nt, dtype=torch.int64)
            ref[f"greedy_{spec['dtype']}run_margin"] = torch.tensor(nm, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001
            warnings.append(f"greedy in {spec['dtype']} failed: {e!r}")

    # 5. interventions
    interventions = None
    if spec.get("interventions"):
        interventions = {}
        for (l, h) in ABLATIONS:
            lo, _ = recorded_run(m32, p32, ids, mech, rec=False, ablate=(l, h))
            ref[f"ablate.l{l}h{h}.logits"] = lo
        lo, rd = recorded_run(m32, p32, ids, mech, dimzero=True)
        ref["dimzero.logits"] = lo
        for l in range(L):
            ref[f"dimzero.attn.{l}"] = rd[f"attn.{l}"]
            ref[f"dimzero.channels.{l}"] = rd[f"dimzero_channels.{l}"]
        # sanity: every intervention changes something
        for k in [k for k in ref if k.endswith(".logits")]:
            checks[f"{k}_vs_plain_max_abs_diff"] = maxdiff(ref[k], plain["logits"])
        interventions = {
            "ablate.l{L}h{H}.logits": "logits [n, vocab] with columns H*hd:(H+1)*hd of o_proj's input (z) of layer L set "
                                      "to 0 (forward pre-hook on o_proj); pairs (layer, head): "
                                      + ", ".join(f"({a}, {b})" for a, b in ABLATIONS),
            "dimzero.logits / dimzero.attn.{l} / dimzero.channels.{l}": "in every layer, for each kv head: "
                "c* = argmax_c |k[0, c]| of the key at position 0 after RoPE (RoPE is the identity at position 0) is set "
                "to 0 in that key only, before the scores; everything else unchanged. channels.{l} int64 [kv_heads] = c*",
        }

    # 6. write
    ref = {k: v.contiguous() for k, v in ref.items()}
    for k, v in ref.items():
        if v.dtype not in (torch.float32, torch.int64):
            raise RuntimeError(f"ref tensor {k} has dtype {v.dtype}")
    save_file(ref, os.path.join(d, "ref.safetensors"))

    layer_prefix = None
    for k in weights:
        if k.endswith("layers.0.self_attn.q_proj.weight"):
            layer_prefix = k[: -len("layers.0.self_attn.q_proj.weight")]
    prefixes = sorted({k.split(".")[0] for k in weights})
    std = float(ref["logits"].std())
    tol = {
        "logits": {"rel_l2": 1e-4, "atol": 1e-4 * max(1.0, float(ref["logits"].abs().max()))},
        "hidden": {"rel_l2": 1e-4}, "attn": {"atol": 1e-5 if save_dtype == torch.float32 else 1e-4},
        "q_k_v_z": {"rel_l2": 1e-4}, "intervention_logits": {"rel_l2": 1e-4},
        "greedy": "exact (see greedy_margin; min margin %.3g)" % min(margins),
        "note": "rel_l2 = |a - b|_2 / |b|_2 over the whole tensor; float32 math against float32 transformers on CPU "
                "usually agrees to ~1e-6",
    }
    if native_run is not None:
        e = checks[f"{spec['dtype']}_run_vs_f32math_rel_err"]
        key = "logits" if save_dtype == torch.bfloat16 else "logits_f16run"
        tol[key + " (16-bit run)"] = {"rel_l2": max(2e-2, 3 * e),
                                      "observed_rel_l2_vs_f32math": e}
        tol["logits_f32math"] = {"rel_l2": 1e-4}

    tensors = {}
    for k, v in sorted(ref.items()):
        tensors[k] = tensor_desc(v)
    what = {
        "input_ids": "int64 [n]: the input (first id 1, then random in [3, vocab))",
        "logits": ("float32 [n, vocab]: transformers run in bfloat16 (from_pretrained(dtype=bfloat16), eager), "
                   "upcast" if save_dtype == torch.bfloat16 else
                   "float32 [n, vocab]: the checkpoint's weights upcast to float32 (from_pretrained(dtype=float32)), "
                   "transformers eager in float32"),
        "logits_f32math": "16-bit checkpoints only: the same weights upcast to float32, float32 math (fresh rotary "
                          "inv_freq in float32)",
        "logits_f16run": "float16 checkpoint only: transformers run in float16 on CPU, upcast (absent if it failed)",
        "greedy_<dtype>run / _margin": "16-bit checkpoints only: greedy tokens of the 16-bit run",
        "hidden.{i}": f"float32 [n, hidden], i = 0..L (L = {L}) from output_hidden_states: hidden.0 = embedding "
                      "output = input of layer 0; hidden.i (0 < i < L) = output of layer i-1 (= input of layer i, "
                      "before any norm); hidden.L = output of layer L-1 AFTER the final norm (model.norm)",
        "attn.{l}": "float32 [heads, n, n]: post-softmax patterns from output_attentions (eager), causal",
        "q.{l}": "float32 [heads, n, head_dim]: queries after q_proj(+bias) and RoPE, before scaling",
        "k.{l}": "float32 [kv_heads, n, head_dim]: keys after k_proj(+bias) and RoPE (not repeated for GQA)",
        "v.{l}": "float32 [kv_heads, n, head_dim]: values after v_proj(+bias)",
        "z.{l}": "float32 [n, heads*head_dim]: input of o_proj (head h = columns h*hd:(h+1)*hd)",
        "greedy": f"int64 [{GREEDY_STEPS}]: greedy continuation of input_ids, float32 math, full recompute each step, "
                  "argmax of the last position (lowest id on ties), no EOS stop",
        "greedy_margin": f"float32 [{GREEDY_STEPS}]: top1 - top2 logit at each greedy step",
        "scaling": "attention scores are (q . k) * head_dim^-0.5 (see checks.scaling)",
    }
    tc = tcfg
    rope_params = getattr(tc, "rope_parameters", None) if tc is not None else None
    desc = {
        "name": name,
        "class": type(m32).__name__,
        "model_type": getattr(m32.config, "model_type", None),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "safetensors": SAFETENSORS_VERSION, "python": sys.version.split()[0]},
        "dims": {"vocab": VOCAB, "hidden": 64, "intermediate": 128, "layers": L, "heads": H, "kv_heads": KV,
                 "head_dim": hd, "rope_theta": spec["text"]["theta"], "rms_norm_eps": 1e-6, "tied": tied,
                 "attention_bias": bool(spec["text"].get("bias", spec["kind"] != "llama")),
                 "o_proj_bias": bool(spec["kind"] == "llama" and spec["text"].get("bias", False))},
        "rope_parameters_in_config": rope_params,
        "rotary_inv_freq_check": rope_found,
        "config_variant": variant,
        "config_variant_failures": variant_errors,
        "config_fixups": fix_notes,
        "saved_dtype": spec["dtype"],
        "save_pretrained_kwargs": save_kw,
        "weight_files": files,
        "weight_prefixes": prefixes,
        "decoder_weight_prefix": layer_prefix,
        "weights": weights,
        "weights_note": "names exactly as save_pretrained wrote them (read back from the safetensors headers): decoder "
                        f"layers are '{layer_prefix}layers.{{l}}....', top-level prefixes {prefixes}."
                        + (" A full Qwen2.5-Omni checkpoint (Qwen2_5OmniForConditionalGeneration) stores the thinker "
                           "under 'thinker.', e.g. thinker.model.layers.0...; this folder is the thinker alone."
                           if spec["kind"] == "omni" else ""),
        "weights_init": "every parameter 0.1*N(0,1) except 1-D norm weights 1+0.1*N(0,1) (biases random too)",
        "input_ids": ids,
        "n": len(ids),
        "reference_model": "from_pretrained(this folder, dtype=float32, attn_implementation='eager') on CPU, 1 thread, "
                           "TF32 off; input_ids with an all-ones attention_mask, use_cache=False",
        "text_only": spec["kind"] in ("omni", "vl"),
        "tensors": tensors,
        "what": what,
        "interventions": interventions,
        "tolerances_suggested": tol,
        "logits_std": std,
        "checks": checks,
        "warnings": warnings,
        "hidden_states_convention_source": (
            "transformers >= 4.55 (utils/generic.py check_model_inputs / output capturing): the first decoder layer's "
            "input is recorded once, then every layer's output; the last entry is then replaced by last_hidden_state "
            "(after model.norm). Older explicit loops (e.g. the Qwen2.5-Omni thinker text model) append each layer's "
            "input, then the norm output: same L+1 tensors. Verified here at run time against hooks: "
            "checks.hidden_vs_hooks_max_abs_diff"),
        "seconds": round(time.time() - t0, 1),
    }
    with open(os.path.join(d, "ref.json"), "w") as f:
        json.dump(jsonable(desc), f, indent=1)
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(d, "*")))
    log(f"  [{name}] ok: {len(ref)} tensors, {size / 1024:.0f} KiB, mechanism={mech}, greedy={toks}, "
        f"min margin={min(margins):.3g}, warnings={len(warnings)}")
    for w in warnings:
        log(f"  [{name}] WARNING: {w}")
    return dict(size=size, warnings=warnings)


def main(argv):
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    outdir = argv[1]
    os.makedirs(os.path.join(outdir, "models"), exist_ok=True)
    log(f"transformers {transformers.__version__}, torch {torch.__version__}, safetensors {SAFETENSORS_VERSION}")
    if not transformers.__version__.startswith("5."):
        log(f"WARNING: written for transformers 5.x, found {transformers.__version__}")
    for note in register_attention():
        log("attention:", note)
    only = set(os.environ.get("FIXTURES", "").split(",")) - {""}
    results = {}
    for spec in SPECS:
        if only and spec["name"] not in only:
            continue
        log(f"== {spec['name']}")
        CTL.reset()
        try:
            results[spec["name"]] = ("ok", make_fixture(outdir, spec))
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            sys.stdout.flush()
            results[spec["name"]] = ("FAILED", repr(e))
        finally:
            CTL.reset()
            # undo a patch left by a failure inside Recording
            for modname, fn in ORIG_EAGER.items():
                mod = sys.modules.get(modname)
                if mod is not None and getattr(mod, "eager_attention_forward", None) is fixture_attention:
                    mod.eager_attention_forward = fn
    total = 0
    for root, _, fs in os.walk(os.path.join(outdir, "models")):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in fs)
    log("\n==== summary ====")
    for name, (status, info) in results.items():
        if status == "ok":
            log(f"{name:20s} ok      {info['size'] / 1024:7.0f} KiB  warnings: {len(info['warnings'])}")
        else:
            log(f"{name:20s} FAILED  {info}")
    log(f"total {total / 1024 / 1024:.2f} MiB in {os.path.join(outdir, 'models')}")
    failed = [k for k, (s, _) in results.items() if s != "ok"]
    if failed:
        log("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
