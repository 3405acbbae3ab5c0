#!/usr/bin/env python3
"""Multimodal reference fixtures for outro (tests/test_omni.cpp), made with Hugging Face transformers.

Run on a machine with torch + transformers: `python3 tools/omni_fixtures.py OUTDIR`. Writes
OUTDIR/omni/<name>/ (config.json, model.safetensors, ref.safetensors, ref.json) for
  omni_mm  tiny random Qwen2_5OmniThinkerForConditionalGeneration (vision depth 2, audio 2 layers)
  vl_mm    tiny random Qwen2_5_VLForConditionalGeneration (vision depth 2)
and OUTDIR/omni/inputs.safetensors: the synthetic media both use (video frames and an image as
uint8 RGB, audio as int16 PCM at 16 kHz). The processors see exactly these arrays, so the C++ side
compares the processing math (normalisation, patchify, log-mel, placeholder expansion, positions),
not a decoder. Everything runs on CPU in float32.

ref.safetensors per model: pixel_values_videos / video_grid_thw / pixel_values / image_grid_thw,
input_features (valid frames only, [128, n]) for omni, the encoder outputs, and per prompt P:
P.prompt_ids (one placeholder per media item, as the chat template writes it), P.input_ids
(expanded by the processor's replace_multimodal_special_tokens), P.position_ids [3, n] and P.logits.
"""
import json
import os
import re
import sys
import types

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

torch.set_grad_enabled(False)

# Token ids of the tiny vocabulary (256): plain text characters map to 3 .. 192.
TOK = {"<|AUDIO|>": 240, "<|audio_bos|>": 241, "<|audio_eos|>": 242, "<|vision_bos|>": 243,
       "<|vision_eos|>": 244, "<|IMAGE|>": 245, "<|VIDEO|>": 246}
SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in TOK) + ")")
MINP, MAXP = 28 * 28 * 4, 28 * 28 * 1024
FPS = 2.0


def tokenize(text):
    ids = []
    for part in SPECIAL_RE.split(text):
        if part in TOK:
            ids.append(TOK[part])
        else:
            ids.extend(ord(c) % 190 + 3 for c in part)
    return ids


# ---------------------------------------------------------------- synthetic media
def make_media():
    rng = np.random.default_rng(1234)
    T, H, W = 6, 56, 84
    yy, xx = np.mgrid[0:H, 0:W]
    frames = []
    for t in range(T):
        f = np.zeros((H, W, 3), np.float64)
        f[..., 0] = 128 + 100 * np.sin(xx / 7.0 + t)
        f[..., 1] = 128 + 100 * np.cos(yy / 5.0 - 0.5 * t)
        f[..., 2] = (xx * 3 + yy * 2 + 40 * t) % 256
        f += rng.normal(0, 12, f.shape)
        frames.append(np.clip(np.round(f), 0, 255).astype(np.uint8))
    video = np.stack(frames)  # [T, H, W, 3]
    iy, ix = np.mgrid[0:56, 0:56]
    image = np.stack([(ix * 4) % 256, (iy * 4) % 256, ((ix + iy) * 2) % 256], -1).astype(np.float64)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    n = 35200  # 2.2 s at 16 kHz
    t = np.arange(n) / 16000.0
    wav = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t + 0.3) * (t > 0.7)
    wav += 0.02 * rng.normal(size=n)
    pcm = np.clip(np.round(wav * 32767), -32768, 32767).astype(np.int16)
    return video, image, pcm


# ---------------------------------------------------------------- processors
def call_with_sizes(proc, **kw):
    errors = []
    for extra in ({"size": {"shortest_edge": MINP, "longest_edge": MAXP}},
                  {"min_pixels": MINP, "max_pixels": MAXP}, {}):
        for more in ({"do_sample_frames": False}, {}):
            try:
                return proc(**kw, **extra, **more, return_tensors="pt")
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
    raise RuntimeError("processor call failed: " + " | ".join(errors))


