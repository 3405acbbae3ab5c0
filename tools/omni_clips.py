#!/usr/bin/env python3
"""Synthetic audio-visual clips and questions for outro's omni demo model (tools/train_omni_demo.py).

Each clip is a 2-second mp4 made with the ffmpeg CLI, the way users' media is made: a coloured shape
(circle, square or triangle) that appears at time t1 and moves left/right/up/down over a grey
background (56x56, 10 fps, H.264), and an AAC track (16 kHz mono) with a steady tone, k beeps or
silence that starts at time t2. Some clips have no shape at all. Questions need the video, the audio
or both: colour, direction, shape, is there a shape, what is heard, how many beeps, is the sounding
object visible, does the sound start when the shape appears.

Every clip is then decoded again with ffmpeg into what the model's processors take, the way the
engine's media path (src/media, qwen-vl-utils' rules) takes a user's file: 4 frames at 2 fps, indices
round(linspace(0, n - 1, 4)) of the n = 20 decoded frames (0, 6, 13, 19), rgb24 56x56 converted with the
engine's scaler flags (SWS_FLAGS below: the engine's pixels exactly), and the whole audio track as 16 kHz
mono s16le (AAC: 2.048 s = 32768 samples, 205 mel frames, 51 audio tokens). The committed
models/outro-omni-demo was trained on a pack whose frames came from the command's default conversion
(up to 40 of 255 off the engine's at colour edges); every other choice was as now.

    python3 tools/omni_clips.py [--out out/omni] [--train 3000] [--heldout 200] [--seed 8] [--jobs 2]
    python3 tools/omni_clips.py --heldout-only --bench-dir DIR   # held-out clips + bench.jsonl only

Writes OUT/pack.bin (zlib-compressed frame blocks, de-duplicated audio blocks), OUT/index.json
(clip attributes, where each block is, the held-out questions), OUT/bench.jsonl + OUT/clips/*.mp4
(held-out benchmark in `outro eval`'s format). Pure Python + ffmpeg; deterministic for a given seed
and ffmpeg build (x264 runs single-threaded).
"""
import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zlib

SIZE = 56          # frame side (px): 2x2 merged vision tokens per temporal patch (patch 14, merge 2)
FPS = 10           # the mp4's frame rate
SAMPLE_FPS = 2     # frames the model sees per second
DURATION = 2.0     # seconds
SR = 16000         # audio sample rate
OBJ = 16           # shape size (px)
SPEED = 16.0       # px per second

COLOURS = {"red": "0xE02020", "green": "0x20C020", "blue": "0x2040F0", "yellow": "0xF0E020",
           "white": "0xF0F0F0", "purple": "0xA030D0"}
SHAPES = ["circle", "square", "triangle"]
DIRS = ["left", "right", "up", "down"]
TIMES = [0.0, 0.5, 1.0]
TONES = [440, 660, 880]
SOUND_OPTIONS = ["a steady tone", "beeps", "silence"]
BEEP_HZ, BEEP_ON, BEEP_PERIOD = 1000, 0.12, 0.25
CATEGORY = {"colour": "video", "direction": "video", "shape": "video", "present": "video", "colour_yn": "video",
            "sound": "audio", "beeps": "audio", "visible": "audio-visual", "sync": "audio-visual"}
TASKS = list(CATEGORY)


def make_scene(rng):
    """Attributes of one clip."""
    s = {"present": rng.random() >= 0.15, "colour": rng.choice(sorted(COLOURS)), "shape": rng.choice(SHAPES),
         "dir": rng.choice(DIRS), "t1": rng.choice(TIMES), "bg": rng.choice(range(24, 80, 8))}
    r = rng.random()
    s["sound"] = "tone" if r < 0.4 else ("beeps" if r < 0.8 else "silence")
    s["freq"] = rng.choice(TONES) if s["sound"] == "tone" else 0
    s["beeps"] = rng.randint(1, 4) if s["sound"] == "beeps" else 0
    if s["sound"] == "silence":
        s["t2"] = 0.0
    elif s["present"] and rng.random() < 0.5:
        s["t2"] = s["t1"]
    else:
        s["t2"] = rng.choice(TIMES)
    lo, hi = 0, SIZE - OBJ - int(SPEED * DURATION)  # start range along the motion (0..8)
    along = rng.randint(lo, hi) if s["dir"] in ("right", "down") else rng.randint(SIZE - OBJ - hi, SIZE - OBJ)
    across = rng.randint(2, SIZE - OBJ - 2)
    s["x0"], s["y0"] = (along, across) if s["dir"] in ("left", "right") else (across, along)
    return s


