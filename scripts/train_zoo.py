#!/usr/bin/python3
"""Train smelt's model zoo: tiny byte-level Llama models that really learned something.

How to run (from the repository root; CPU only, needs Debian's python3-torch and python3-numpy):

    nice -n 10 python3 scripts/train_zoo.py            # train everything, write examples/zoo/, check
    python3 scripts/train_zoo.py --check               # only score the models already in examples/zoo/
    python3 scripts/train_zoo.py --check --score OUT   # also score OUT, e.g. from
                                                       #   smelt merge examples/zoo/merge.yml OUT

("python3" is Debian's /usr/bin/python3, the one with python3-torch.) Optional but 10-20x faster:
libopenblas0-pthread, which the script preloads by itself (see OPENBLAS below). A full run takes
about 5 minutes on two lightly loaded cores, 15 beside heavy compile jobs.

What it makes, under examples/zoo/:

    base/          a Llama trained from scratch on a general synthetic text mix (sentences,
                   counting, spelling, copying lines; see general_line())
    ft-add/        the base fine-tuned gently on 2-digit addition     "12+35=" -> "47"
    ft-rev/        the base fine-tuned gently on reversing a word     "rev abcd=" -> "dcba"
    ft-up/         the base fine-tuned gently on uppercasing a word   "up abcd=" -> "ABCD"
    ft-next/       the base fine-tuned gently on next letters         "next abcz=" -> "bcda"
    tasks/<t>.jsonl      test split (smelt eval format: prompt, answer, stop)
    tasks/<t>.val.jsonl  validation split
    tasks/add_mc[.val].jsonl  multiple choice over the same held-out addition prompts
    text.txt       held-out general text from the base's distribution (for perplexity)
    merge.yml      the task_arithmetic merge of the four fine-tunes that beats every single model

Each model folder is a Hugging Face folder: config.json (LlamaForCausalLM), model.safetensors
(float16, written by write_safetensors() below), tokenizer.json, tokenizer_config.json and
special_tokens_map.json. The tokenizer is byte level: id 0 <s> (BOS), 1 </s> (EOS), 2 <pad>, then
id 3 + b for byte b (BPE over the 256 ByteLevel symbols, no merges, ByteLevel pre-tokenizer without
regex or prefix space, ByteLevel decoder, TemplateProcessing "<s> $A"). encode() below is what
training used; `smelt tokenize examples/zoo/base "text"` gives the same ids.

The model is the standard Hugging Face Llama written in plain torch (RMSNorm, rotate-half RoPE,
SwiGLU MLP, grouped-query attention, tied embeddings), with HF's tensor names.

Determinism: every random choice comes from random.Random / torch generators with fixed seeds
(SEED below), torch runs single-threaded with deterministic algorithms, so a rerun on the same
torch build writes the same files. The held-out task splits come from a seeded shuffle of all
distinct prompts; the script asserts that train, validation and test prompts are disjoint.

--check scores every model and the merge of merge.yml (task arithmetic, MERGE_WEIGHTS) on the test splits
(greedy generation until "\\n" or EOS, exact match: what `smelt eval` does) and prints the table.
The weights are scored as stored (float16), and the merge is computed from the stored weights and
rounded to float16, as `smelt merge examples/zoo/merge.yml` with dtype float16 gives.
"""

import argparse
import json
import math
import os
import random
import string
import struct
import sys
import time

OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
if __name__ == "__main__" and os.path.exists(OPENBLAS) and "LD_PRELOAD" not in os.environ:
    # Debian's torch calls the reference BLAS through libblas.so.3, 10-20x slower than OpenBLAS;
    # with libopenblas0-pthread installed, run on OpenBLAS without changing the system default.
    os.environ.update(LD_PRELOAD=OPENBLAS, OPENBLAS_NUM_THREADS="1")
    os.execv(sys.executable, [sys.executable] + sys.argv)

import numpy as np
import torch
import torch.nn.functional as F

SEED = 1234
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, "examples", "zoo")

