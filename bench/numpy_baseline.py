#!/usr/bin/python3
"""Per-tensor numpy baseline: runs a mergekit YAML config the way mergekit executes it, as a
cost reference for smelt's benchmark (bench/run_bench.sh). NOT mergekit, and not an oracle: the
values need not match smelt bit for bit (tests/reference/mergekit_ref.py is the oracle).

    numpy_baseline.py CONFIG OUT_DIR [--seed N] [--select partition|sort] [--read mmap|pread]
                      [--out-shard-size 5B]

What it copies from mergekit's execution model (docs/performance.md, docs/config.md):
  * one tensor at a time, whole tensors in memory, single-threaded, in tensor-name order;
  * inputs read like safetensors' safe_open: the file is memory-mapped once per model and each
    tensor is copied out of the mapping (--read pread reads each tensor with one read() instead);
  * numpy stands in for torch: bf16 is widened to float32 (uint16 << 16), the merge runs in f32,
    and the result is rounded to bf16 (round to nearest even);
  * merged tensors accumulate in an in-memory shard until the next tensor would push it over
    --out-shard-size (default 5B = 5e9 bytes, as mergekit), then the shard is written and
    fsync()ed (mergekit does not fsync; we do, so the comparison with smelt's durable output is
    fair);
  * the methods' algorithms: linear, task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs,
    breadcrumbs_ties, della, della_linear (GTA family with magnitude / Bernoulli / outlier /
    rank-based sparsification, L1 rescale, "sum" sign election), slerp (numpy f32, as mergekit)
    and model_stock. Random masks use numpy's global-seeded generator.

--select partition (default) finds top-k sets with np.argpartition (O(n)); mergekit does a full
torch.argsort, which --select sort reproduces (about 8x slower on this machine class). The
default is therefore generous to the baseline. Ranks (della) always need a sort per row; the
default inverts the permutation with a scatter, --select sort with a second argsort (mergekit).

Only scalar parameters are supported (no gradients or filters): the benchmark configs use none.
At exit prints one line to stderr:
    baseline: N tensors, T s, peak RSS X MiB (VmHWM), peak anon Y MiB (sampled)
"""

import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import yaml

RAW = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
ELEM = {"F32": 4, "F16": 2, "BF16": 2}
CONFIG_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}

# --------------------------------------------------------------------------------------------
# memory accounting (for the report; /usr/bin/time gives the authoritative peak RSS)

_peak_anon_kib = 0


def sample_anon():
    global _peak_anon_kib
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    _peak_anon_kib = max(_peak_anon_kib, int(line.split()[1]))
                    return
    except OSError:
        pass


def vm_hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------------------------
# dtype conversion


