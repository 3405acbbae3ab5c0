#!/usr/bin/env python3
"""The item of bench/bench_item.cpp in transformers on the same GPU: a Qwen2.5-Omni thinker of the
3B or 7B shape (random bf16 weights built on the GPU, sdpa), a 640x360 clip of 10 s or 60 s with its
own audio: the same pixel-value and log-mel shapes as bench_item (grid t x 26 x 46, 100 mel frames a
second up to 30 s), the prompt expanded by the Qwen2.5-Omni processor's own placeholder code
(use_audio_in_video, TMRoPE interleaving), times:
  - the vision tower (model.visual), the audio tower (get_audio_features),
  - the whole item: one forward with the media, the last row's logits (the one generated token).
With --ours FILE (bench_item --json) it prints our time over theirs per stage.

    python3 tools/bench_transformers_item.py [--shape 7b|3b] [--clips 10,60] [--reps 2] [--json F] [--ours F]
"""
import argparse
import json
import statistics
import sys
import time
import types

import numpy as np
import torch
import transformers

SHAPES = {
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936),
}
TOK = {"<|AUDIO|>": 151646, "<|audio_bos|>": 151647, "<|audio_eos|>": 151648, "<|IMAGE|>": 151655,
       "<|VIDEO|>": 151656, "<|vision_bos|>": 151652, "<|vision_eos|>": 151653}