def vision_inputs(video, image):
    ip = None
    for name in ("Qwen2VLImageProcessor", "Qwen2VLImageProcessorFast"):
        if hasattr(transformers, name):
            try:
                ip = getattr(transformers, name)()
                break
            except Exception as e:  # noqa: BLE001
                print(name, e)
    vp = transformers.Qwen2VLVideoProcessor()
    for p in (ip, vp):
        for k, v in (("min_pixels", MINP), ("max_pixels", MAXP)):
            try:
                setattr(p, k, v)
            except Exception:  # noqa: BLE001
                pass
        try:
            p.size = {"shortest_edge": MINP, "longest_edge": MAXP}
        except Exception:  # noqa: BLE001
            pass
    im = call_with_sizes(ip, images=[image])
    vi = call_with_sizes(vp, videos=[video])
    out = {"pixel_values": im["pixel_values"].float(), "image_grid_thw": im["image_grid_thw"].long(),
           "pixel_values_videos": vi["pixel_values_videos"].float(), "video_grid_thw": vi["video_grid_thw"].long()}
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]], out["image_grid_thw"]
    assert out["video_grid_thw"].tolist() == [[3, 4, 6]], out["video_grid_thw"]
    return out, {"image_processor": type(ip).__name__, "video_processor": type(vp).__name__}


def audio_inputs(pcm):
    fe = transformers.WhisperFeatureExtractor(feature_size=128)
    wav = pcm.astype(np.float32) / 32768.0
    a = fe(wav, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="pt")
    return {"input_features": a["input_features"].float(), "feature_attention_mask": a["attention_mask"].long()}


def expand(text, audio_lengths, image_grids, video_grids, use_audio_in_video):
    """The processor's own placeholder expansion, on a stand-in for the tokenizer."""
    P = transformers.Qwen2_5OmniProcessor
    fake = types.SimpleNamespace(
        audio_token="<|AUDIO|>", image_token="<|IMAGE|>", video_token="<|VIDEO|>",
        vision_bos_token="<|vision_bos|>", vision_eos_token="<|vision_eos|>",
        audio_bos_token="<|audio_bos|>", audio_eos_token="<|audio_eos|>",
        image_processor=types.SimpleNamespace(merge_size=2), video_processor=types.SimpleNamespace(merge_size=2, temporal_patch_size=2))
    fake.get_chunked_index = types.MethodType(P.get_chunked_index, fake)
    out = P.replace_multimodal_special_tokens(
        fake, [text], iter(np.array(audio_lengths, dtype=np.int64)), iter(np.array(image_grids, dtype=np.int64).reshape(-1, 3)),
        iter(np.array(video_grids, dtype=np.int64).reshape(-1, 3)),
        video_second_per_grid=iter([2 / FPS] * len(video_grids)), use_audio_in_video=use_audio_in_video,
        position_id_per_seconds=25, seconds_per_chunk=2.0)
    return out[0]


