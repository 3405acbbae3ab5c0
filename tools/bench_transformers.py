#!/usr/bin/env python3
"""The same model as bench/bench_cuda.cpp in transformers on the same GPU, for comparison.

Builds a Qwen2 decoder shaped like the Qwen2.5-Omni-7B thinker (hidden 3584, 28 layers, 28 heads,
4 KV heads, intermediate 18944, vocab 152064, untied) from a config with random bf16 weights,
directly on the GPU (nothing is downloaded), and times, for each attention implementation (sdpa,
eager):
  - decode at batch 1 with the KV cache (after a short prompt; greedy next token on the GPU),
  - prefill of long prompts (logits of the last row only).
Prints a table and, with --json FILE, writes the figures. With --ours FILE (bench_cuda --json) it
also prints our speed over theirs.

    python3 tools/bench_transformers.py [--layers 28] [--prompt 128] [--decode 64]
                                        [--prefill 4096,16384] [--impl sdpa,eager] [--json F] [--ours F]
"""
import argparse
import json
import statistics
import sys
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def build(layers):
    cfg = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=layers,
                      num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                      max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        try:
            m = Qwen2ForCausalLM._from_config(cfg, dtype=torch.bfloat16)
        except TypeError:
            m = Qwen2ForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16)
    return m.eval()


def set_impl(model, impl):
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl


@torch.inference_mode()
def decode_speed(model, prompt, steps, reps):
    V = model.config.vocab_size
    times = []
    for r in range(reps + 1):
        ids = torch.randint(0, V, (1, prompt), device="cuda")
        out = model(ids, use_cache=True, logits_to_keep=1)
        pkv, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            out = model(nxt, past_key_values=pkv, use_cache=True)
            pkv, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        if r:
            times.append((time.perf_counter() - t) / steps)
    return 1 / statistics.median(times)


@torch.inference_mode()
def prefill_speed(model, n, reps):
    V = model.config.vocab_size
    ids = torch.randint(0, V, (1, n), device="cuda")
    times = []
    for r in range(reps + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        out.logits.float().sum().item()
        del out
        torch.cuda.synchronize()
        if r:
            times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--prefill", default="4096,16384")
    ap.add_argument("--impl", default="sdpa,eager")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--ours")
    a = ap.parse_args()
    import transformers
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "transformers": transformers.__version__, "impl": {}}
    t = time.perf_counter()
    model = build(a.layers)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {res['gpu']}: "
          f"model built on the GPU in {time.perf_counter() - t:.1f} s", flush=True)
    for impl in a.impl.split(","):
        set_impl(model, impl)
        r = {}
        r["decode_tok_s"] = decode_speed(model, a.prompt, a.decode, a.reps)
        print(f"  {impl}: decode {r['decode_tok_s']:.1f} tok/s", flush=True)
        for n in [int(x) for x in a.prefill.split(",") if x]:
            try:
                r[f"prefill_{n}_tok_s"] = prefill_speed(model, n, 1)
                print(f"  {impl}: prefill {n}: {r[f'prefill_{n}_tok_s']:.0f} tok/s", flush=True)
            except torch.cuda.OutOfMemoryError:
                r[f"prefill_{n}_tok_s"] = None
                print(f"  {impl}: prefill {n}: out of GPU memory", flush=True)
            torch.cuda.empty_cache()
        res["impl"][impl] = r
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    if a.ours:
        ours = json.load(open(a.ours))
        print("\n| | ours | " + " | ".join(res["impl"]) + " | ours / " + " | ours / ".join(res["impl"]) + " |")
        print("|---" * (2 + 2 * len(res["impl"])) + "|")
        rows = [("decode tok/s", ours["decode_tok_s"], "decode_tok_s")]
        for n, v in ours.get("prefill", {}).items():
            rows.append((f"prefill {n} tok/s", v["tok_s"], f"prefill_{n}_tok_s"))
        for label, o, key in rows:
            th = [res["impl"][i].get(key) for i in res["impl"]]
            cells = [f"{x:.1f}" if x else "OOM" for x in th]
            ratios = [f"{o / x:.2f}x" if x else "-" for x in th]
            print(f"| {label} | {o:.1f} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    sys.exit(main())
