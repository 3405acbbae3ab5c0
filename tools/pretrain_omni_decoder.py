#!/usr/bin/env python3
"""Pre-trains the omni demo model's decoder (the Qwen2 text model inside the Qwen2_5OmniThinker that
tools/train_omni_demo.py builds: hidden 256, 8 layers, 4 heads, 2 KV heads, untied lm_head) as a plain language
model on natural text, so that the omni stage (`train_omni_demo.py --init-decoder DIR`) starts from a decoder that
has grown a first-token attention sink (issue 19). Run on the GPU machine (torch + transformers, no network):

    python3 tools/pretrain_omni_decoder.py OUTDIR [--tokenizer models/outro-omni-demo/tokenizer.json]
        [--minutes 7] [--deadline EPOCH] [--max-mb 300] [--wd 0] [--seed 0] [--smoke] [--resume EARLIER_OUTDIR]

Text: the .py/.pyi/.md/.rst/.txt files of the machine's installed Python packages (site-packages), read in a
shuffled but seeded order up to --max-mb (files over 1 MB skipped; 1% of the files, chosen by a hash of their path,
held out). They are those packages' own sources and docs under their own open-source licences, used here only as
training text; nothing of the text is written to OUTDIR. Tokenised with the demo's own tokenizer (special-token
strings inside the text are encoded as plain text), files joined with <|endoftext|>. Each training row is
<|im_start|> followed by a random 512-token window of that stream (the demo's prompts start with <|im_start|>).
AdamW (betas 0.9/0.95), linear warmup then cosine to 10% over the time budget, weight decay on matrices only
(default none), bf16 autocast, fixed seeds.

Every --stats-every seconds it records, in float32 with eager attention, on held-out windows and on a chat prompt:
per layer, token 0's max|h| at the layer's input, the lower median of |h| over all tokens and channels (outro's
Phi_LLM rule), their ratio, the other tokens' largest max|h|, and the attention share on token 0 (mean over query
rows 1..n-1; the top head's and the heads' mean), plus whether token 0 passes the release's thresholds (abs 100 and
1000 x median). OUTDIR receives (rewritten at each record, so a cut run keeps its last one):
    decoder-00001-of-00002.safetensors, decoder-00002-of-00002.safetensors   float32 weights (keys as in the thinker:
        model.* and lm_head.*), split in two files of under 16 MiB
    decoder.json        what the files hold: tokenizer's special ids, text config, steps, tokens, final figures
    tokenizer.json      the tokenizer used (a copy)
    pretrain_log.json   corpus, arguments, loss history, the sink records
At the end it builds a fresh thinker, loads OUTDIR through train_omni_demo.load_init_decoder (the omni stage's own
loader) and checks that it gives the trained model's logits.
"""
import argparse
import json
import math
import os
import random
import shutil
import site
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train_omni_demo as tod  # noqa: E402

EXTS = (".py", ".pyi", ".md", ".rst", ".txt")
LOG = []
ABS_THR, MED_MUL = 100.0, 1000.0  # the release's Phi_LLM thresholds


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.append(s)


def text_roots():
    """The installed packages' folders: site.getsitepackages() and any sys.path entry named site- or
    dist-packages, without duplicates or nesting."""
    roots = []
    for p in list(site.getsitepackages()) + list(sys.path):
        if p and os.path.isdir(p) and os.path.basename(p) in ("site-packages", "dist-packages"):
            rp = os.path.realpath(p)
            if rp not in roots:
                roots.append(rp)
    return [r for r in roots if not any(r != o and r.startswith(o + os.sep) for o in roots)]


def list_files(roots, max_file):
    out = []
    for r in roots:
        for d, dirs, files in os.walk(r):
            dirs.sort()
            for f in sorted(files):
                if f.endswith(EXTS):
                    p = os.path.join(d, f)
                    try:
                        s = os.path.getsize(p)
                    except OSError:
                        continue
                    if 0 < s <= max_file:
                        out.append((r, os.path.relpath(p, r), s))
    return out