BOS, EOS, PAD = 0, 1, 2
OFFSET = 3
VOCAB = 256 + OFFSET

CONFIG = dict(
    vocab_size=VOCAB,
    hidden_size=96,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=24,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=128,
    tie_word_embeddings=True,
    bos_token_id=BOS,
    eos_token_id=EOS,
)

MAX_NEW_TOKENS = 8


# ---------------------------------------------------------------------------------------------
# tokenizer


def encode(text, bos=True):
    return ([BOS] if bos else []) + [OFFSET + b for b in text.encode("utf-8")]


def decode(ids):
    return bytes(i - OFFSET for i in ids if i >= OFFSET).decode("utf-8", errors="replace")


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (what the ByteLevel components use)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tokenizer_files():
    b2u = bytes_to_unicode()
    vocab = {"<s>": BOS, "</s>": EOS, "<pad>": PAD}
    for b in range(256):
        vocab[b2u[b]] = OFFSET + b

    def added(i, content):
        return {"id": i, "content": content, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False, "special": True}

    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(BOS, "<s>"), added(EOS, "</s>"), added(PAD, "<pad>")],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [BOS], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                    "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "model_max_length": CONFIG["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
    }
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    return tok, cfg, special


# ---------------------------------------------------------------------------------------------
# model: Hugging Face Llama in plain torch


class Llama(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        h, d = c["hidden_size"], c["head_dim"]
        nh, nkv, inter = c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
        P = torch.nn.Parameter
        self.p = torch.nn.ParameterDict()
        self.names = []

        def add(name, *shape, ones=False):
            t = torch.ones(*shape) if ones else torch.randn(*shape) * 0.02
            self.p[name.replace(".", "__")] = P(t)
            self.names.append(name)

        add("model.embed_tokens.weight", c["vocab_size"], h)
        for i in range(c["num_hidden_layers"]):
            L = f"model.layers.{i}."
            add(L + "input_layernorm.weight", h, ones=True)
            add(L + "self_attn.q_proj.weight", nh * d, h)
            add(L + "self_attn.k_proj.weight", nkv * d, h)
            add(L + "self_attn.v_proj.weight", nkv * d, h)
            add(L + "self_attn.o_proj.weight", h, nh * d)
            add(L + "post_attention_layernorm.weight", h, ones=True)
            add(L + "mlp.gate_proj.weight", inter, h)
            add(L + "mlp.up_proj.weight", inter, h)
            add(L + "mlp.down_proj.weight", h, inter)
        add("model.norm.weight", h, ones=True)
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        t = torch.arange(c["max_position_embeddings"], dtype=torch.float32)
        freqs = torch.outer(t, inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def w(self, name):
        return self.p[name.replace(".", "__")]

    def state(self):
        return {n: self.w(n).detach().clone() for n in self.names}

    def load(self, sd):
        with torch.no_grad():
            for n in self.names:
                self.w(n).copy_(sd[n].float())

    def rms(self, x, name):
        var = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + self.c["rms_norm_eps"]) * self.w(name)

    @staticmethod
    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, ids):
        c = self.c
        B, T = ids.shape
        nh, nkv, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        x = F.embedding(ids, self.w("model.embed_tokens.weight"))
        cos, sin = self.cos[:T], self.sin[:T]
        mask = torch.full((T, T), float("-inf")).triu(1)
        for i in range(c["num_hidden_layers"]):
            L = f"model.layers.{i}."
            hdn = self.rms(x, L + "input_layernorm.weight")
            q = F.linear(hdn, self.w(L + "self_attn.q_proj.weight")).view(B, T, nh, d).transpose(1, 2)
            k = F.linear(hdn, self.w(L + "self_attn.k_proj.weight")).view(B, T, nkv, d).transpose(1, 2)
            v = F.linear(hdn, self.w(L + "self_attn.v_proj.weight")).view(B, T, nkv, d).transpose(1, 2)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            rep = nh // nkv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(d) + mask
            o = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, nh * d)
            x = x + F.linear(o, self.w(L + "self_attn.o_proj.weight"))
            hdn = self.rms(x, L + "post_attention_layernorm.weight")
            g = F.linear(hdn, self.w(L + "mlp.gate_proj.weight"))
            u = F.linear(hdn, self.w(L + "mlp.up_proj.weight"))
            x = x + F.linear(F.silu(g) * u, self.w(L + "mlp.down_proj.weight"))
        x = self.rms(x, "model.norm.weight")
        return F.linear(x, self.w("model.embed_tokens.weight"))