def scene_key(s):
    return json.dumps(s, sort_keys=True)


def _shape_alpha(shape):
    c = (OBJ - 1) / 2
    if shape == "circle":
        return f"if(lte(hypot(X-{c},Y-{c}),{OBJ / 2}),255,0)"
    if shape == "triangle":  # apex up, base at the bottom
        return f"if(lte(abs(X-{c})*2,Y+1),255,0)"
    return "255"


def ffmpeg_make(s, path):
    """Writes the clip's mp4."""
    d = DURATION
    bg = "0x" + ("%02X" % s["bg"]) * 3
    vx = {"left": -SPEED, "right": SPEED}.get(s["dir"], 0.0)
    vy = {"up": -SPEED, "down": SPEED}.get(s["dir"], 0.0)
    if s["sound"] == "tone":
        expr = f"if(gte(t,{s['t2']}),0.5*sin(2*PI*{s['freq']}*t),0)"
    elif s["sound"] == "beeps":
        t2, k = s["t2"], s["beeps"]
        expr = (f"if(gte(t,{t2})*lt(t,{t2}+{k}*{BEEP_PERIOD})*lt(mod(t-{t2},{BEEP_PERIOD}),{BEEP_ON}),"
                f"0.5*sin(2*PI*{BEEP_HZ}*t),0)")
    else:
        expr = "0"
    args = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error",
            "-f", "lavfi", "-i", f"color=c={bg}:s={SIZE}x{SIZE}:r={FPS}:d={d}"]
    if s["present"]:
        col = COLOURS[s["colour"]]
        args += ["-f", "lavfi", "-i",
                 f"color=c={col}:s={OBJ}x{OBJ}:r={FPS}:d={d},format=rgba,"
                 f"geq=r='r(X,Y)':g='g(X,Y)':b='b(X,Y)':a='{_shape_alpha(s['shape'])}'"]
        ov = (f"[0][1]overlay=x='{s['x0']}+({vx})*t':y='{s['y0']}+({vy})*t':enable='gte(t,{s['t1']})',"
              f"format=yuv420p[v]")
        ain = "2"
    else:
        ov = "[0]format=yuv420p[v]"
        ain = "1"
    args += ["-f", "lavfi", "-i", f"aevalsrc='{expr}':s={SR}:d={d}",
             "-filter_complex", ov, "-map", "[v]", "-map", ain,
             "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-threads", "1", "-g", "20",
             "-c:a", "aac", "-b:a", "24k", "-ac", "1", "-ar", str(SR), "-t", str(d),
             "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", path]
    subprocess.run(args, check=True)


# the engine's RGB conversion (src/media/media.cpp: SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT): with
# these flags the ffmpeg command gives the engine's pixels byte for byte (tests/test_media.cpp checks it); the
# command's default conversion differs by up to 40 of 255 at colour edges, which a model trained on it pays for
# through the engine (run J of models/outro-omni-demo/other_runs.json: 92.9% on the pack, 69.2% through the engine)
SWS_FLAGS = "bicubic+accurate_rnd+full_chroma_int"