def read_text(path):
    try:
        with open(path, "rb") as fh:
            b = fh.read()
        if b"\0" in b:
            return None
        return b.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def build_corpus(tok_path, max_bytes, time_cap, seed, specials):
    """Reads and tokenises the text; returns (train ids, held-out ids) as uint16 numpy arrays and a summary."""
    import concurrent.futures as cf
    import numpy as np
    from tokenizers import Tokenizer
    t0 = time.time()
    tok = Tokenizer.from_file(tok_path)
    try:
        tok.encode_special_tokens = True  # "<|im_start|>" written in a source file stays plain text
        plain = True
    except Exception:  # noqa: BLE001
        plain = False
    enc = getattr(tok, "encode_batch_fast", tok.encode_batch)
    roots = text_roots()
    files = list_files(roots, 1 << 20)
    t_list = time.time() - t0
    random.Random(seed).shuffle(files)
    sep = tok.token_to_id("<|endoftext|>")
    parts = {"train": [], "heldout": []}
    stats = {"files": 0, "bytes": 0, "skipped": 0, "by_ext": {}, "by_package": {}}
    stop = "all files read"
    pool = cf.ThreadPoolExecutor(8)
    chunk = max(50, min(2000, int(max_bytes / 20000)))  # files per read-and-encode batch (~20 kB a file)
    for k in range(0, len(files), chunk):
        if stats["bytes"] >= max_bytes:
            stop = "--max-mb reached"
            break
        if k and time.time() - t0 > time_cap:
            stop = f"time cap {time_cap:.0f}s reached"
            break
        batch = files[k:k + chunk]
        texts = list(pool.map(lambda f: read_text(os.path.join(f[0], f[1])), batch))
        keep = [(f, t) for f, t in zip(batch, texts) if t and t.strip()]
        stats["skipped"] += len(batch) - len(keep)
        encs = enc([t for _, t in keep])
        for (f, t), e in zip(keep, encs):
            split = "heldout" if zlib.crc32(f[1].encode()) % 100 == 0 else "train"
            a = np.asarray(e.ids, dtype=np.uint16)
            parts[split].append(a)
            parts[split].append(np.asarray([sep], dtype=np.uint16))
            n = len(t.encode("utf-8"))
            stats["files"] += 1
            stats["bytes"] += n
            ext = os.path.splitext(f[1])[1]
            stats["by_ext"][ext] = stats["by_ext"].get(ext, 0) + n
            pkg = f[1].split(os.sep)[0]
            stats["by_package"][pkg] = stats["by_package"].get(pkg, 0) + n
    pool.shutdown()
    out = {}
    for s, lst in parts.items():
        a = np.concatenate(lst) if lst else np.zeros(0, np.uint16)
        bad = np.isin(a, np.asarray([specials[x] for x in tod.SPECIALS if x != "<|endoftext|>"], dtype=np.uint16))
        stats[f"{s}_special_tokens_removed"] = int(bad.sum())
        out[s] = a[~bad]
    top = sorted(stats["by_package"].items(), key=lambda kv: -kv[1])
    stats["by_package"] = dict(top[:25])
    stats["packages"] = len(top)
    stats.update({"roots": roots, "files_listed": len(files), "listing_seconds": round(t_list, 1),
                  "seconds": round(time.time() - t0, 1), "stopped": stop, "special_strings_as_text": plain,
                  "train_tokens": int(len(out["train"])), "heldout_tokens": int(len(out["heldout"])),
                  "bytes_per_token": stats["bytes"] / max(1, len(out["train"]) + len(out["heldout"]))})
    return out["train"], out["heldout"], stats


def decoder_state(model):
    return {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()
            if k.startswith(tod.DECODER_PREFIXES)}