# ---------------------------------------------------------------------------------------------
# safetensors, written by hand


def write_safetensors(path, tensors, dtype=torch.float16):
    code = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}[dtype]
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(dtype).contiguous()
        raw = t.view(torch.int16).numpy().astype("<i2").tobytes() if t.element_size() == 2 \
            else t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        assert info["dtype"] == "F16", info["dtype"]
        arr = np.frombuffer(data[a:b], dtype="<f2").reshape(info["shape"])
        out[name] = torch.from_numpy(arr.astype(np.float32))
    return out


def save_model(folder, model):
    os.makedirs(folder, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **CONFIG,
           "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
           "torch_dtype": "float16"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(folder, "model.safetensors"), model.state())
    tok, tcfg, special = tokenizer_files()
    for name, obj in [("tokenizer.json", tok), ("tokenizer_config.json", tcfg),
                      ("special_tokens_map.json", special)]:
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")


def f16(sd):
    return {k: v.half().float() for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------
# data

NOUNS = ("cat dog fox bird fish tree house river stone cloud horse apple boat road hill lamp "
         "book door star moon sun ship cake bell farm king queen girl boy mouse frog wolf bear "
         "seed leaf rain snow wind city town garden window table chair letter number word song").split()
ADJS = ("red blue green small big old young happy sad quick slow bright dark warm cold quiet "
        "loud tall short soft hard new wild calm brave").split()
VERBS = ("sees likes finds takes makes holds wants meets helps follows paints reads moves "
         "calls builds opens").split()
NAMES = "Anna Ben Clara David Emma Felix Greta Hugo Ida Jonas Karla Leo Mia Nora Otto Paul".split()
PLACES = "Amber Birch Cedar Delta Echo Fjord Granite Harbor Iris Juniper Kestrel Lumen".split()
NUMW = "zero one two three four five six seven eight nine ten".split()
LETTERS = string.ascii_lowercase


def rand_word(rng, lo, hi):
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


TASK_RATE = 0.04  # per task: the chance that a line of the general mix is one of its training examples


def general_line(rng, task_train=None):
    """One line of the base's general text mix. With task_train ({task: training pairs}), a few
    lines are task examples (training split only), as a pretraining corpus holds a little of
    everything: the base is weak but not hopeless on the tasks, and the fine-tunes stay gentle."""
    if task_train:
        k = rng.random()
        for pairs in task_train.values():
            if k < TASK_RATE:
                p, a = rng.choice(pairs)
                return p + a
            k -= TASK_RATE
    k = rng.random()
    if k < 0.22:
        s = f"the {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)}."
        return s[0].upper() + s[1:]
    if k < 0.30:
        return f"{rng.choice(NAMES)} lives in {rng.choice(PLACES)} and has {rng.choice(NUMW)} {rng.choice(NOUNS)}s."
    if k < 0.38:
        a = rng.randint(0, 95)
        n = rng.randint(3, 6)
        return "count " + " ".join(str(a + i) for i in range(n))
    if k < 0.48:
        w = rng.choice(NOUNS + ADJS) if rng.random() < 0.5 else rand_word(rng, 3, 6)
        return f"spell {w}: " + " ".join(w)
    if k < 0.64:
        w = rand_word(rng, 3, 6) if rng.random() < 0.7 else str(rng.randint(0, 199))
        return f"say {w}={w}"
    if k < 0.72:
        w = rng.choice(NOUNS + ADJS)
        return f"{w.upper()} is {w} in capitals."
    if k < 0.78:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return f"{a} and {b} are two numbers."
    if k < 0.86:
        return "letters " + " ".join(LETTERS[rng.randint(0, 20):][:rng.randint(3, 6)])
    if k < 0.92:
        return " ".join(rng.choice(NOUNS) for _ in range(rng.randint(3, 6)))
    s = f"{rng.choice(NAMES)} {rng.choice(VERBS)} a {rng.choice(ADJS)} {rng.choice(NOUNS)} near the {rng.choice(NOUNS)}."
    return s


def general_doc(rng, max_len, task_train=None):
    ids = [BOS]
    while True:
        line = encode(general_line(rng, task_train) + "\n", bos=False)
        if len(ids) + len(line) > max_len:
            break
        ids += line
    return ids


# Tasks: every distinct prompt, its answer; split by a seeded shuffle.
def task_add():
    return [(f"{a}+{b}=", str(a + b)) for a in range(10, 100) for b in range(10, 100)]


def task_words(rng, n):
    seen, out = set(), []
    while len(out) < n:
        w = rand_word(rng, 3, 5)
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def task_rev(words):
    return [(f"rev {w}=", w[::-1]) for w in words]


def task_up(words):
    return [(f"up {w}=", w.upper()) for w in words]


def task_next(words):
    return [(f"next {w}=", "".join(LETTERS[(LETTERS.index(ch) + 1) % 26] for ch in w)) for w in words]


N_TEST, N_VAL = 100, 100


def make_tasks():
    rng = random.Random(SEED + 1)
    words = task_words(rng, 6000)
    tasks = {"add": task_add(), "rev": task_rev(words[:2000]), "up": task_up(words[2000:4000]),
             "next": task_next(words[4000:])}
    splits = {}
    for name, pairs in tasks.items():
        pairs = sorted(set(pairs))
        random.Random(f"{SEED}-{name}").shuffle(pairs)
        test, val, train = pairs[:N_TEST], pairs[N_TEST:N_TEST + N_VAL], pairs[N_TEST + N_VAL:]
        tp, vp, rp = ({p for p, _ in s} for s in (test, val, train))
        assert not (tp & vp) and not (tp & rp) and not (vp & rp), name
        splits[name] = (train, val, test)
    return splits


def write_jsonl(path, pairs):
    with open(path, "w") as f:
        for p, a in pairs:
            f.write(json.dumps({"prompt": p, "answer": a, "stop": ["\n"]}) + "\n")


def add_mc(pairs, seed):
    """Multiple-choice lines over addition prompts: the sum and three near misses."""
    rng = random.Random(seed)
    out = []
    for p, a in pairs:
        n = int(a)
        wrong = sorted({n + d for d in (-10, -1, 1, 10, 11, -11) if n + d >= 0} - {n})
        choices = [str(c) for c in rng.sample(wrong, 3)] + [a]
        rng.shuffle(choices)
        out.append({"prompt": p, "choices": choices, "label": choices.index(a)})
    return out


def task_doc(rng, train, max_len, mix, task_train):
    """Task lines mixed with general lines (a fraction `mix` of the lines) in one sequence.
    The loss covers the task answers (with their newlines) and the whole general lines, so the
    fine-tune keeps the base's behaviour on other prompts: it must tell its task by the prompt."""
    ids, mask = [BOS], [0]
    while True:
        if rng.random() < mix:
            g = encode(general_line(rng, task_train) + "\n", bos=False)
            if len(ids) + len(g) > max_len:
                break
            ids += g
            mask += [1] * len(g)
            continue
        p, a = rng.choice(train)
        pi, ai = encode(p, bos=False), encode(a + "\n", bos=False)
        if len(ids) + len(pi) + len(ai) > max_len:
            break
        ids += pi + ai
        mask += [0] * len(pi) + [1] * len(ai)
    return ids, mask


def batchify(docs):
    T = max(len(d[0]) for d in docs)
    ids = torch.full((len(docs), T), PAD, dtype=torch.long)
    m = torch.zeros((len(docs), T))
    for i, (d, k) in enumerate(docs):
        ids[i, :len(d)] = torch.tensor(d)
        m[i, :len(k)] = torch.tensor(k, dtype=torch.float32)
    return ids, m


# ---------------------------------------------------------------------------------------------
# training


def train(model, steps, lr, make_batch, warmup=20, log=""):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    t0 = time.time()
    for step in range(steps):
        cur = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = cur
        ids, m = make_batch()
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="none")
        mm = m[:, 1:].reshape(-1)
        loss = (loss * mm).sum() / mm.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  {log} step {step:5d} loss {loss.item():.4f} lr {cur:.2e} "
                  f"{time.time() - t0:.0f}s", flush=True)


