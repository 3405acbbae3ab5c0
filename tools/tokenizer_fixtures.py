#!/usr/bin/env python3
"""Reference fixtures for outro's tokenizer tests, made with the Hugging Face `tokenizers` library.

Run where `tokenizers` is installed (the GPU machine; nothing is downloaded):

    python3 tools/tokenizer_fixtures.py OUTDIR

Trains three small tokenizers on the built-in multilingual corpus below and writes, flat into OUTDIR:

    qwen2style.tokenizer.json   byte-level BPE: NFC, Split(Qwen2's regex) + ByteLevel, ByteLevel decoder,
                                added tokens <|endoftext|> <|im_start|> <|im_end|> (special), <tool_call> (not)
    llamastyle.tokenizer.json   BPE with byte_fallback and <unk>: normalizer Prepend("▁") + Replace(" ", "▁"),
                                no pre-tokenizer, decoder Replace + ByteFallback + Fuse + Strip (Llama-2/TinyLlama)
    metaspace.tokenizer.json    the same model with ignore_merges, Metaspace pre-tokenizer (prepend first,
                                split) and decoder ByteFallback + Metaspace; <mask> with lstrip
    <name>.cases.json           for each tokenizer above and models/outro-demo (name "demo"): every test
                                string with its ids, normalized text, pre-tokens, decoded text (with and
                                without special tokens), ids with the post-processor, and decodes of
                                arbitrary id sequences

The C++ tests (tests/test_tokenizer.cpp) load each tokenizer.json and compare.
"""
import json
import os
import random
import sys
import traceback

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

QWEN2_RE = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

CORPUS_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "A red circle moves left while a tone plays. The sounding object is visible.",
    "Question: Which colour is the shape? Options: A. red B. blue C. green D. yellow",
    "It's a small test, isn't it? We'll see what they've done and what you'd like.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 2024 3.14159 -273.15 1,000,000",
    "def forward(self, x):\n    return self.proj(x) + x  # residual\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)\nprint(x.shape)\n",
    "Attention sinks appear at the first token of the sequence in most layers.",
    "The model answers with a single letter: A, B, C or D.",
    "Hello world! Hello again, world. Goodbye, world.",
    "Il était une fois une petite fille qui vivait dans un village près de la forêt.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Größe, Straße, Übung.",
    "El rápido zorro marrón salta sobre el perro perezoso. ¿Dónde está la estación?",
    "Привет, как дела? Сегодня хорошая погода, и мы идём гулять в парк.",
    "Γεια σου κόσμε. Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.",
    "你好，世界！今天天气很好，我们去公园散步吧。模型回答问题。",
    "我们的模型可以理解中文、英文和其他语言。注意力机制很重要。",
    "こんにちは、世界。今日はいい天気ですね。カタカナとひらがなを使います。",
    "안녕하세요, 세계. 오늘 날씨가 좋네요. 한국어 문장입니다.",
    "مرحبا بالعالم. هذا نص باللغة العربية للاختبار.",
    "नमस्ते दुनिया। यह हिंदी में एक परीक्षण वाक्य है।",
    "שלום עולם. זה משפט בעברית.",
    "สวัสดีชาวโลก นี่คือประโยคภาษาไทย",
    "Emoji: 😀 😃 😄 🎉 👍 👍🏽 ❤️ 🔥 🚀 👨‍👩‍👧‍👦 🏳️‍🌈",
    "Café, naïve, résumé, coöperate, jalapeño, façade, Ångström.",
    "    indented line with four spaces\n\ttab indented line\n\n\nthree newlines above",
    "Email me at someone@example.com or visit https://example.org/path?q=1&lang=en.",
    "Prices: $5.99, €4,50, £3, ¥1000, ₹250. Discount 15%!",
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
    "SELECT name, age FROM users WHERE age >= 18 ORDER BY name;",
    "THE END. the end. The End. tHe EnD.",
]
CORPUS = CORPUS_LINES * 20

SPECIAL_QWEN = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
          "A red circle moves left while a tone plays. Question: Which colour is the shape?<|im_end|>\n"
          "<|im_start|>assistant\n")

CASES = [
    "",
    " ",
    "Hello, world!",
    "hello world",
    "  two leading spaces",
    "trailing spaces   ",
    "multiple    spaces   between     words",
    "tabs\tand\t\ttabs",
    "line1\nline2\r\nline3\n\n\nend",
    " \n \t \r\n ",
    "\n",
    "word\n",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you're right; they've said we'll go and it'd work. He's HERE'S DON'T",
    "你好，世界！",
    "日本語のテキストです。カタカナとひらがな。",
    "한국어 텍스트 입니다",
    "Привет, мир!",
    "Γεια σου κόσμε",
    "مرحبا بالعالم",
    "हिन्दी पाठ",
    "עברית",
    "ภาษาไทย",
    "emoji 😀🎉👍🏽",
    "👨‍👩‍👧‍👦 family (ZWJ sequence)",
    "🏳️‍🌈 flag and 🇺🇸🇯🇵 regional indicators",
    "e\u0301 combining acute (NFC makes é)",
    "A\u030a ring above, \u212b angstrom sign",
    "\u1100\u1161\u11a8 conjoining jamo",
    "o\u0308\u0301 two marks, \u0041\u0323\u0302 reordered",
    "\ufb01 ligature and \u2460 circled one (NFC keeps them)",
    "12345 3.14159 -42 1,000,000 2024-01-01 0x1F 1e-5",
    "١٢٣ arabic-indic digits, 一二三 CJK numerals, ½ fraction",
    "x = [1, 2, 3]\nfor i in range(10):\n    print(i ** 2)\n",
    "def f(a, b):\n\treturn a+b  # comment",
    "if (x != y && z >= 0) { return -1; }",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<|im_end|><|im_end|>",
    "<|im_start incomplete special <|im_end",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "<s>hello</s> <unk> <0x41>",
    "a <mask> b<mask>c",
    "\u200b zero\u200dwidth\u200c joiners",
    "\ufeffbyte order mark",
    "\ufffd replacement character",
    "\u0000 null \u0001 ctrl \u007f del",
    "\u2581 lower one eighth block \u2581\u2581",
    "\u00a0non-breaking\u00a0space and a\u3000ideographic space",
    "mixed 中文 and English 123 😀 text",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters and 𠜎 ext-B",
    "Ã© mojibake, ÿþ latin-1, \\x80 escaped",
    "a" * 100,
    "ab" * 40,
    " " * 17 + "x",
    "\n" * 6,
    "https://example.com/path?q=1&x=2#frag",
    "someone@example.com",
    "$100.00 €50 ¥1000",
    "Café naïve résumé Ångström",
    "THE END. the end. tHe EnD.",
    "A red circle moves left while a tone plays. The sounding object is visible. Question: Which colour is the shape? Options: A. red B. blue C. green D. yellow",
    CHATML,
]


