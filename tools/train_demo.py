#!/usr/bin/env python3
"""Trains outro's embedded demo model: a small Qwen2ForCausalLM chat model with its own byte-level
BPE tokenizer, on a synthetic corpus of scene descriptions with multiple-choice / yes-no / counting
questions, short stories and arithmetic. Run on the GPU machine:

    python3 tools/train_demo.py OUTDIR [--minutes 6] [--seed 0] [--decay-all]

The committed models/outro-demo was trained before weight decay was limited to matrices (today's --decay-all).

OUTDIR receives a Hugging Face model folder (bf16 weights, tokenizer.json, configs) and
train_log.json (steps, losses, held-out accuracy, sink statistics).
"""
import argparse
import json
import math
import os
import random
import time

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "ball", "box"]
DIRS = ["left", "right", "up", "down"]
SOUNDS = ["a tone", "a beep", "a drum", "a bell", "silence"]
NAMES = ["Tom", "Lily", "Sam", "Mia", "Ben", "Anna", "Max", "Zoe"]
PLACES = ["park", "forest", "kitchen", "garden", "beach", "school", "river", "house"]
OBJECTS = ["ball", "kite", "cake", "book", "hat", "cup", "dog", "cat", "apple", "boat"]
ADJ = ["big", "small", "happy", "sad", "shiny", "old", "new", "funny"]
VERBS = ["found", "lost", "saw", "liked", "painted", "carried", "shared", "hid"]
SYSTEM = "You are a helpful assistant."
LETTERS = "ABCD"


def chat(q, a):
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
            f"<|im_start|>assistant\n{a}<|im_end|>\n")


def options(rng, answer, pool):
    opts = [answer] + rng.sample([p for p in pool if p != answer], 3)
    rng.shuffle(opts)
    return opts, LETTERS[opts.index(answer)]


def scene(rng):
    c, s, d, snd = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(DIRS), rng.choice(SOUNDS)
    beeps = rng.randint(0, 5)
    visible = rng.random() < 0.5
    desc = f"A {c} {s} moves {d} while {snd} plays."
    if snd == "a beep":
        desc = f"A {c} {s} moves {d}. There are {beeps} beeps."
    if visible:
        desc += f" The sounding object is visible."
    else:
        desc += f" The sounding object is not visible."
    return desc, dict(colour=c, shape=s, dir=d, sound=snd, beeps=beeps, visible=visible)


def qa_item(rng):
    desc, f = scene(rng)
    kind = rng.randrange(6)
    if kind == 0:
        opts, ans = options(rng, f["colour"], COLOURS)
        q = "Which colour is the shape?"
    elif kind == 1:
        opts, ans = options(rng, f["dir"], DIRS)
        q = "Which direction does the shape move?"
    elif kind == 2:
        opts, ans = options(rng, f["shape"], SHAPES)
        q = "What is the shape?"
    elif kind == 3 and f["sound"] == "a beep":
        opts, ans = options(rng, str(f["beeps"]), [str(i) for i in range(6)])
        q = "How many beeps are there?"
    elif kind == 4:
        yes = rng.random() < 0.5
        colour = f["colour"] if yes else rng.choice([c for c in COLOURS if c != f["colour"]])
        q = f"{desc} Question: Is the shape {colour}? Answer yes or no."
        return q, "yes" if yes else "no", ["yes", "no"]
    else:
        q = f"{desc} Question: Is the sounding object visible? Answer yes or no."
        return q, "yes" if f["visible"] else "no", ["yes", "no"]
    text = f"{desc} Question: {q} Options: " + " ".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(opts))
    return text, ans, list(LETTERS)


def story(rng):
    n1, n2 = rng.sample(NAMES, 2)
    p, o, a, v = rng.choice(PLACES), rng.choice(OBJECTS), rng.choice(ADJ), rng.choice(VERBS)
    c = rng.choice(COLOURS)
    lines = [f"Once upon a time, {n1} went to the {p}.", f"{n1} {v} a {a} {c} {o}.",
             f"{n2} came to play, and {n1} was {rng.choice(ADJ)}.",
             f"They played with the {o} until the sun went down.", f"The end."]
    return " ".join(lines[: rng.randint(3, 5)])