# ---------------------------------------------------------------------------------------------
# scoring


@torch.no_grad()
def generate_score(model, pairs, bs=100):
    correct = 0
    for s in range(0, len(pairs), bs):
        chunk = pairs[s:s + bs]
        seqs = [encode(p) for p, _ in chunk]
        outs = [[] for _ in chunk]
        done = [False] * len(chunk)
        for _ in range(MAX_NEW_TOKENS):
            T = max(len(q) for q in seqs)
            ids = torch.full((len(seqs), T), PAD, dtype=torch.long)
            for i, q in enumerate(seqs):
                ids[i, :len(q)] = torch.tensor(q)
            logits = model(ids)
            for i, q in enumerate(seqs):
                if done[i]:
                    continue
                nxt = int(logits[i, len(q) - 1].argmax())
                if nxt == EOS:
                    done[i] = True
                    continue
                q.append(nxt)
                outs[i].append(nxt)
                if "\n" in decode(outs[i]):
                    done[i] = True
            if all(done):
                break
        for (p, a), o in zip(chunk, outs):
            text = decode(o).split("\n")[0]
            correct += text == a
    return correct / len(pairs)


@torch.no_grad()
def choice_score(model, lines):
    """acc and acc_norm (log-likelihood divided by the choice's length in characters)."""
    acc = acc_norm = 0
    for ln in lines:
        lls, norms = [], []
        for c in ln["choices"]:
            p, full = encode(ln["prompt"]), encode(ln["prompt"] + c)
            logp = model(torch.tensor([full[:-1]]))[0].log_softmax(-1)
            ll = sum(float(logp[i - 1, full[i]]) for i in range(len(p), len(full)))
            lls.append(ll)
            norms.append(ll / len(c))
        acc += max(range(len(lls)), key=lls.__getitem__) == ln["label"]
        acc_norm += max(range(len(norms)), key=norms.__getitem__) == ln["label"]
    return acc / len(lines), acc_norm / len(lines)


