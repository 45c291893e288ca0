#!/usr/bin/env python3
"""Trains small SentencePiece models with Debian's python3-sentencepiece and prints, as JSON, the
library's own encodings of a corpus: the reference that tests/tokenizer_sentencepiece_test.cpp
compares smelt's SentencePiece engine with (docs/tokenizer-sentencepiece.md).

usage: sentencepiece_ref.py OUT_DIR CORPUS  ->  OUT_DIR/{bpe,unigram,nobos}/tokenizer.model + JSON on stdout
"""
import io
import json
import os
import random
import sys

import sentencepiece as spm

USER_DEFINED = ["<|im_start|>", "<|im_end|>"]


def training_text(corpus_lines):
    """Even corpus lines plus seeded word salad: the odd lines stay partly unseen."""
    rng = random.Random(7)
    text = corpus_lines[::2]
    words = " ".join(corpus_lines).split()
    for _ in range(3000):
        text.append(" ".join(rng.choice(words) for _ in range(rng.randint(2, 12))))
    return text


def train(out_dir, name, lines, **options):
    os.makedirs(os.path.join(out_dir, name), exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                   user_defined_symbols=USER_DEFINED, minloglevel=2, **options)
    path = os.path.join(out_dir, name, "tokenizer.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path


def main(out_dir, corpus_path):
    with open(corpus_path, encoding="utf-8") as f:
        corpus = f.read()
    lines = corpus.split("\n")
    text = training_text([l for l in lines if l.strip()])
    models = {
        # Llama/Mistral style: BPE, byte fallback, digits split, whitespace kept as is.
        "bpe": train(out_dir, "bpe", text, model_type="bpe", vocab_size=1200, byte_fallback=True,
                     split_digits=True, allow_whitespace_only_pieces=True,
                     remove_extra_whitespaces=False, normalization_rule_name="identity",
                     character_coverage=0.9995),
        # T5 style: Unigram, NFKC normalization, extra whitespace removed, <unk> for rare chars.
        "unigram": train(out_dir, "unigram", text, model_type="unigram", vocab_size=900,
                         character_coverage=0.995, hard_vocab_limit=False),
        # No BOS piece at all (T5 has none): nothing can be prepended.
        "nobos": train(out_dir, "nobos", text, model_type="bpe", vocab_size=400, bos_id=-1,
                       character_coverage=0.99),
    }
    out = {}
    for name, path in models.items():
        sp = spm.SentencePieceProcessor(model_file=path)
        entry = {"path": path, "vocab_size": sp.get_piece_size(), "bos": sp.bos_id(),
                 "eos": sp.eos_id(), "unk": sp.unk_id(), "lines": []}
        for line in lines:
            ids = sp.encode(line)
            entry["lines"].append({"text": line, "ids": ids,
                                   "pieces": [sp.id_to_piece(i) for i in ids],
                                   "decoded": sp.decode(ids)})
        # Bytes that are not UTF-8 (stray continuation, overlong form, cut sequence) and a NUL.
        entry["raw"] = [{"hex": raw.hex(), "ids": sp.encode(raw)}
                        for raw in (b"a\xffb\xc0\x80c", b"a\x00b\n", b"x \xe4\xb8", b"\x80\x80")]
        entry["whole"] = {"ids": sp.encode(corpus)}
        entry["whole"]["decoded"] = sp.decode(entry["whole"]["ids"])
        out[name] = entry
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