def to_f32(dtype, raw):
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def from_f32(dtype, x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "BF16":
        u = x.view(np.uint32)
        r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
        r = r.astype(np.uint16)
        nan = np.isnan(x)
        if nan.any():
            r[nan] = 0x7FC0
        return r
    return x.astype(RAW[dtype])


# --------------------------------------------------------------------------------------------
# safetensors reading (safe_open-like) and writing


class Model:
    def __init__(self, path, read_mode):
        self.path = path
        self.read_mode = read_mode
        self.where = {}  # name -> (file, dtype, shape, begin, end)
        self.maps = {}
        self.fds = {}
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(path):
            files = [path]
        elif os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            files = [os.path.join(path, x) for x in files]
        else:
            files = [os.path.join(path, "model.safetensors")]
        for file in files:
            with open(file, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            for name, e in header.items():
                b, en = e["data_offsets"]
                self.where[name] = (file, e["dtype"], tuple(e["shape"]), 8 + n + b, 8 + n + en)

    def load(self, name):
        """(dtype, raw array) — a private copy, like safe_open(...).get_tensor(name)."""
        file, dtype, shape, b, e = self.where[name]
        if dtype not in RAW:
            raise SystemExit(f"baseline: {name}: dtype {dtype} not supported")
        if self.read_mode == "mmap":
            if file not in self.maps:
                self.maps[file] = np.memmap(file, dtype=np.uint8, mode="r")
            raw = np.array(self.maps[file][b:e])  # copy out of the mapping
        else:
            if file not in self.fds:
                self.fds[file] = open(file, "rb", buffering=0)
            raw = np.empty(e - b, dtype=np.uint8)
            f = self.fds[file]
            f.seek(b)
            got = f.readinto(memoryview(raw))
            while got < e - b:
                more = f.readinto(memoryview(raw)[got:])
                if not more:
                    raise SystemExit(f"baseline: {file}: short read")
                got += more
        return dtype, raw.view(RAW[dtype]).reshape(shape)


class ShardWriter:
    """mergekit's TensorWriter: accumulate tensors, flush a shard when the next would overflow."""

    def __init__(self, out_dir, max_shard):
        self.out_dir, self.max_shard = out_dir, max_shard
        self.current, self.current_bytes, self.shards = {}, 0, []

    def save(self, name, dtype, arr):
        nb = arr.nbytes
        if self.current and self.current_bytes + nb > self.max_shard:
            self.flush()
        self.current[name] = (dtype, arr)
        self.current_bytes += nb

    def flush(self):
        if not self.current:
            return
        idx = len(self.shards) + 1
        file = os.path.join(self.out_dir, f"model-{idx}.safetensors")
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, (dtype, arr) in self.current.items():
            header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + arr.nbytes]}
            off += arr.nbytes
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)
        with open(file, "wb") as f:
            f.write(struct.pack("<Q", len(h)))
            f.write(h)
            for _, arr in self.current.values():
                f.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        self.shards.append((file, list(self.current)))
        self.current, self.current_bytes = {}, 0

    def finish(self):
        self.flush()
        n = len(self.shards)
        if n == 1:
            os.rename(self.shards[0][0], os.path.join(self.out_dir, "model.safetensors"))
        else:
            weight_map = {}
            for i, (file, names) in enumerate(self.shards):
                final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                os.rename(file, os.path.join(self.out_dir, final))
                for name in names:
                    weight_map[name] = final
            with open(os.path.join(self.out_dir, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2)
        fd = os.open(self.out_dir, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


# --------------------------------------------------------------------------------------------
# sparsification (docs/methods.md)

SELECT = "partition"
RNG = np.random.default_rng(0)


def rescale_l1(delta, masked):
    before = float(np.abs(delta).sum(dtype=np.float64))
    after = float(np.abs(masked).sum(dtype=np.float64))
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * np.float32(before / after)


def magnitude(delta, density, rescale):
    if density >= 1:
        return delta
    n = delta.size
    k = int(density * n)
    if k <= 0:
        raise SystemExit("baseline: magnitude: density gives k = 0")
    w = np.abs(delta).ravel()
    if SELECT == "sort":
        top = np.argsort(-w, kind="quicksort")[:k]  # torch.argsort(w, descending=True)[:k]
    else:
        top = np.argpartition(w, n - k)[n - k:]
    del w
    mask = np.zeros(n, dtype=np.float32)  # mergekit: mask = zeros_like(tensor)
    mask[top] = 1
    del top
    masked = delta * mask.reshape(delta.shape)
    return rescale_l1(delta, masked) if rescale else masked


def bernoulli(delta, density, rescale):
    if density >= 1:
        return delta
    mask = RNG.random(delta.shape, dtype=np.float32) < np.float32(density)
    masked = delta * mask
    return rescale_l1(delta, masked) if rescale else masked


def magnitude_outliers(delta, density, rescale, gamma):
    if density >= 1:
        return delta
    n = delta.size
    keep = int(density * n)
    n_top = int(gamma * n)
    n_bot = n - keep - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    w = np.abs(delta).ravel()
    mask = np.zeros(n, dtype=np.float32)
    if n_top > 0:  # mergekit's slice [n_bot:-n_top] is empty when n_top == 0 (quirk)
        if SELECT == "sort":
            order = np.argsort(w, kind="quicksort")
        else:
            kth = [k for k in (n_bot, n - n_top) if 0 <= k < n]
            order = np.argpartition(w, kth) if kth else np.arange(n)
        mask[order[n_bot:n - n_top]] = 1
        del order
    del w
    masked = delta * mask.reshape(delta.shape)
    return rescale_l1(delta, masked) if rescale else masked


def della_magprune(delta, density, rescale, epsilon):
    if density >= 1:
        return delta
    if density <= 0:
        return np.zeros_like(delta)
    if density - epsilon <= 0 or density + epsilon >= 1:
        raise SystemExit("baseline: della: need 0 < density - epsilon and density + epsilon < 1")
    t = delta.reshape(1, -1) if delta.ndim == 1 else delta  # 1-D: one row; ranks along dim 1
    mags = np.abs(t)
    order = np.argsort(mags, axis=1, kind="quicksort")
    del mags
    if SELECT == "sort":
        ranks = np.argsort(order, axis=1, kind="quicksort").astype(np.float32) + 1
    else:
        ranks = np.empty(order.shape, dtype=np.float32)
        pos = np.arange(1, order.shape[1] + 1, dtype=np.float32).reshape((1, -1) + (1,) * (order.ndim - 2))
        np.put_along_axis(ranks, order, np.broadcast_to(pos, order.shape), axis=1)
    del order
    lo = ranks.min(axis=1, keepdims=True)
    hi = ranks.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rank_norm = np.clip((ranks - lo) / (hi - lo), 0, 1)
    del ranks
    p = np.float32(density - epsilon) + rank_norm * np.float32(2 * epsilon)
    del rank_norm
    mask = RNG.random(p.shape, dtype=np.float32) < p
    del p
    masked = (t * mask).reshape(delta.shape)
    return rescale_l1(delta, masked) if rescale else masked


# --------------------------------------------------------------------------------------------
# methods (docs/methods.md)

GTA = {  # method: (sparsification, consensus, default normalize, default rescale)
    "task_arithmetic": (None, False, False, False),
    "ties": ("magnitude", True, True, False),
    "dare_ties": ("random", True, False, True),
    "dare_linear": ("random", False, False, True),
    "breadcrumbs": ("outliers", False, False, False),
    "breadcrumbs_ties": ("outliers", True, False, False),
    "della": ("della", True, True, True),
    "della_linear": ("della", False, False, True),
}


def merge_gta(method, xs, base, mparams, gparams):
    kind, consensus, dnorm, dresc = GTA[method]
    normalize = bool(gparams.get("normalize", dnorm))
    rescale = bool(gparams.get("rescale", dresc))
    lam = float(gparams.get("lambda", 1.0))
    b = xs[base]
    weights, deltas = [], []
    for i, x in enumerate(xs):
        if i == base:
            continue
        d = x - b
        p = mparams[i]
        density = float(p.get("density", 1.0))
        if kind == "magnitude":
            d = magnitude(d, density, rescale)
        elif kind == "random":
            d = bernoulli(d, density, rescale)
        elif kind == "outliers":
            d = magnitude_outliers(d, density, rescale, float(p.get("gamma", 0.01)))
        elif kind == "della":
            d = della_magprune(d, density, rescale, float(p.get("epsilon", 0.15)))
        if "weight" not in p:
            raise SystemExit(f"baseline: {method}: every non-base model needs a weight")
        weights.append(float(p["weight"]))
        deltas.append(d)
        sample_anon()
    if not deltas:
        return b
    D = np.stack([np.float32(w) * d for w, d in zip(weights, deltas)])
    del deltas
    if consensus:
        sign = np.where(D.sum(axis=0) >= 0, np.float32(1), np.float32(-1))
        mask = np.sign(D) == sign
        del sign
        mixed = np.where(mask, D, np.float32(0)).sum(axis=0)
        W = np.array(weights, dtype=np.float32).reshape((-1,) + (1,) * b.ndim)
        divisor = np.where(mask, W, np.float32(0)).sum(axis=0)
        del mask
        divisor[divisor == 0] = 1
    else:
        mixed = D.sum(axis=0)
        divisor = sum(weights)
        if abs(divisor) < 1e-8:
            divisor = 1.0
    sample_anon()
    del D
    if normalize:
        mixed = mixed / divisor
    if lam != 1:
        mixed = mixed * np.float32(lam)
    return b + mixed


def merge_linear(xs, mparams, gparams):
    weights = [float(p["weight"]) for p in mparams]
    out = np.zeros_like(xs[0])
    for w, x in zip(weights, xs):
        out += np.float32(w) * x
    if gparams.get("normalize", True):
        out /= np.float32(sum(weights))
    return out


def merge_slerp(xs, base, gparams):
    if len(xs) == 1:
        return xs[0]
    t = float(gparams["t"])
    v0, v1 = xs[base], xs[1 - base]
    # mergekit's numpy slerp: copies, normalise, dot, then blend the originals
    v0c, v1c = v0.copy(), v1.copy()
    n0, n1 = np.linalg.norm(v0c), np.linalg.norm(v1c)
    if n0 > 1e-8:
        v0c /= n0
    if n1 > 1e-8:
        v1c /= n1
    dot = float(np.sum(v0c * v1c))
    del v0c, v1c
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    theta0 = math.acos(dot)
    s0 = math.sin(theta0 - theta0 * t) / math.sin(theta0)
    s1 = math.sin(theta0 * t) / math.sin(theta0)
    return np.float32(s0) * v0 + np.float32(s1) * v1


def merge_model_stock(xs, base, gparams):
    w0 = xs[base]
    others = [x for i, x in enumerate(xs) if i != base]
    if len(others) < 2:
        raise SystemExit("baseline: model_stock needs at least 3 models")
    if gparams.get("filter_wise", False):
        raise SystemExit("baseline: model_stock filter_wise not implemented")
    offsets = [(x - w0).ravel() for x in others]
    cos, pairs = 0.0, 0
    for j in range(len(offsets)):
        for k in range(j + 1, len(offsets)):
            nj = float(np.linalg.norm(offsets[j]))
            nk = float(np.linalg.norm(offsets[k]))
            c = float(np.dot(offsets[j], offsets[k])) / max(nj * nk, 1e-6)
            cos += min(max(c, -1.0), 1.0)
            pairs += 1
    del offsets
    cos /= pairs
    n = len(others)
    t = n * cos / (1 + (n - 1) * cos)
    mean = others[0].copy()
    for x in others[1:]:
        mean += x
    mean /= np.float32(n)
    return np.float32(t) * mean + np.float32(1 - t) * w0


# --------------------------------------------------------------------------------------------


def parse_size(s):
    s = str(s).strip().lower()
    mult = {"k": 1e3, "m": 1e6, "b": 1e9}.get(s[-1:], None)
    return int(float(s[:-1]) * mult) if mult else int(s)


def scalar_params(d, where):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, (list, dict)):
            raise SystemExit(f"baseline: {where}: parameter {k} is not a scalar (not supported)")
        out[k] = v
    return out


def main():
    global SELECT, RNG
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--select", choices=["partition", "sort"], default="partition")
    ap.add_argument("--read", choices=["mmap", "pread"], default="mmap")
    ap.add_argument("--out-shard-size", default="5B")
    args = ap.parse_args()
    SELECT = args.select
    RNG = np.random.default_rng(args.seed)
    t_start = time.time()

    with open(args.config) as f:
        cfg = yaml.safe_load(f)
    method = cfg["merge_method"]
    if "slices" in cfg:
        raise SystemExit("baseline: slices are not supported")
    gparams = scalar_params(cfg.get("parameters"), "parameters")
    refs = [os.path.abspath(str(m["model"])) for m in cfg["models"]]
    mparams = [scalar_params(m.get("parameters"), m["model"]) for m in cfg["models"]]
    base = None
    if cfg.get("base_model"):
        bp = os.path.abspath(str(cfg["base_model"]))
        if bp in refs:
            base = refs.index(bp)
        else:
            refs.append(bp)
            mparams.append({})
            base = len(refs) - 1
    # top-level parameters are the fallback for per-model ones (mergekit precedence)
    mparams = [{**gparams, **p} for p in mparams]
    models = {r: Model(r, args.read) for r in dict.fromkeys(refs)}
    first = models[refs[base if base is not None else 0]]
    out_dtype = CONFIG_DTYPES.get(str(cfg.get("out_dtype") or cfg.get("dtype") or "").removeprefix("torch."))

    os.makedirs(args.out_dir, exist_ok=True)
    writer = ShardWriter(args.out_dir, parse_size(args.out_shard_size))
    names = sorted(first.where)  # mergekit's schedule: roughly tensor-name order
    for name in names:
        loaded = [models[r].load(name) for r in refs]
        dtype = out_dtype or loaded[base if base is not None else 0][0]
        xs = [to_f32(dt, raw) for dt, raw in loaded]
        del loaded
        sample_anon()
        if method == "linear":
            out = merge_linear(xs, mparams, gparams)
        elif method == "slerp":
            out = merge_slerp(xs, base, gparams)
        elif method == "model_stock":
            out = merge_model_stock(xs, base, gparams)
        elif method in GTA:
            out = merge_gta(method, xs, base, mparams, gparams)
        else:
            raise SystemExit(f"baseline: method {method} not implemented")
        del xs
        sample_anon()
        writer.save(name, dtype, from_f32(dtype, out))
        del out
    sample_anon()
    writer.finish()
    cfg_src = os.path.join(refs[base if base is not None else 0], "config.json")
    if os.path.isfile(cfg_src):
        with open(cfg_src, "rb") as f, open(os.path.join(args.out_dir, "config.json"), "wb") as g:
            g.write(f.read())
    print(f"baseline: {len(names)} tensors, {time.time() - t_start:.2f} s, peak RSS "
          f"{vm_hwm_kib() / 1024:.0f} MiB (VmHWM), peak anon {_peak_anon_kib / 1024:.0f} MiB (sampled)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