def task_arithmetic(base, fts, weights):
    """base + sum_i w_i (ft_i - base), rounded to float16 (smelt's task_arithmetic, normalize false)."""
    return f16({k: base[k] + sum(w * (ft[k] - base[k]) for ft, w in zip(fts, weights)) for k in base})


def ties(base, fts, weight, density, lam=1.0):
    """TIES as smelt (docs/methods.md) and mergekit: keep the top `density` of each delta by
    magnitude, elect a sign per element, average the deltas that agree with it."""
    out = {}
    for k, b in base.items():
        ds = []
        for ft in fts:
            d = (ft[k] - b).flatten()
            keep = int(density * d.numel())
            if keep < d.numel():
                mask = torch.zeros_like(d)
                if keep > 0:
                    mask[d.abs().topk(keep).indices] = 1
                d = d * mask
            ds.append(weight * d)
        D = torch.stack(ds)
        sgn = torch.where(D.sum(0) >= 0, 1.0, -1.0)
        m = (torch.sign(D) == sgn).float()
        div = (m * weight).sum(0)
        div[div == 0] = 1
        out[k] = b + lam * ((m * D).sum(0) / div).view(b.shape)
    return f16(out)


def score_table(models, tests):
    m = Llama(CONFIG)
    rows = {}
    for name, sd in models.items():
        m.load(sd)
        rows[name] = {t: generate_score(m, pairs) for t, pairs in tests.items()}
        rows[name]["mean"] = sum(rows[name][t] for t in tests) / len(tests)
    return rows