def save_decoder(model, out, meta):
    """Float32 decoder tensors in two safetensors files (each under 16 MiB at this size) + decoder.json."""
    from safetensors.torch import save_file
    st = decoder_state(model)
    keys = sorted(st, key=lambda k: (not k.startswith("model.embed"), k.startswith("lm_head") or "model.norm" in k,
                                     int(k.split(".")[2]) if k.startswith("model.layers.") else 0, k))
    total = sum(v.numel() * 4 for v in st.values())
    files, cur, acc = [[], []], 0, 0
    for k in keys:
        if cur == 0 and acc >= total / 2:
            cur = 1
        files[cur].append(k)
        acc += st[k].numel() * 4
    names = []
    for i, ks in enumerate(files):
        n = f"decoder-{i + 1:05d}-of-00002.safetensors"
        tmp = os.path.join(out, n + ".tmp")
        save_file({k: st[k] for k in ks}, tmp, metadata={"format": "pt"})
        os.replace(tmp, os.path.join(out, n))
        names.append(n)
    meta = dict(meta, files=names, tensors=len(st), params=int(sum(v.numel() for v in st.values())),
                dtype="float32")
    json.dump(meta, open(os.path.join(out, "decoder.json"), "w"), indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "..", "models", "outro-omni-demo", "tokenizer.json"))
    ap.add_argument("--minutes", type=float, default=7.0, help="training time (after the corpus is read)")
    ap.add_argument("--deadline", type=float, default=0.0,
                    help="unix time by which training stops (the final records and saving take ~20 s more)")
    ap.add_argument("--max-mb", type=float, default=300.0, help="text to read, MB")
    ap.add_argument("--read-seconds", type=float, default=75.0, help="stop reading text after this long")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seq", type=int, default=512, help="tokens per row, <|im_start|> included")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=0.0, help="AdamW weight decay on matrices (norm gains and biases: none)")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--stats-every", type=float, default=40.0, help="seconds between sink records (and saves)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="a few tiny steps: checks the whole path in ~20 s")
    ap.add_argument("--resume", default=None,
                    help="continue an earlier run: its OUTDIR's decoder weights, step and token counts and records "
                         "(a fresh optimiser, warmed up again; the schedule spans this run's budget)")
    args = ap.parse_args()
    if args.smoke:
        args.max_mb, args.read_seconds, args.batch, args.seq, args.warmup = 3.0, 20.0, 8, 128, 5
    import numpy as np
    import torch
    import transformers
    from tokenizers import Tokenizer
    t0 = time.time()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    log(f"torch {torch.__version__} transformers {transformers.__version__} device {dev}"
        + (f" {torch.cuda.get_device_name(0)}" if dev == "cuda" else ""))

    tok = Tokenizer.from_file(args.tokenizer)
    if os.path.abspath(args.tokenizer) != os.path.abspath(os.path.join(args.out, "tokenizer.json")):
        shutil.copyfile(args.tokenizer, os.path.join(args.out, "tokenizer.json"))
    ids = {s: tok.token_to_id(s) for s in tod.SPECIALS}
    if None in ids.values():
        raise RuntimeError(f"tokenizer lacks specials: {ids}")
    if tok.token_to_id("user") is not None:
        ids["user"] = tok.token_to_id("user")
    V = tok.get_vocab_size()
    BOS = ids["<|im_start|>"]
    log(f"tokenizer {args.tokenizer}: {V} tokens, <|im_start|> = {BOS}")

    train, held, corpus = build_corpus(args.tokenizer, args.max_mb * 1e6, args.read_seconds, args.seed, ids)
    log("corpus: " + json.dumps({k: v for k, v in corpus.items() if k not in ("by_package",)}))
    log("corpus by package (bytes, top 25): " + json.dumps(corpus["by_package"]))
    W = args.seq  # text tokens gathered per row: the row is <|im_start|> + W, its inputs the first W of those W + 1
    if len(held) < 40 * (W + 1):  # too few held-out files drawn (a small run): hold out the stream's tail too
        n = 40 * (W + 1) - len(held)
        held, train = np.concatenate([held, train[-n:]]), train[:-n]
        corpus["heldout_from_train_tail"] = int(n)
        log(f"held-out text: {n} tokens taken from the end of the training stream")
    if len(train) < 10 * (W + 1):
        raise RuntimeError("too little text")
    train_d = torch.from_numpy(train.astype(np.int32)).to(dev)
    held_d = torch.from_numpy(held.astype(np.int32)).to(dev)

    notes = []
    model, cfg = tod.build_model(V, ids, False, notes)
    model.to(dev)
    dec_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith(tod.DECODER_PREFIXES))
    log(f"model: thinker of {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, decoder "
        f"{dec_params / 1e6:.2f}M (trained here; the towers are left out of the optimiser); {notes}")
    step0, tokens0, train_s0, records, hist = 0, 0, 0.0, [], []
    if args.resume:
        prev_meta = json.load(open(os.path.join(args.resume, "decoder.json")))
        if prev_meta.get("specials") != ids:
            raise RuntimeError("--resume: that run's special-token ids differ from this tokenizer's")
        info = tod.load_init_decoder(model, args.resume)
        step0, tokens0, train_s0 = prev_meta["steps"], prev_meta["tokens"], prev_meta["train_seconds"]
        prev_log = os.path.join(args.resume, "pretrain_log.json")
        if os.path.exists(prev_log):
            pl = json.load(open(prev_log))
            records, hist = pl.get("records", []), [tuple(h) for h in pl.get("loss_history", [])]
        log(f"resumed from {args.resume}: step {step0}, {tokens0 / 1e6:.1f}M tokens, {info['tensors']} tensors")
    named = [(n, p) for n, p in model.named_parameters() if n.startswith(tod.DECODER_PREFIXES)]
    for n, p in model.named_parameters():
        if not n.startswith(tod.DECODER_PREFIXES):
            p.requires_grad_(False)
    groups = [{"params": [p for n, p in named if p.ndim >= 2], "weight_decay": args.wd},
              {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=dev == "cuda")
    except Exception as e:  # noqa: BLE001
        log(f"fused AdamW unavailable ({e!r}); plain AdamW")
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))

    gen = torch.Generator(device=dev).manual_seed(args.seed + 7919 * step0)  # a resumed run draws new windows
    ar = torch.arange(W, device=dev)

    def rows(stream, offs):
        x = stream[offs[:, None] + ar[None, :]].long()
        return torch.cat([torch.full((len(offs), 1), BOS, dtype=torch.long, device=dev), x], 1)

    def pos(B, L):
        return torch.arange(L, device=dev)[None, None, :].expand(3, B, L)

    def lm_loss(xs):
        xi = xs[:, :-1]
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=dev == "cuda"):
            o = model(input_ids=xi, attention_mask=torch.ones_like(xi), position_ids=pos(*xi.shape), use_cache=False)
        return torch.nn.functional.cross_entropy(o.logits.float().reshape(-1, V), xs[:, 1:].reshape(-1))

    # fixed held-out rows
    hg = torch.Generator(device=dev).manual_seed(12345)
    n_val = 8 if args.smoke else 32
    val_rows = rows(held_d, torch.randint(0, len(held_d) - W, (n_val,), generator=hg, device=dev))
    probe_rows = val_rows[:4, :args.seq]  # the inputs of 4 of them: <|im_start|> + seq - 1 tokens
    ptok = Tokenizer.from_file(args.tokenizer)  # specials as specials, the way prompts are encoded
    chat_ids = ptok.encode(tod.chat_prefix() + "Tell me a story.<|im_end|>\n<|im_start|>assistant\n").ids
    assert chat_ids[0] == BOS

    def layer_stats(h, att):
        """h: [n, d] a layer's input; att: [H, n, n] that layer's attention (float32)."""
        peak = h.abs().amax(-1)
        med = float(h.abs().flatten().median())  # the lower median, as outro's phi_detect
        # each head's mean attention on token 0 over query rows 1..n-1
        share = att[:, 1:, 0].mean(-1) if att is not None else None
        f = float(peak[0])
        return {"first_max_abs": f, "median_abs": med, "ratio": f / max(med, 1e-12),
                "other_max_abs": float(peak[1:].max()), "other_argmax": int(peak[1:].argmax()) + 1,
                "top_head_share": float(share.max()) if share is not None else None,
                "top_head": int(share.argmax()) if share is not None else None,
                "mean_head_share": float(share.mean()) if share is not None else None,
                "first_argmax_channel": int(h[0].abs().argmax()),
                "phi_llm_first": bool(f >= ABS_THR and f >= MED_MUL * med),
                "others_over_release_thresholds": int(((peak[1:] >= ABS_THR) & (peak[1:] >= MED_MUL * med)).sum())}

    def sink_record():
        was = model.training
        model.eval()
        tod.set_attn(model, "eager")
        rec = {}
        with torch.no_grad():
            for name, x in (("text", probe_rows), ("chat", torch.tensor([chat_ids], device=dev))):
                o = model(input_ids=x, attention_mask=torch.ones_like(x), position_ids=pos(*x.shape), use_cache=False,
                          output_attentions=True, output_hidden_states=True)
                hs, at = o.hidden_states[:-1], o.attentions
                if not at or at[0] is None:
                    rec.setdefault("notes", []).append(f"{name}: no attention probabilities returned")
                per_row = [[layer_stats(hs[l][b].float(), at[l][b].float() if at and at[l] is not None else None)
                            for l in range(len(hs))] for b in range(x.shape[0])]
                layers = []
                for l in range(len(hs)):
                    d = {}
                    for k in per_row[0][l]:
                        v = [r[l][k] for r in per_row]
                        if v[0] is None:
                            d[k] = None
                        elif isinstance(v[0], bool):
                            d[k] = sum(v) / len(v)  # fraction of rows where token 0 passes
                        elif k in ("other_argmax", "top_head", "first_argmax_channel"):
                            d[k] = max(set(v), key=v.count)
                        else:
                            d[k] = sum(v) / len(v)
                    if len(per_row) > 1:
                        d["ratio_min"] = min(r[l]["ratio"] for r in per_row)
                        d["first_max_abs_min"] = min(r[l]["first_max_abs"] for r in per_row)
                    layers.append(d)
                rec[name] = {"rows": int(x.shape[0]), "tokens": int(x.shape[1]), "layers": layers}
        tod.set_attn(model, "sdpa")
        try:
            rec["input_norm_gain_mean_abs"] = [float(ly.input_layernorm.weight.abs().mean()) for ly in model.model.layers]
        except Exception as e:  # noqa: BLE001
            rec["input_norm_gain_mean_abs"] = repr(e)
        if was:
            model.train()
        return rec

    def val_loss():
        was = model.training
        model.eval()
        with torch.no_grad():
            v = float(lm_loss(val_rows))
        if was:
            model.train()
        return v

    def show(rec, tag):
        for name in ("text", "chat"):
            if name not in rec:
                continue
            L = rec[name]["layers"]
            log(f"sinks {tag} {name}: max|h0| {[round(d['first_max_abs'], 1) for d in L]} "
                f"median {[round(d['median_abs'], 3) for d in L]} ratio {[round(d['ratio']) for d in L]} "
                f"others' max {[round(d['other_max_abs'], 1) for d in L]} "
                f"top head ->0 {[round(d['top_head_share'], 2) if d['top_head_share'] is not None else None for d in L]} "
                f"Phi_LLM(100, 1000x) {[round(d['phi_llm_first'], 2) for d in L]}")

    tokens_per_step = args.batch * args.seq  # targets per step (the <|im_start|> is never a target)
    try:
        text_config = json.loads(cfg.text_config.to_json_string())
    except Exception as e:  # noqa: BLE001
        text_config = repr(e)
    spec = {"args": vars(args), "corpus": corpus, "tokens_per_step": tokens_per_step, "seq": args.seq,
            "bos": "<|im_start|>", "bos_id": BOS, "vocab": V, "decoder_params": dec_params,
            "thresholds": {"abs": ABS_THR, "median_multiple": MED_MUL},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None}
    def done_tokens(step):
        return tokens0 + (step - step0) * tokens_per_step

    def write(step, train_s, final=False):
        vl = val_loss()
        try:
            rec = sink_record()
        except Exception as e:  # noqa: BLE001  (a smoke run stops on it; a real run trains on without the record)
            if args.smoke:
                raise
            import traceback
            traceback.print_exc()
            rec = {"error": repr(e)}
            tod.set_attn(model, "sdpa")
            model.train()
        last = [v for _, v in hist[-10:]]
        train_s = train_s0 + train_s  # over this run and the ones it continues
        rec.update({"step": step, "tokens": done_tokens(step), "train_seconds": round(train_s, 1),
                    "val_loss": vl, "train_loss": sum(last) / len(last) if last else None})
        records.append(rec)
        log(f"record step {step} tokens {done_tokens(step) / 1e6:.1f}M {train_s:.0f}s val loss {vl:.3f}")
        show(rec, f"@{step}")
        meta = {"tokenizer": "tokenizer.json", "specials": ids, "text_config": text_config, "steps": step, "tokens": done_tokens(step),
                "train_seconds": round(train_s, 1), "val_loss": vl, "final": final,
                "made_by": "tools/pretrain_omni_decoder.py", "seed": args.seed}
        if not args.smoke or final:
            save_decoder(model, args.out, meta)
        json.dump(dict(spec, records=records, loss_history=hist[::max(1, len(hist) // 400)],
                       log=LOG), open(os.path.join(args.out, "pretrain_log.json"), "w"), indent=1)

    budget = args.minutes * 60
    tstart = time.time()
    if args.deadline:
        budget = min(budget, args.deadline - tstart)
    log(f"training for {budget:.0f}s: batch {args.batch} x {args.seq}, lr {args.lr}, wd {args.wd} (matrices)")
    if not args.resume:
        write(0, 0.0)
    step, next_rec, max_steps = step0, args.stats_every, step0 + (30 if args.smoke else 10 ** 9)
    model.train()
    tstart = time.time()
    while step < max_steps:
        el = time.time() - tstart
        if el > budget:
            break
        warm = min(1.0, (step - step0 + 1) / args.warmup)
        frac = (step - step0) / 30 if args.smoke else min(1.0, el / max(budget, 1.0))
        lr = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        offs = torch.randint(0, len(train_d) - W, (args.batch,), generator=gen, device=dev)
        loss = lm_loss(rows(train_d, offs))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0 or args.smoke:  # (reading the loss waits for the GPU: not every step)
            lv = float(loss)
            hist.append((step, lv))
            if not math.isfinite(lv):
                raise RuntimeError(f"loss is {lv} at step {step}")
            if step % 100 == 0 or args.smoke:
                el = time.time() - tstart
                log(f"step {step} loss {lv:.3f} grad {float(gn):.2f} lr {lr:.2e} {el:.0f}s "
                    f"{(step - step0) * tokens_per_step / max(el, 1e-9) / 1e6:.2f}M tok/s")
        if not args.smoke and time.time() - tstart >= next_rec:
            write(step, time.time() - tstart)
            next_rec = time.time() - tstart + args.stats_every
    train_s = time.time() - tstart
    log(f"trained {step - step0} steps, {(step - step0) * tokens_per_step / 1e6:.1f}M tokens in {train_s:.0f}s "
        f"({step} steps, {done_tokens(step) / 1e6:.1f}M tokens in all)")
    write(step, train_s, final=True)

    # the omni stage's loader on what was saved: same logits as the trained model
    model.eval()
    fresh, _ = tod.build_model(V, ids, False, [])
    fresh.to(dev).eval()
    info = tod.load_init_decoder(fresh, args.out)
    x = torch.tensor([chat_ids], device=dev)
    with torch.no_grad():
        a = model(input_ids=x, attention_mask=torch.ones_like(x), position_ids=pos(*x.shape), use_cache=False).logits.float()
        b = fresh(input_ids=x, attention_mask=torch.ones_like(x), position_ids=pos(*x.shape), use_cache=False).logits.float()
    diff = float((a - b).abs().max())
    log(f"load_init_decoder check: {info['tensors']} tensors, {info['params']} parameters, logits max |diff| {diff:.3g}")
    if diff > 1e-4:
        raise RuntimeError("reloaded decoder differs")
    spec["load_check"] = {"logits_max_abs_diff": diff, "tensors": info["tensors"]}
    spec["total_seconds"] = round(time.time() - t0, 1)
    json.dump(dict(spec, records=records, loss_history=hist[::max(1, len(hist) // 400)], log=LOG),
              open(os.path.join(args.out, "pretrain_log.json"), "w"), indent=1)
    log(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