def expand_vl(ids, image_grids, video_grids):
    out, ii, vi = [], iter(image_grids), iter(video_grids)
    for t in ids:
        if t == TOK["<|IMAGE|>"]:
            g = next(ii)
            out += [t] * (int(np.prod(g)) // 4)
        elif t == TOK["<|VIDEO|>"]:
            g = next(vi)
            out += [t] * (int(np.prod(g)) // 4)
        else:
            out.append(t)
    return out


# ---------------------------------------------------------------- models
def randomize(m, seed):
    g = torch.Generator().manual_seed(seed)
    for name, p in m.named_parameters():
        r = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if "norm" in name or "ln_" in name:
            p.copy_((1.0 + 0.1 * r) if name.endswith("weight") else 0.1 * r)
        else:
            p.copy_(0.1 * r)


def eager(m):
    for cfg in [m.config] + [getattr(m.config, k) for k in ("text_config", "vision_config", "audio_config")
                             if hasattr(m.config, k)]:
        try:
            cfg._attn_implementation = "eager"
        except Exception:  # noqa: BLE001
            pass
    if hasattr(m, "set_attn_implementation"):
        try:
            m.set_attn_implementation("eager")
        except Exception as e:  # noqa: BLE001
            print("set_attn_implementation:", e)


TEXT = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, rms_norm_eps=1e-6, max_position_embeddings=1024, rope_theta=10000.0,
            rope_scaling={"rope_type": "default", "type": "default", "mrope_section": [2, 3, 3]})
VISION = dict(depth=2, hidden_size=24, intermediate_size=40, num_heads=2, out_hidden_size=32,
              fullatt_block_indexes=[1], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
              window_size=56)


def set_ids(cfg, pairs):
    for k, v in pairs.items():
        try:
            setattr(cfg, k, v)
        except Exception as e:  # noqa: BLE001
            print("config", k, e)


def build_omni():
    torch.manual_seed(0)
    audio = dict(d_model=24, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=48, num_mel_bins=128,
                 output_dim=32, max_source_positions=1500, n_window=25)
    ids = dict(audio_token_index=TOK["<|AUDIO|>"], audio_token_id=TOK["<|AUDIO|>"],
               image_token_index=TOK["<|IMAGE|>"], image_token_id=TOK["<|IMAGE|>"],
               video_token_index=TOK["<|VIDEO|>"], video_token_id=TOK["<|VIDEO|>"],
               audio_start_token_id=TOK["<|audio_bos|>"], audio_end_token_id=TOK["<|audio_eos|>"],
               vision_start_token_id=TOK["<|vision_bos|>"], vision_end_token_id=TOK["<|vision_eos|>"],
               position_id_per_seconds=25, seconds_per_chunk=2)
    try:
        cfg = transformers.Qwen2_5OmniThinkerConfig(text_config=dict(TEXT), vision_config=dict(VISION, in_channels=3),
                                                    audio_config=audio, **ids)
    except TypeError as e:
        print("thinker config with ids:", e)
        cfg = transformers.Qwen2_5OmniThinkerConfig(text_config=dict(TEXT), vision_config=dict(VISION, in_channels=3),
                                                    audio_config=audio)
    set_ids(cfg, ids)
    m = transformers.Qwen2_5OmniThinkerForConditionalGeneration(cfg)
    eager(m)
    m.eval()
    randomize(m, 11)
    return m, ids


def build_vl():
    torch.manual_seed(0)
    ids = dict(image_token_id=TOK["<|IMAGE|>"], video_token_id=TOK["<|VIDEO|>"],
               vision_start_token_id=TOK["<|vision_bos|>"], vision_end_token_id=TOK["<|vision_eos|>"])
    vis = dict(VISION, in_chans=3, in_channels=3, tokens_per_second=2)
    try:
        cfg = transformers.Qwen2_5_VLConfig(text_config=dict(TEXT), vision_config=vis, tie_word_embeddings=False, **ids)
    except TypeError as e:
        print("VL config with ids:", e)
        cfg = transformers.Qwen2_5_VLConfig(text_config=dict(TEXT), vision_config=vis, tie_word_embeddings=False)
    set_ids(cfg, ids)
    for sub in ("text_config",):
        if hasattr(cfg, sub):
            set_ids(getattr(cfg, sub), ids)
    m = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
    eager(m)
    m.eval()
    randomize(m, 12)
    return m, ids


def pick(out, width):
    """The tensor of an encoder's output with `width` columns (merged vision tokens / audio tokens)."""
    cands = []
    if torch.is_tensor(out):
        cands.append(out)
    for k in ("pooler_output", "last_hidden_state"):
        v = getattr(out, k, None)
        if torch.is_tensor(v):
            cands.append(v)
    if isinstance(out, (tuple, list)):
        cands += [v for v in out if torch.is_tensor(v)]
    for v in cands:
        if v.shape[-1] == width:
            return v.float().reshape(-1, width)
    raise RuntimeError(f"no output of width {width} in {type(out)}")


def capture_positions(text_model):
    """Hooks the decoder to record the position ids the model computed itself ([3, n])."""
    box = {}

    def fn(mod, args, kwargs):
        p = kwargs.get("position_ids")
        if p is not None:
            box["pos"] = p.detach().clone()
    h = text_model.register_forward_pre_hook(fn, with_kwargs=True)
    return box, h


def positions_of(box):
    p = box.get("pos")
    if p is None:
        return None
    if p.dim() == 3:
        p = p[-3:, 0, :]
    elif p.dim() == 2:
        p = p[0:1].expand(3, -1)
    return p.long().contiguous()


def save_model(m, ids, d):
    os.makedirs(d, exist_ok=True)
    m.save_pretrained(d)
    p = os.path.join(d, "config.json")
    cfg = json.load(open(p))
    cfg.update(ids)  # make sure the ids the model used are written
    if "vision_config" in cfg and "tokens_per_second" in cfg["vision_config"]:
        cfg["vision_config"]["tokens_per_second"] = 2
    json.dump(cfg, open(p, "w"), indent=2)
    for f in os.listdir(d):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(d, f))


