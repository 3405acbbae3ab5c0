#!/usr/bin/env python3
# Notebook-style example of the Python module: the attention every layer sends to token 0 on the
# demo clip, with and without OutRo, plotted with matplotlib. Run from the repository root after
# scripts/setup.sh:  PYTHONPATH=build/python python3 examples/attention_to_first.py --out attn.png
import argparse
import os

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt
import numpy as np

import outro

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--model", default="models/outro-omni-demo")
ap.add_argument("--video", default="models/outro-omni-demo/demo.mp4")
ap.add_argument("--out", default="attention_to_first.png")
args = ap.parse_args()

# %% Load the model and build the prompt: the clip with its own audio, and a question.
m = outro.Model(args.model, device="auto")
layers = m.config["layers"]
question = "Question: What colour is the shape? Options: A. blue B. green C. purple D. red E. white F. yellow"
prompt = dict(prompt=question, video=args.video, use_audio_in_video=True, system="You are a helpful assistant.")
patterns = [f"blocks.{l}.attn.hook_pattern" for l in range(layers)]


# %% Attention to token 0 per layer: the mean over heads and over query rows 1.. of pattern[h, i, 0].
def attention_to_first(result):
    return np.array([result.hooks[p][:, 1:, 0].mean() for p in patterns])


curves = {}
for strategy in ["baseline", "outro"]:
    r = m.forward(hooks=patterns, strategy=strategy, **prompt)
    curves[strategy] = attention_to_first(r)
    answer = m.detokenize([int(r.logits[-1].argmax())])
    print(f"{strategy:>9}: next token {answer!r}; attention to token 0 per layer "
          + " ".join(f"{v:.3f}" for v in curves[strategy]))
    for line in r.explain:
        print(line)

n = len(r.tokens)
even = np.mean([1 / (i + 1) for i in range(1, n)])  # what a head spreading its attention evenly gives token 0
print(f"prompt: {n} tokens ({r.modality.count(2)} video, {r.modality.count(3)} audio); "
      f"an even spread over the keys gives about {even:.3f}")

# %% Plot.
fig, ax = plt.subplots(figsize=(5, 3.2))
for strategy, ys in curves.items():
    ax.plot(range(layers), ys, marker="o", label=strategy)
ax.set_xlabel("layer")
ax.set_ylabel("attention to token 0")
ax.axhline(even, color="grey", linestyle="--", linewidth=1, label="even spread")
ax.set_title("attention to token 0, demo clip")
ax.legend()
fig.tight_layout()
os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
fig.savefig(args.out, dpi=120)
print(f"wrote {args.out}")