def build(shape):
    text = dict(SHAPES[shape], rms_norm_eps=1e-6, max_position_embeddings=32768, rope_theta=1e6,
                rope_scaling={"rope_type": "default", "type": "default", "mrope_section": [16, 24, 24]})
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3,
                  out_hidden_size=text["hidden_size"], fullatt_block_indexes=[7, 15, 23, 31], patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, hidden_act="silu")
    audio = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128,
                 output_dim=text["hidden_size"], max_source_positions=1500, n_window=100)
    ids = dict(audio_token_index=TOK["<|AUDIO|>"], audio_token_id=TOK["<|AUDIO|>"],
               image_token_index=TOK["<|IMAGE|>"], image_token_id=TOK["<|IMAGE|>"],
               video_token_index=TOK["<|VIDEO|>"], video_token_id=TOK["<|VIDEO|>"],
               audio_start_token_id=TOK["<|audio_bos|>"], audio_end_token_id=TOK["<|audio_eos|>"],
               vision_start_token_id=TOK["<|vision_bos|>"], vision_end_token_id=TOK["<|vision_eos|>"],
               position_id_per_seconds=25, seconds_per_chunk=2)
    try:
        cfg = transformers.Qwen2_5OmniThinkerConfig(text_config=text, vision_config=vision, audio_config=audio, **ids)
    except TypeError:
        cfg = transformers.Qwen2_5OmniThinkerConfig(text_config=text, vision_config=vision, audio_config=audio)
    for k, v in ids.items():
        try:
            setattr(cfg, k, v)
        except Exception:  # noqa: BLE001
            pass
    torch.manual_seed(0)
    cls = transformers.Qwen2_5OmniThinkerForConditionalGeneration
    with torch.device("cuda"):
        try:
            m = cls._from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
        except TypeError:
            m = cls._from_config(cfg, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    return m.eval()


def expand(text, audio_tokens, video_grid, second_per_grid):
    """The processor's placeholder expansion (replace_multimodal_special_tokens) on a stand-in tokenizer."""
    P = transformers.Qwen2_5OmniProcessor
    fake = types.SimpleNamespace(
        audio_token="<|AUDIO|>", image_token="<|IMAGE|>", video_token="<|VIDEO|>",
        vision_bos_token="<|vision_bos|>", vision_eos_token="<|vision_eos|>",
        audio_bos_token="<|audio_bos|>", audio_eos_token="<|audio_eos|>",
        image_processor=types.SimpleNamespace(merge_size=2),
        video_processor=types.SimpleNamespace(merge_size=2, temporal_patch_size=2))
    fake.get_chunked_index = types.MethodType(P.get_chunked_index, fake)
    out = P.replace_multimodal_special_tokens(
        fake, [text], iter(np.array([audio_tokens], dtype=np.int64)), iter(np.zeros((0, 3), dtype=np.int64)),
        iter(np.array([video_grid], dtype=np.int64)), video_second_per_grid=iter([second_per_grid]),
        use_audio_in_video=True, position_id_per_seconds=25, seconds_per_chunk=2.0)
    return out[0]


def tokenize(s):
    """Special tokens to their ids, every other character to an ordinary id."""
    ids, i = [], 0
    specials = sorted(TOK, key=len, reverse=True)
    while i < len(s):
        for t in specials:
            if s.startswith(t, i):
                ids.append(TOK[t])
                i += len(t)
                break
        else:
            ids.append(1000 + ord(s[i]) % 5000)
            i += 1
    return ids


def timed(fn, reps):
    times = []
    for r in range(reps + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if r:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.inference_mode()
def item(m, secs, reps):
    gt = int(secs)  # temporal groups: 2 frames a second, 2 frames a group
    grid = [gt, 26, 46]
    patches = gt * 26 * 46
    frames = int(min(secs, 30) * 100)
    g = torch.Generator(device="cuda").manual_seed(1)
    px = torch.rand(patches, 1176, device="cuda", generator=g, dtype=torch.float32).mul_(2).sub_(1).to(torch.bfloat16)
    thw = torch.tensor([grid], device="cuda")
    feats = torch.rand(1, 128, frames, device="cuda", generator=g).mul_(0.5).to(torch.bfloat16)
    fmask = torch.ones(1, frames, dtype=torch.long, device="cuda")
    a_tokens = ((frames - 1) // 2 + 1 - 2) // 2 + 1
    text = ("<|im_start|>system\n" + "x" * 20 + "<|im_end|>\n<|im_start|>user\n<|vision_bos|><|VIDEO|><|vision_eos|>"
            + "q" * 60 + "<|im_end|>\n<|im_start|>assistant\n")
    full = expand(text, a_tokens, grid, 1.0)
    input_ids = torch.tensor([tokenize(full)], device="cuda")
    n = input_ids.shape[1]
    spg = torch.tensor([1.0], device="cuda")
    kw = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), input_features=feats,
              feature_attention_mask=fmask, pixel_values_videos=px, video_grid_thw=thw, use_audio_in_video=True,
              video_second_per_grid=spg, use_cache=False)
    try:
        m(**kw, logits_to_keep=1)
        kw["logits_to_keep"] = 1
    except TypeError:
        pass
    t_vision = timed(lambda: m.visual(px, grid_thw=thw), reps)
    t_audio = timed(lambda: m.get_audio_features(feats, feature_attention_mask=fmask), reps)
    t_item = timed(lambda: m(**kw).logits[:, -1].argmax(-1), reps)
    return {"seconds": secs, "prompt_tokens": n, "vision_s": t_vision, "audio_s": t_audio, "item_s": t_item,
            "prefill_s": t_item - t_vision - t_audio}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    ap.add_argument("--clips", default="10,60")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--ours")
    a = ap.parse_args()
    t = time.perf_counter()
    m = build(a.shape)
    gpu = torch.cuda.get_device_name(0)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {gpu}: Qwen2.5-Omni-{a.shape} thinker "
          f"built on the GPU in {time.perf_counter() - t:.1f} s (bf16, sdpa)", flush=True)
    res = {"gpu": gpu, "transformers": transformers.__version__, "shape": a.shape, "clips": []}
    for c in a.clips.split(","):
        r = item(m, float(c), a.reps)
        res["clips"].append(r)
        print(f"  {c} s clip ({r['prompt_tokens']} tokens): vision {r['vision_s']:.4f} s, audio {r['audio_s']:.4f} s, "
              f"whole item {r['item_s']:.4f} s (prefill + token ~{r['prefill_s']:.4f} s)", flush=True)
        torch.cuda.empty_cache()
    if a.json:
        json.dump(res, open(a.json, "w"), indent=2)
    if a.ours:
        ours = {round(c["seconds"]): c for c in json.load(open(a.ours))["clips"]}
        print("\n| clip | stage | ours s | transformers s | ours faster by |\n|---|---|---|---|---|")
        for r in res["clips"]:
            o = ours.get(round(r["seconds"]))
            if not o:
                continue
            base = next(s for s in o["strategies"] if s["name"] == "baseline")
            rows = [("vision tower", o["vision_s"], r["vision_s"]), ("audio tower", o["audio_s"], r["audio_s"]),
                    ("prefill + token", base["prefill_s"], r["prefill_s"]), ("whole item", base["item_s"], r["item_s"])]
            for name, x, y in rows:
                print(f"| {r['seconds']:.0f} s | {name} | {x:.4f} | {y:.4f} | {y / x:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