def main():
    out = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "out", "omni")
    os.makedirs(out, exist_ok=True)
    video, image, pcm = make_media()
    save_file({"video": torch.from_numpy(video.copy()), "image": torch.from_numpy(image.copy()),
               "pcm": torch.from_numpy(pcm.copy())}, os.path.join(out, "inputs.safetensors"))
    vis, vis_desc = vision_inputs(video, image)
    aud = audio_inputs(pcm)
    n_valid = int(aud["feature_attention_mask"].sum())
    feat_len = torch.tensor([n_valid])
    a_tokens = ((n_valid - 1) // 2 + 1 - 2) // 2 + 1
    spg = torch.tensor([2 / FPS])
    desc = {"transformers": transformers.__version__, "torch": torch.__version__, **vis_desc,
            "min_pixels": MINP, "max_pixels": MAXP, "fps": FPS, "audio_frames": n_valid, "audio_tokens": a_tokens,
            "tokens": TOK, "prompts": {}}

    # ---- Qwen2.5-Omni thinker
    m, ids = build_omni()
    d = os.path.join(out, "omni_mm")
    save_model(m, ids, d)
    ref = {k: v for k, v in vis.items()}
    ref["input_features"] = aud["input_features"][0, :, :n_valid].contiguous()
    width = m.config.text_config.hidden_size
    ref["video_embeds"] = pick(m.visual(vis["pixel_values_videos"], grid_thw=vis["video_grid_thw"]), width)
    ref["image_embeds"] = pick(m.visual(vis["pixel_values"], grid_thw=vis["image_grid_thw"]), width)
    ref["audio_embeds"] = pick(m.get_audio_features(aud["input_features"], feature_attention_mask=aud["feature_attention_mask"]), width)
    d_desc = dict(desc)
    d_desc["class"] = type(m).__name__
    prompts = {
        # the video's own audio (TMRoPE interleaving) and an image
        "av": ("Q:<|vision_bos|><|VIDEO|><|vision_eos|>+<|vision_bos|><|IMAGE|><|vision_eos|> what?\nA:", True),
        # a video without its audio, a separate audio clip
        "va": ("Q:<|vision_bos|><|VIDEO|><|vision_eos|><|audio_bos|><|AUDIO|><|audio_eos|> hm?\nA:", False),
    }
    for name, (text, uav) in prompts.items():
      try:
        full = expand(text, [a_tokens], vis["image_grid_thw"].tolist() if "IMAGE" in text else [],
                      vis["video_grid_thw"].tolist(), uav)
        input_ids = torch.tensor([tokenize(full)])
        mask = torch.ones_like(input_ids)
        kw = dict(input_ids=input_ids, attention_mask=mask, input_features=aud["input_features"],
                  feature_attention_mask=aud["feature_attention_mask"], pixel_values_videos=vis["pixel_values_videos"],
                  video_grid_thw=vis["video_grid_thw"], use_audio_in_video=uav, video_second_per_grid=spg)
        if "IMAGE" in text:
            kw.update(pixel_values=vis["pixel_values"], image_grid_thw=vis["image_grid_thw"])
        box, hook = capture_positions(m.model)
        logits = m(**kw, use_cache=False).logits[0].float()
        hook.remove()
        pos = positions_of(box)
        if pos is not None:
            ref[name + ".position_ids"] = pos
        ref[name + ".prompt_ids"] = torch.tensor(tokenize(text), dtype=torch.int64)
        ref[name + ".input_ids"] = input_ids[0].long()
        ref[name + ".logits"] = logits.contiguous()
        d_desc["prompts"][name] = {"text": text, "use_audio_in_video": uav, "expanded": full, "n": input_ids.shape[1]}
      except Exception:  # noqa: BLE001
        import traceback
        traceback.print_exc()
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, "ref.safetensors"))
    json.dump(d_desc, open(os.path.join(d, "ref.json"), "w"), indent=1)
    print("omni ok", {k: tuple(v.shape) for k, v in ref.items()})

    # ---- Qwen2.5-VL
    m, ids = build_vl()
    d = os.path.join(out, "vl_mm")
    save_model(m, ids, d)
    ref = {}
    width = m.config.text_config.hidden_size
    visual = m.model.visual if hasattr(m, "model") and hasattr(m.model, "visual") else m.visual
    ref["video_embeds"] = pick(visual(vis["pixel_values_videos"], grid_thw=vis["video_grid_thw"]), width)
    ref["image_embeds"] = pick(visual(vis["pixel_values"], grid_thw=vis["image_grid_thw"]), width)
    text = "Q:<|vision_bos|><|IMAGE|><|vision_eos|>,<|vision_bos|><|VIDEO|><|vision_eos|> what?\nA:"
    prompt = tokenize(text)
    full = expand_vl(prompt, vis["image_grid_thw"].tolist(), vis["video_grid_thw"].tolist())
    input_ids = torch.tensor([full])
    mask = torch.ones_like(input_ids)
    kw = dict(input_ids=input_ids, attention_mask=mask, pixel_values=vis["pixel_values"],
              image_grid_thw=vis["image_grid_thw"], pixel_values_videos=vis["pixel_values_videos"],
              video_grid_thw=vis["video_grid_thw"], second_per_grid_ts=spg)
    import inspect
    if "mm_token_type_ids" in inspect.signature(m.forward).parameters:
        # transformers 5 computes the 3-D positions from the processor's token types (1 image, 2 video)
        kw["mm_token_type_ids"] = ((input_ids == TOK["<|IMAGE|>"]).int() + 2 * (input_ids == TOK["<|VIDEO|>"]).int())
    lm = m.model.language_model if hasattr(m.model, "language_model") else m.model
    box, hook = capture_positions(lm)
    logits = m(**kw, use_cache=False).logits[0].float()
    hook.remove()
    pos = positions_of(box)
    if pos is not None:
        ref["iv.position_ids"] = pos
    ref["iv.prompt_ids"] = torch.tensor(prompt, dtype=torch.int64)
    ref["iv.input_ids"] = input_ids[0].long()
    ref["iv.logits"] = logits.contiguous()
    v_desc = dict(desc)
    v_desc["class"] = type(m).__name__
    v_desc["prompts"] = {"iv": {"text": text, "use_audio_in_video": False, "n": len(full)}}
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, "ref.safetensors"))
    json.dump(v_desc, open(os.path.join(d, "ref.json"), "w"), indent=1)
    print("vl ok", {k: tuple(v.shape) for k, v in ref.items()})


if __name__ == "__main__":
    import traceback
    try:
        main()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
