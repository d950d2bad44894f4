#!/usr/bin/env python3
"""Independent reference for the SmolLM2 tokenizer, to cross-check saelab-lm.

Reads the vocabulary and merges straight from the GGUF header, pre-tokenizes the way
llama.cpp defines the `smollm` pre-type (first every \\p{N} character on its own, then the
GPT-2 regex on the rest), maps bytes to GPT-2's byte-level symbols, and runs textbook
rank-ordered BPE. Compares with the ids written by

    cargo run --release -p saelab-lm --example tokenize_corpus -- MODEL.gguf CORPUS IDS.tsv

usage: bpe_reference.py MODEL.gguf IDS.tsv
Needs Python 3 and the `regex` module (for \\p{L} / \\p{N}).
"""
import struct
import sys

import regex

GPT2 = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
DIGIT = regex.compile(r"\p{N}")


def read_gguf_metadata(path):
    f = open(path, "rb")

    def r(fmt):
        return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

    def s():
        return f.read(r("Q")).decode("utf-8")

    kinds = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return s()
        if t == 9:
            et, n = r("I"), r("Q")
            return [value(et) for _ in range(n)]
        return r(kinds[t])

    assert f.read(4) == b"GGUF", "not a GGUF file"
    r("I")  # version
    r("Q")  # tensor count
    meta = {}
    for _ in range(r("Q")):
        k = s()
        meta[k] = value(r("I"))
    return meta


def byte_symbols():
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def pre_tokenize(text):
    pieces, last = [], 0
    for m in DIGIT.finditer(text):
        if m.start() > last:
            pieces.append(text[last : m.start()])
        pieces.append(m.group())
        last = m.end()
    if last < len(text):
        pieces.append(text[last:])
    out = []
    for p in pieces:
        words = GPT2.findall(p)
        assert "".join(words) == p, repr(p)
        out.extend(words)
    return out


def bpe(word, ranks):
    syms = list(word)
    while len(syms) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(syms, syms[1:]))]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        best = min(pairs)[0]
        out, i = [], 0
        while i < len(syms):
            if i + 1 < len(syms) and ranks.get((syms[i], syms[i + 1])) == best:
                out.append(syms[i] + syms[i + 1])
                i += 2
            else:
                out.append(syms[i])
                i += 1
        syms = out
    return syms


def main():
    meta = read_gguf_metadata(sys.argv[1])
    assert meta["tokenizer.ggml.pre"] == "smollm"
    tokens = meta["tokenizer.ggml.tokens"]
    vocab = {t: i for i, t in reversed(list(enumerate(tokens)))}
    ranks = {tuple(m.split(" ")): r for r, m in enumerate(meta["tokenizer.ggml.merges"])}
    table = byte_symbols()
    cache = {}

    def encode(text):
        ids = []
        for w in pre_tokenize(text):
            if w not in cache:
                sym = "".join(table[b] for b in w.encode("utf-8"))
                cache[w] = [vocab[p] for p in bpe(sym, ranks)]
            ids.extend(cache[w])
        return ids

    docs = total = 0
    for line in open(sys.argv[2], encoding="utf-8"):
        source, ids = line.rstrip("\n").split("\t")
        got = [int(x) for x in ids.split()]
        text = open(source, encoding="utf-8", newline="").read()
        want = encode(text)
        if got != want:
            k = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b) if got[: len(want)] != want[: len(got)] else min(len(got), len(want))
            print(f"MISMATCH {source} at token {k}: saelab {got[k:k+8]} reference {want[k:k+8]}")
            sys.exit(1)
        docs += 1
        total += len(want)
    print(f"identical: {docs} documents, {total} tokens")


if __name__ == "__main__":
    main()