def print_table(rows, tasks):
    cols = list(tasks) + ["mean"]
    w = max(len(r) for r in rows) + 2
    lines = ["| model".ljust(w + 2) + " | " + " | ".join(c.rjust(5) for c in cols) + " |",
             "|" + "-" * (w + 1) + "|" + "|".join("-" * 7 for _ in cols) + "|"]
    for r, v in rows.items():
        lines.append("| " + r.ljust(w) + " | " + " | ".join(f"{v[c]:.2f}".rjust(5) for c in cols) + " |")
    print("\n".join(lines), flush=True)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

BASE_STEPS, BASE_LR, BASE_BS, BASE_LEN = 2000, 3e-3, 24, 64
FT_STEPS, FT_LR, FT_BS, FT_LEN = 300, 3e-4, 24, 64
FT_MIX = 0.5  # fraction of the lines of a fine-tune sequence that are general text
# Task-arithmetic weights of the merge (merge.yml). The base already solves up and next (it saw
# their examples in its mix), so their task vectors add little but interference: small weights.
MERGE_WEIGHTS = {"add": 0.8, "rev": 0.8, "up": 0.1, "next": 0.1}
MERGE_NAME = "task_arithmetic " + " ".join(f"{t}={w}" for t, w in MERGE_WEIGHTS.items())
FTS = ["add", "rev", "up", "next"]


def train_all(splits, reuse_base=False, only=None):
    task_train = {t: splits[t][0] for t in FTS}
    torch.manual_seed(SEED)
    base = Llama(CONFIG)
    rng = random.Random(SEED + 2)
    print(f"base: {sum(p.numel() for p in base.parameters())} parameters", flush=True)

    def base_batch():
        docs = [general_doc(rng, BASE_LEN, task_train) for _ in range(BASE_BS)]
        return batchify([(d, [1] * len(d)) for d in docs])

    if reuse_base:
        base_sd = read_safetensors(os.path.join(ZOO, "base", "model.safetensors"))
    else:
        train(base, BASE_STEPS, BASE_LR, base_batch, warmup=50, log="base")
        base_sd = f16(base.state())
        save_model(os.path.join(ZOO, "base"), base)
    for t in FTS:
        if only and t not in only:
            continue
        torch.manual_seed(SEED + 10 + FTS.index(t))
        m = Llama(CONFIG)
        m.load(base_sd)
        trng = random.Random(f"{SEED}-ft-{t}")
        tr = splits[t][0]

        def ft_batch():
            docs = []
            for _ in range(FT_BS):
                docs.append(task_doc(trng, tr, FT_LEN, FT_MIX, task_train))
            return batchify(docs)

        train(m, FT_STEPS, FT_LR, ft_batch, warmup=10, log=f"ft-{t}")
        save_model(os.path.join(ZOO, f"ft-{t}"), m)


def write_data(splits):
    os.makedirs(os.path.join(ZOO, "tasks"), exist_ok=True)
    for t, (train_, val, test) in splits.items():
        write_jsonl(os.path.join(ZOO, "tasks", f"{t}.jsonl"), test)
        write_jsonl(os.path.join(ZOO, "tasks", f"{t}.val.jsonl"), val)
    # multiple choice (log-likelihood of each choice) over the same held-out addition prompts
    for suffix, pairs, seed in [("", splits["add"][2], 1), (".val", splits["add"][1], 2)]:
        with open(os.path.join(ZOO, "tasks", f"add_mc{suffix}.jsonl"), "w") as f:
            for line in add_mc(pairs, f"{SEED}-mc-{seed}"):
                f.write(json.dumps(line) + "\n")
    rng = random.Random(SEED + 99)  # a stream the training never drew from
    text = []
    while sum(len(s) + 1 for s in text) < 4000:
        text.append(general_line(rng))
    with open(os.path.join(ZOO, "text.txt"), "w") as f:
        f.write("\n".join(text) + "\n")
    with open(os.path.join(ZOO, "merge.yml"), "w") as f:
        f.write("# Task arithmetic of the zoo's four fine-tunes (scripts/train_zoo.py --check\n"
                "# shows it beats the base and every fine-tune on the mean over the tasks).\n"
                "# The base already solves up and next, so their vectors get small weights.\n"
                "# Paths are relative to the repository root.\nmodels:\n")
        for t in FTS:
            f.write(f"  - model: examples/zoo/ft-{t}\n    parameters:\n      weight: {MERGE_WEIGHTS[t]}\n")
        f.write("merge_method: task_arithmetic\nbase_model: examples/zoo/base\ndtype: float16\n")


