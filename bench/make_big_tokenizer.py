#!/usr/bin/env python3
"""Writes a Llama-3-sized byte-level BPE tokenizer.json (default: 150,000 vocab entries, 280,000
merges) into a folder, for timing how long smelt takes to load a tokenizer of that size
(bench/tokenizer_load_bench.sh). The vocabulary is synthetic but consistent: the 256 byte-level
characters, then tokens made by merging two existing tokens, then further merges that spell an
existing token another way (as real BPE merge lists do). Seeded, so the file is the same each run.

usage: bench/make_big_tokenizer.py DIR [--vocab 150000] [--merges 280000]
"""
import argparse
import json
import os
import random


def byte_level_alphabet():
    # GPT-2's bytes -> unicode table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--vocab", type=int, default=150000)
    ap.add_argument("--merges", type=int, default=280000)
    args = ap.parse_args()
    rng = random.Random(7)
    alphabet = byte_level_alphabet()
    tokens = list(alphabet)
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    seen_pairs = set()
    # Words over a small alphabet (lowercase letters and "Ġ", the space), grown one letter at a
    # time from a random earlier word: short strings are then dense in the vocabulary, so most
    # tokens can be spelled by several merges, as in real merge lists.
    letters = [c for c in "abcdefghijklmnopqrstuvwxyz"] + ["Ġ"]
    words = list(letters)
    while len(tokens) < args.vocab:
        a = words[int(len(words) * rng.random() ** 2)]  # earlier (shorter) words more often
        b = rng.choice(letters)
        t = a + b
        if t in vocab or (a, b) in seen_pairs:
            continue
        vocab[t] = len(tokens)
        tokens.append(t)
        words.append(t)
        merges.append((a, b))
        seen_pairs.add((a, b))
    # Extra merges: other splits of existing tokens whose halves are both in the vocab.
    order = list(range(256, len(tokens)))
    rng.shuffle(order)
    extra = []
    for i in order:
        if len(merges) + len(extra) >= args.merges:
            break
        t = tokens[i]
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in vocab and b in vocab and (a, b) not in seen_pairs:
                seen_pairs.add((a, b))
                extra.append((a, b))
                if len(merges) + len(extra) >= args.merges:
                    break
    merges += extra
    n = len(tokens)
    specials = ["<|begin_of_text|>", "<|end_of_text|>"] + \
        ["<|reserved_special_token_%d|>" % i for i in range(254)]
    added = [{"id": n + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(specials)]
    pattern = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?"
               "[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": [a + " " + b for a, b in merges]},
    }
    os.makedirs(args.dir, exist_ok=True)
    with open(os.path.join(args.dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=2)
    print("%s: %d vocab entries, %d merges, %d added tokens" %
          (os.path.join(args.dir, "tokenizer.json"), len(vocab), len(merges), len(added)))


if __name__ == "__main__":
    main()