def arithmetic(rng):
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    return chat(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")


def document(rng):
    r = rng.random()
    if r < 0.6:
        q, a, _ = qa_item(rng)
        return chat(q, a)
    if r < 0.85:
        return "<|endoftext|>" + story(rng) + "\n"
    return arithmetic(rng)


def corpus(seed, n):
    rng = random.Random(seed)
    return [document(rng) for _ in range(n)]


def train_tokenizer(texts, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    pat = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
           r"\s+(?!\S)|\s+")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pat), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--decay-all", action="store_true",
                    help="weight decay on every parameter, RMSNorm gains and biases too: how the committed "
                         "models/outro-demo was trained (decayed gains flatten attention; by default only matrices decay)")
    args = ap.parse_args()
    import torch
    import transformers
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    docs = corpus(args.seed, 2000 if args.smoke else 120000)
    tok = train_tokenizer(docs[:20000], 2048)
    tok.save(os.path.join(args.out, "tokenizer.json"))
    eot, ims, ime = (tok.token_to_id(t) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    ids = []
    for e in tok.encode_batch(docs):
        ids.extend(e.ids)
    data = torch.tensor(ids, dtype=torch.long)
    print(f"corpus: {len(docs)} docs, {len(ids)} tokens, tokenizer {tok.get_vocab_size()}", flush=True)
    dev = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    cfg = transformers.Qwen2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=64 if args.smoke else 256,
        intermediate_size=128 if args.smoke else 768, num_hidden_layers=2 if args.smoke else 6,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=eot, eos_token_id=[ime, eot])
    cfg._attn_implementation = "sdpa"
    model = transformers.Qwen2ForCausalLM(cfg).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model: {nparams / 1e6:.2f}M parameters on {dev}", flush=True)
    mats = [p for p in model.parameters() if p.ndim >= 2 or args.decay_all]
    rest = [p for p in model.parameters() if p.ndim < 2 and not args.decay_all]
    opt = torch.optim.AdamW([{"params": mats, "weight_decay": 0.1}] + ([{"params": rest, "weight_decay": 0.0}] if rest else []),
                            lr=1e-3, betas=(0.9, 0.95))
    seq, batch = 256, 64 if not args.smoke else 4
    budget = args.minutes * 60
    est_steps = 20 if args.smoke else 4000
    step, losses = 0, []
    # Every window starts at a document boundary token so position 0 is <|im_start|> or <|endoftext|>.
    starts = torch.nonzero((data[:-seq - 1] == ims) | (data[:-seq - 1] == eot)).flatten()
    g = torch.Generator().manual_seed(args.seed)
    tstart = time.time()
    while True:
        elapsed = time.time() - tstart
        if (args.smoke and step >= est_steps) or (not args.smoke and elapsed > budget):
            break
        frac = min(1.0, elapsed / budget) if not args.smoke else step / est_steps
        lr = 1e-3 * min(1.0, step / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = starts[torch.randint(len(starts), (batch,), generator=g)]
        x = torch.stack([data[i:i + seq + 1] for i in idx.tolist()]).to(dev)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=dev == "cuda"):
            out = model(input_ids=x[:, :-1])
        logits = out.logits.float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        if step % 200 == 0:
            print(f"step {step} loss {loss.item():.3f} lr {lr:.2e} {time.time() - tstart:.0f}s", flush=True)
        step += 1
    train_s = time.time() - tstart
    model.eval()
    # held-out accuracy (greedy answer equals the gold answer)
    rng = random.Random(10_000 + args.seed)
    correct, total, items = 0, 0, []
    for _ in range(20 if args.smoke else 300):
        q, a, opts = qa_item(rng)
        prompt = chat(q, "").rsplit(f"{'<|im_end|>'}\n", 1)[0]
        prompt = prompt[: prompt.rfind("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")]
        pids = torch.tensor([tok.encode(prompt).ids], device=dev)
        with torch.no_grad():
            gen = model.generate(pids, max_new_tokens=4, do_sample=False, eos_token_id=[ime, eot], pad_token_id=eot)
        text = tok.decode(gen[0, pids.shape[1]:].tolist(), skip_special_tokens=True).strip()
        ok = text == a
        correct += ok
        total += 1
        if len(items) < 200:
            items.append({"question": q, "answer": a, "options": opts, "model": text})
    acc = correct / max(total, 1)
    print(f"held-out accuracy {acc:.3f} ({correct}/{total})", flush=True)
    # sink statistics: attention to position 0 and the first token's largest activation
    model.config._attn_implementation = "eager"
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    sink = []
    for q, a, _ in [qa_item(rng) for _ in range(3)]:
        pids = torch.tensor([tok.encode(chat(q, a)).ids], device=dev)
        with torch.no_grad():
            o = model(pids, output_attentions=True, output_hidden_states=True)
        att0 = [float(A[0, :, 1:, 0].mean()) for A in o.attentions]
        hs = o.hidden_states
        ratio = [float(h[0, 0].abs().max() / h[0].abs().median()) for h in hs[:-1]]
        mx = [float(h[0, 0].abs().max()) for h in hs[:-1]]
        other = [float(h[0, 1:].abs().max()) for h in hs[:-1]]
        sink.append({"attention_to_first_per_layer": att0, "first_token_max_over_median": ratio,
                     "first_token_max_abs": mx, "other_tokens_max_abs": other})
        print("attn->pos0", [round(v, 3) for v in att0], "max|h0|", [round(v, 1) for v in mx],
              "others", [round(v, 1) for v in other], flush=True)
    model = model.to(torch.bfloat16).cpu()
    model.config._attn_implementation = "sdpa"
    model.generation_config.eos_token_id = [ime, eot]
    model.generation_config.bos_token_id = eot
    model.generation_config.pad_token_id = eot
    model.save_pretrained(args.out)
    tc = {"model_max_length": 1024, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
          "chat_template": ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                            "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
                            "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
                            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")}
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=1)
    log = {"steps": step, "train_seconds": train_s, "total_seconds": time.time() - t0, "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
           "tokens_seen": step * batch * seq, "params": nparams, "heldout_accuracy": acc, "heldout_items": total,
           "samples": items[:10], "sink_stats": sink, "seed": args.seed, "device": dev,
           "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None}
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump(log, f, indent=1)
    with open(os.path.join(args.out, "heldout.jsonl"), "w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    print(json.dumps({k: v for k, v in log.items() if k not in ("samples", "sink_stats")}), flush=True)


if __name__ == "__main__":
    main()