def ffmpeg_decode(path):
    """(frames: bytes of n x SIZE x SIZE x 3 at SAMPLE_FPS, audio: bytes s16le mono SR, the whole track)."""
    with tempfile.TemporaryDirectory() as td:
        v, a = os.path.join(td, "v.raw"), os.path.join(td, "a.raw")
        subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", path,
                        "-map", "0:v", "-vf", "scale=flags=" + SWS_FLAGS + ",format=rgb24", "-f", "rawvideo", v,
                        "-map", "0:a", "-f", "s16le", "-ac", "1", "-ar", str(SR), a], check=True)
        vb, ab = open(v, "rb").read(), open(a, "rb").read()
    fr = SIZE * SIZE * 3
    n = len(vb) // fr
    want = int(DURATION * SAMPLE_FPS)
    if n < want:
        raise RuntimeError(f"{path}: {n} frames decoded")
    # torch.linspace(0, n - 1, want).round() (half to even, as Python's round), what qwen-vl-utils and
    # src/media/vision_process.cpp pick
    idx = [round(i * (n - 1) / (want - 1)) for i in range(want)]
    frames = b"".join(vb[i * fr:(i + 1) * fr] for i in idx)
    return frames, ab


# ------------------------------------------------------------------ questions

def _mc(answer, pool):
    """Every value of the attribute, always in the same order: the letter is a fixed function of the
    answer, so the benchmark measures perception rather than matching an option's text to its letter (a
    model of this size, trained for minutes, did not learn that matching with shuffled subsets: the
    committed model of 2026-11-22 answered at chance even with the clip described in words)."""
    opts = list(pool)
    return opts, "ABCDEFGH"[opts.index(answer)]


def question(s, task, rng):
    """One question of `task` about scene s: (question, options, answer letter or yes/no), or None."""
    yn = ["yes", "no"]
    if task == "colour" and s["present"]:
        o, a = _mc(s["colour"], sorted(COLOURS))
        return "What colour is the shape?", o, a
    if task == "direction" and s["present"]:
        o, a = _mc(s["dir"], DIRS)
        return "Which direction does the shape move?", o, a
    if task == "shape" and s["present"]:
        o, a = _mc(s["shape"], SHAPES)
        return "What shape is it?", o, a
    if task == "present":
        return "Is there a shape in the video?", yn, "yes" if s["present"] else "no"
    if task == "colour_yn" and s["present"]:
        c = s["colour"] if rng.random() < 0.5 else rng.choice([c for c in sorted(COLOURS) if c != s["colour"]])
        return f"Is the shape {c}?", yn, "yes" if c == s["colour"] else "no"
    if task == "sound":
        heard = {"tone": "a steady tone", "beeps": "beeps", "silence": "silence"}[s["sound"]]
        o, a = _mc(heard, SOUND_OPTIONS)
        return "What do you hear?", o, a
    if task == "beeps" and s["sound"] == "beeps":
        o, a = _mc(str(s["beeps"]), ["1", "2", "3", "4"])
        return "How many beeps do you hear?", o, a
    if task == "visible" and s["sound"] != "silence":
        return "Is the sounding object visible?", yn, "yes" if s["present"] else "no"
    if task == "sync" and s["present"] and s["sound"] != "silence":
        return "Does the sound start when the shape appears?", yn, "yes" if s["t1"] == s["t2"] else "no"
    return None


def prompt_text(q, options):
    """The text `outro eval` builds for an item (src/eval/prompt.cpp), without the media slots."""
    if options == ["yes", "no"]:
        return f"Question: {q}" + ("" if "yes or no" in q else " Answer yes or no.")
    return f"Question: {q} Options:" + "".join(f" {'ABCDEFGH'[i]}. {o}" for i, o in enumerate(options))


def describe(s):
    """A sentence describing the clip (used as text-only training data)."""
    if s["present"]:
        v = f"A {s['colour']} {s['shape']} appears at {s['t1']:g} seconds and moves {s['dir']}."
    else:
        v = "The video shows an empty grey background."
    if s["sound"] == "tone":
        a = f" A steady tone starts at {s['t2']:g} seconds."
    elif s["sound"] == "beeps":
        a = f" {s['beeps']} beep{'s' if s['beeps'] > 1 else ''} start at {s['t2']:g} seconds."
    else:
        a = " There is silence."
    return v + a


# ------------------------------------------------------------------ main