def train_qwen2style():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[AddedToken(s, special=True, normalized=False) for s in SPECIAL_QWEN])
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                    AddedToken("</tool_call>", special=False, normalized=False)])
    return tok


def train_llama_model():
    """A BPE with byte fallback trained on Metaspace words; returns the tokenizer.json dict."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=1200, min_frequency=2, show_progress=False, limit_alphabet=150,
                                  special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(CORPUS, trainer)
    j = json.loads(tok.to_str())
    # Llama's layout: <unk> <s> </s>, then the 256 byte tokens <0x00>..<0xFF>, then the pieces.
    old = sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {}
    for s in ["<unk>", "<s>", "</s>"]:
        vocab[s] = len(vocab)
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for s, _ in old:
        if s not in vocab:
            vocab[s] = len(vocab)
    j["model"]["vocab"] = vocab
    for a in j["added_tokens"]:
        a["id"] = vocab[a["content"]]
    return j


def llamastyle(j):
    j = json.loads(json.dumps(j))
    tok = Tokenizer.from_str(json.dumps(j))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return tok


def metaspace(j):
    j = json.loads(json.dumps(j))
    j["model"]["ignore_merges"] = True
    tok = Tokenizer.from_str(json.dumps(j))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="\u2581",
                                                                                  prepend_scheme="first")])
    tok.add_special_tokens([AddedToken("<mask>", special=True, lstrip=True, normalized=False)])
    return tok


def cases_for(tok, name):
    out = {"tokenizers_version": tokenizers.__version__, "name": name, "vocab_size": tok.get_vocab_size(True),
           "cases": [], "decode_cases": []}
    for text in CASES:
        enc = tok.encode(text, add_special_tokens=False)
        ids = list(enc.ids)
        c = {"text": text, "ids": ids, "tokens": list(enc.tokens),
             "ids_post": list(tok.encode(text, add_special_tokens=True).ids),
             "decoded": tok.decode(ids, skip_special_tokens=False),
             "decoded_skip": tok.decode(ids, skip_special_tokens=True)}
        try:
            norm = tok.normalizer.normalize_str(text) if tok.normalizer else text
            c["normalized"] = norm
            if tok.pre_tokenizer:
                c["pre_tokens"] = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(norm)]
        except Exception as e:  # informative only
            c["note"] = repr(e)
        out["cases"].append(c)
    rng = random.Random(1234)
    n = tok.get_vocab_size(True)
    seqs = [[rng.randrange(n) for _ in range(rng.randrange(1, 12))] for _ in range(24)]
    vocab = tok.get_vocab(True)
    bytes_ids = [vocab[k] for k in ("<0xE4>", "<0xBD>", "<0xA0>", "<0x80>", "<0x41>") if k in vocab]
    if len(bytes_ids) == 5:
        e4, bd, a0, x80, x41 = bytes_ids
        seqs += [[e4, bd], [e4, bd, a0], [e4, bd, a0, x80], [x41, e4, x41], [e4, bd, a0, e4, bd, a0]]
    for word in ("\u2581", "\u2581\u2581", "\u2581the", "<s>", "</s>", "<unk>"):
        if word in vocab:
            seqs.append([vocab[word], vocab[word]])
            seqs.append([vocab[word]] + seqs[0])
    for ids in seqs:
        out["decode_cases"].append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                                    "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: tokenizer_fixtures.py OUTDIR")
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    demo = os.path.join(here, "..", "models", "outro-demo", "tokenizer.json")
    print("tokenizers", tokenizers.__version__, flush=True)
    failed = 0
    lj = None
    for name, make in (("qwen2style", train_qwen2style), ("llamastyle", lambda: llamastyle(lj)),
                       ("metaspace", lambda: metaspace(lj)), ("demo", None)):
        try:
            if name == "llamastyle":
                lj = train_llama_model()
            if make is None:
                tok = Tokenizer.from_file(demo)
            else:
                make().save(os.path.join(outdir, name + ".tokenizer.json"), pretty=False)
                # reload what was written, so the cases come from exactly the file the tests load
                tok = Tokenizer.from_file(os.path.join(outdir, name + ".tokenizer.json"))
            with open(os.path.join(outdir, name + ".cases.json"), "w", encoding="utf-8") as f:
                json.dump(cases_for(tok, name), f, ensure_ascii=False, indent=0)
        except Exception:
            traceback.print_exc()
            failed += 1
    for fn in sorted(os.listdir(outdir)):
        print(fn, os.path.getsize(os.path.join(outdir, fn)))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