def check(splits, lams=(), densities=(), extra=()):
    tests = {t: splits[t][2] for t in FTS}
    models = {"base": read_safetensors(os.path.join(ZOO, "base", "model.safetensors"))}
    for t in FTS:
        models[f"ft-{t}"] = read_safetensors(os.path.join(ZOO, f"ft-{t}", "model.safetensors"))
    fts = [models[f"ft-{t}"] for t in FTS]
    models[MERGE_NAME] = task_arithmetic(models["base"], fts, [MERGE_WEIGHTS[t] for t in FTS])
    for lam in lams:
        models[f"task_arithmetic w={lam}"] = task_arithmetic(models["base"], fts, [lam] * len(fts))
    for dens in densities:
        models[f"ties d={dens}"] = ties(models["base"], fts, 1.0, dens)
    for folder in extra:  # e.g. the output of `smelt merge examples/zoo/merge.yml OUT`
        models[folder] = read_safetensors(os.path.join(folder, "model.safetensors"))
    rows = score_table(models, tests)
    print_table(rows, FTS)
    with open(os.path.join(ZOO, "tasks", "add_mc.jsonl")) as f:
        mc = [json.loads(x) for x in f]
    m = Llama(CONFIG)
    print("\nadd_mc (multiple choice, 4 choices):\n| model | acc | acc_norm |\n|---|---|---|")
    for name, sd in models.items():
        m.load(sd)
        a, an = choice_score(m, mc)
        print(f"| {name} | {a:.2f} | {an:.2f} |", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only score the models in examples/zoo")
    ap.add_argument("--lambdas", default=None, help="comma-separated merge weights to score")
    ap.add_argument("--ties", default=None, help="comma-separated TIES densities to score")
    ap.add_argument("--score", nargs="*", default=[],
                    help="also score these model folders (one model.safetensors in float16)")
    ap.add_argument("--out", default=None, help="write the zoo here instead of examples/zoo")
    ap.add_argument("--task-rate", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse-base", action="store_true",
                    help="keep examples/zoo/base (as a full run would make it) and retrain the fine-tunes")
    ap.add_argument("--only", default=None, help="comma-separated fine-tunes to (re)train")
    args = ap.parse_args()
    global ZOO, TASK_RATE
    if args.out:
        ZOO = os.path.abspath(args.out)
    if args.task_rate is not None:
        TASK_RATE = args.task_rate
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    splits = make_tasks()
    lams = [float(x) for x in args.lambdas.split(",")] if args.lambdas else []
    if not args.check:
        t0 = time.time()
        write_data(splits)
        train_all(splits, args.reuse_base, args.only.split(",") if args.only else None)
        print(f"trained in {time.time() - t0:.0f}s", flush=True)
    dens = [float(x) for x in args.ties.split(",")] if args.ties else []
    rows = check(splits, lams, dens, args.score)
    single = max(v["mean"] for k, v in rows.items() if k == "base" or k.startswith("ft-"))
    merged = rows[MERGE_NAME]["mean"]
    print(f"merge mean {merged:.3f} vs best single model {single:.3f}")
    if not args.check:
        assert merged > single, "the merge does not beat every single model"


if __name__ == "__main__":
    main()