def _render(job):
    s, path, keep = job
    ffmpeg_make(s, path)
    frames, audio = ffmpeg_decode(path)
    size = os.path.getsize(path)
    if not keep:
        os.remove(path)
    return frames, audio, size


def scenes(seed, n_train, n_held):
    rng = random.Random(seed)
    train, seen = [], set()
    while len(train) < n_train:
        s = make_scene(rng)
        train.append(s)
        seen.add(scene_key(s))
    rng_h = random.Random(seed + 1)
    held = []
    while len(held) < n_held:
        s = make_scene(rng_h)
        if scene_key(s) not in seen:  # held-out clips are never training clips
            held.append(s)
            seen.add(scene_key(s))
    return train, held


def heldout_items(held, seed):
    rng = random.Random(seed + 2)
    items = []
    for i, s in enumerate(held):
        for task in TASKS:
            q = question(s, task, rng)
            if q is None:
                continue
            text, opts, ans = q
            items.append({"id": f"omni-{i:04d}-{task}", "media": {"video": f"clips/h{i:04d}.mp4"},
                          "question": text, "options": opts, "answer": ans, "task": task,
                          "category": CATEGORY[task]})
    return items


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/omni")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--heldout-only", action="store_true", help="only the held-out clips and bench.jsonl")
    ap.add_argument("--bench-dir", default=None, help="where bench.jsonl and clips/ go (default: --out)")
    args = ap.parse_args()
    if not shutil.which("ffmpeg"):
        sys.exit("ffmpeg not found on PATH")
    train, held = scenes(args.seed, args.train, args.heldout)
    bench_dir = args.bench_dir or args.out
    os.makedirs(os.path.join(bench_dir, "clips"), exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    items = heldout_items(held, args.seed)
    with open(os.path.join(bench_dir, "bench.jsonl"), "w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    tmp = tempfile.mkdtemp(prefix="omni_clips_")
    jobs = [(s, os.path.join(bench_dir, "clips", f"h{i:04d}.mp4"), True) for i, s in enumerate(held)]
    if not args.heldout_only:
        jobs += [(s, os.path.join(tmp, f"t{i:05d}.mp4"), False) for i, s in enumerate(train)]
    index = {"size": SIZE, "fps": FPS, "sample_fps": SAMPLE_FPS, "duration": DURATION, "sample_rate": SR,
             "frames": int(DURATION * SAMPLE_FPS), "seed": args.seed, "clips": [], "audio": [],
             "heldout_items": items, "tasks": CATEGORY}
    audio_ids = {}
    mp4_bytes = 0
    with open(os.path.join(args.out, "pack.bin"), "wb") as pack, cf.ThreadPoolExecutor(args.jobs) as ex:
        for k, (job, (frames, audio, size)) in enumerate(zip(jobs, ex.map(_render, jobs))):
            s = job[0]
            mp4_bytes += size
            h = hashlib.sha1(audio).hexdigest()
            if h not in audio_ids:
                off = pack.tell()
                blob = zlib.compress(audio, 6)
                pack.write(blob)
                audio_ids[h] = len(index["audio"])
                index["audio"].append({"offset": off, "length": len(blob), "sha1": h})
            off = pack.tell()
            blob = zlib.compress(frames, 6)
            pack.write(blob)
            split = "heldout" if k < len(held) else "train"
            num = k if split == "heldout" else k - len(held)
            index["clips"].append({"id": (f"h{num:04d}" if split == "heldout" else f"t{num:05d}"), "split": split,
                                   "scene": s, "video": {"offset": off, "length": len(blob)},
                                   "audio": audio_ids[h], "mp4_bytes": size})
            if (k + 1) % 250 == 0:
                print(f"{k + 1}/{len(jobs)} clips", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f)
    psize = os.path.getsize(os.path.join(args.out, "pack.bin"))
    print(f"{len(jobs)} clips ({len(held)} held-out), {len(index['audio'])} distinct audio tracks, "
          f"pack {psize / 1e6:.1f} MB, mp4 {mp4_bytes / 1e6:.1f} MB, {len(items)} held-out questions", flush=True)


if __name__ == "__main__":
    main()
