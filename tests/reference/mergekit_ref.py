#!/usr/bin/python3
"""Independent reference for `smelt merge`: recomputes every output tensor of a mergekit YAML
config with numpy (float64) and compares it with what smelt wrote.

    mergekit_ref.py CONFIG OUT_DIR [--seed N]

Implements mergekit's semantics as docs/config.md (parameter values, precedence, slices) and
docs/methods.md (linear, slerp, the task arithmetic family, passthrough, sparsification) describe
them, with smelt's documented decisions:
  * everything is computed in float64 from the stored input values and rounded once to the
    output dtype (out_dtype, else dtype, else the base's (else first input's) stored dtype);
  * magnitude top-k keeps exactly floor(density*N) elements, ties broken by lowest index;
  * the DARE mask uses smelt's counter-based generator draw_uniform (src/smelt/kernels/random.h).
It is written to be read as a specification, not to be fast.

Tolerances: F32 outputs must be within 1e-6 * max|ref| of the reference (relative error with an
absolute floor for elements near zero). F16/BF16 outputs must be within 1 ulp of the reference
rounded once (round to nearest even) everywhere, and equal to it for >= 99.9% of all elements,
not counting elements whose reference lies on a rounding tie (within the F32 tolerance: the
low-precision inputs make exact ties common, and an f32 computation may land on either side);
elements within the F32 absolute floor of the reference (results near zero after cancellation)
are accepted whatever their ulp distance.
Exit status 0 when everything matches, 1 otherwise (2 for usage/config errors).
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import yaml

# ------------------------------------------------------------------------------------------
# safetensors reading and float formats

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
RAW_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8",
             "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "u1"}
CONFIG_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64"}


def bf16_bits_to_f64(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def f64_to_bf16_bits(x):
    """Round float64 -> bfloat16 (via float32; both steps round to nearest even)."""
    u = np.asarray(x, dtype=np.float64).astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(np.asarray(x, dtype=np.float64))
    return np.where(nan, 0x7FC0, rounded).astype(np.uint16)


def f64_to_f16_bits(x):
    return np.asarray(x, dtype=np.float64).astype(np.float16).view(np.uint16)


def read_safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


class Tensor:
    """A stored tensor: dtype string, shape and its raw numpy array."""

    def __init__(self, dtype, shape, raw):
        self.dtype, self.shape, self.raw = dtype, tuple(shape), raw

    def is_float(self):
        return self.dtype in FLOAT_DTYPES

    def values(self):
        """float64 values of a float tensor."""
        if self.dtype == "BF16":
            return bf16_bits_to_f64(self.raw)
        return self.raw.astype(np.float64)


class SafetensorsFolder:
    """A model folder (model.safetensors or a sharded index) or a single .safetensors file."""

    def __init__(self, path):
        self.path = path
        self.files = {}  # tensor name -> file path
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.isfile(path):
            self._add_file(path)
        elif os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            for name, file in weight_map.items():
                self.files[name] = os.path.join(path, file)
        elif os.path.isfile(single):
            self._add_file(single)
        else:
            raise RuntimeError(f"{path}: no model.safetensors or model.safetensors.index.json")
        self._headers = {}

    def _add_file(self, file):
        header, _ = read_safetensors_header(file)
        for name in header:
            self.files[name] = file

    def names(self):
        return list(self.files)

    def has(self, name):
        return name in self.files

    def load(self, name):
        file = self.files[name]
        if file not in self._headers:
            self._headers[file] = read_safetensors_header(file)
        header, data_start = self._headers[file]
        if name not in header:
            raise RuntimeError(f"{file}: index lists {name} but the file does not hold it")
        entry = header[name]
        begin, end = entry["data_offsets"]
        with open(file, "rb") as f:
            f.seek(data_start + begin)
            data = f.read(end - begin)
        raw = np.frombuffer(data, dtype=RAW_NUMPY[entry["dtype"]]).reshape(entry["shape"])
        return Tensor(entry["dtype"], entry["shape"], raw)


# ------------------------------------------------------------------------------------------
# smelt's counter-based random generator (src/smelt/kernels/random.h), uint64 wrapping

M64 = (1 << 64) - 1


def mix64_int(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def stream_key(seed, name, salt):
    h = 0xCBF29CE484222325
    for c in name.encode("utf-8"):
        h = ((h ^ c) * 0x100000001B3) & M64
    return mix64_int(mix64_int(seed ^ 0x5EED5EED5EED5EED) ^ h ^ mix64_int((salt + 0x1234567) & M64))


def draw_uniform(key, count):
    """The sparsifying methods' uniforms in [0, 1) (random.h, draw_uniform) for counters
    0..count-1 of stream `key` (exact float32 values)."""
    return draw_uniform_at(key, np.arange(count, dtype=np.uint64))


def draw_uniform_at(key, counters):
    """draw_uniform for a uint64 array of counters: a 32-bit mixer of the low half, keyed by the
    halves of mix64(key ^ mix64(counter >> 32))."""
    out = np.empty(counters.shape, dtype=np.float64)
    for hi in np.unique(counters >> np.uint64(32)):
        m = mix64_int(key ^ mix64_int(int(hi)))
        a, b = np.uint32(m & 0xFFFFFFFF), np.uint32(m >> 32)
        sel = (counters >> np.uint64(32)) == hi
        lo = (counters[sel] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        with np.errstate(over="ignore"):
            x = lo * np.uint32(0x9E3779B9) + a
            x ^= x >> np.uint32(16)
            x *= np.uint32(0x21F0AAAD)
            x ^= (x >> np.uint32(15)) ^ b
            x *= np.uint32(0x735A2D97)
            x ^= x >> np.uint32(15)
        out[sel] = (x >> np.uint32(8)).astype(np.float64) * 2.0 ** -24
    return out


# ------------------------------------------------------------------------------------------
# Parameters (docs/config.md)


def evaluate(setting, t, name):
    """Value of a parameter setting at gradient position t for tensor `name` (None = absent)."""
    if isinstance(setting, list) and setting and all(isinstance(e, dict) for e in setting):
        for entry in setting:
            f = entry.get("filter")
            if f is None or f == "*" or f in name:
                return evaluate(entry["value"], t, name)
        return None
    if isinstance(setting, list):  # gradient
        n = len(setting)
        s = t * (n - 1)
        i0 = int(math.floor(s))
        i1 = min(n - 1, i0 + 1)
        f = s - i0
        return (1 - f) * float(setting[i0]) + f * float(setting[i1])
    if isinstance(setting, dict):
        raise RuntimeError(f"a single mapping is not a parameter value: {setting}")
    return float(setting)


def lookup(pname, t, levels):
    """First level (params dict, tensor name) that yields a value for `pname`."""
    for params, name in levels:
        if params and pname in params:
            v = evaluate(params[pname], t, name)
            if v is not None:
                return v
    return None


# ------------------------------------------------------------------------------------------
# Planning: config -> output tensor jobs (docs/config.md)


class Source:
    def __init__(self, ref, params, layer_range=None):
        self.path = model_path(ref)
        self.params = params or {}
        self.layer_range = layer_range


class Job:
    """One output tensor: inputs [(Source, input name)], gradient position t, slice params."""

    def __init__(self, out_name, inputs, t, slice_params, base_index):
        self.out_name, self.inputs, self.t = out_name, inputs, t
        self.slice_params, self.base_index = slice_params, base_index


def model_path(ref):
    if isinstance(ref, dict):
        ref = ref.get("model", ref)
        if isinstance(ref, dict):
            ref = ref["path"]
    return os.path.abspath(str(ref))


def split_layer(name):
    """(prefix, layer index, rest) for `<prefix>.<N>.<rest>`, else None."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[:i]), int(p), ".".join(parts[i + 1:])
    return None


def layer_counts(names):
    counts = {}
    for n in names:
        s = split_layer(n)
        if s:
            counts[s[0]] = max(counts.get(s[0], 0), s[1] + 1)
    return counts


def is_post_weight(name):
    return name.startswith("model.norm.") or name.startswith("lm_head.")


def index_of(sources, base_path):
    for i, s in enumerate(sources):
        if base_path is not None and s.path == base_path:
            return i
    return None


def plan_models(cfg, models):
    base_path = model_path(cfg["base_model"]) if cfg.get("base_model") else None
    sources = [Source(m["model"], m.get("parameters")) for m in cfg["models"]]
    if base_path is not None and index_of(sources, base_path) is None:
        sources.append(Source(cfg["base_model"], None))
    base_index = index_of(sources, base_path)
    reference = models[sources[base_index if base_index is not None else 0].path]
    counts = layer_counts(reference.names())
    jobs = []
    for name in reference.names():
        s = split_layer(name)
        t = 0.0
        if s:
            n_layers = counts[s[0]]
            t = 1.0 if n_layers == 1 else s[1] / (n_layers - 1)
        jobs.append(Job(name, [(src, name) for src in sources], t, {}, base_index))
    return jobs


def plan_slices(cfg, models):
    slices = []
    for sl in cfg["slices"]:
        sources = [Source(s["model"], s.get("parameters"), s["layer_range"]) for s in sl["sources"]]
        base = sl.get("base_model") or cfg.get("base_model")
        base_path = model_path(base) if base else None
        slices.append((sources, sl.get("parameters") or {}, index_of(sources, base_path)))

    jobs = []
    first_sources, first_params, first_base = slices[0]
    for name in models[first_sources[0].path].names():  # pre-weights
        if split_layer(name) is None and not is_post_weight(name):
            jobs.append(Job(name, [(s, name) for s in first_sources], 0.0, first_params, first_base))
    out_layer = 0
    for sources, params, base_index in slices:
        start, end = sources[0].layer_range
        n = end - start
        for offset in range(n):
            t = 1.0 if n == 1 else offset / (n - 1)
            for name in models[sources[0].path].names():
                s = split_layer(name)
                if s is None or s[1] != start + offset:
                    continue
                prefix, _, rest = s
                out_name = f"{prefix}.{out_layer}.{rest}"
                inputs = [(src, f"{prefix}.{src.layer_range[0] + offset}.{rest}") for src in sources]
                jobs.append(Job(out_name, inputs, t, params, base_index))
            out_layer += 1
    last_sources, last_params, last_base = slices[-1]
    for name in models[last_sources[0].path].names():  # post-weights
        if split_layer(name) is None and is_post_weight(name):
            jobs.append(Job(name, [(s, name) for s in last_sources], 0.0, last_params, last_base))
    return jobs


# ------------------------------------------------------------------------------------------
# Merge methods (docs/methods.md)

GTA = {  # name: (sparsification, sign consensus, default normalize, default rescale)
    "task_arithmetic": (None, False, False, False),
    "ties": ("magnitude", True, True, False),
    "dare_ties": ("random", True, False, True),
    "dare_linear": ("random", False, False, True),
}


class Context:
    """Parameter access for one job."""

    def __init__(self, job, top_params):
        self.job, self.top = job, top_params

    def model_param(self, i, pname, default=None):
        src, in_name = self.job.inputs[i]
        levels = [(src.params, in_name), (self.job.slice_params, in_name), (self.top, in_name)]
        v = lookup(pname, self.job.t, levels)
        return default if v is None else v

    def global_param(self, pname, default=None):
        levels = [(self.job.slice_params, self.job.out_name), (self.top, self.job.out_name)]
        v = lookup(pname, self.job.t, levels)
        return default if v is None else v

    def required_model_param(self, i, pname):
        v = self.model_param(i, pname)
        if v is None:
            raise RuntimeError(f"missing parameter {pname} for input {i} of {self.job.out_name}")
        return v


def merge_linear(xs, ctx):
    weights = [ctx.required_model_param(i, "weight") for i in range(len(xs))]
    out = sum(w * x for w, x in zip(weights, xs))
    if ctx.global_param("normalize", 1.0) != 0:
        out = out / sum(weights)
    return out


def merge_slerp(xs, ctx):
    if len(xs) == 1:
        return xs[0]
    b = ctx.job.base_index
    if b is None or len(xs) != 2:
        raise RuntimeError("slerp needs a base model and exactly two inputs")
    t = ctx.global_param("t")
    if t is None:
        raise RuntimeError(f"slerp: missing t for {ctx.job.out_name}")
    v0, v1 = xs[b], xs[1 - b]

    def unit(v):
        norm = np.linalg.norm(v.ravel())
        return v / norm if norm > 1e-8 else v

    dot = float(np.sum(unit(v0) * unit(v1)))
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    theta = math.acos(dot)
    return math.sin((1 - t) * theta) / math.sin(theta) * v0 + math.sin(t * theta) / math.sin(theta) * v1


def merge_passthrough(xs, ctx):
    if len(xs) != 1:
        raise RuntimeError(f"passthrough takes one input, got {len(xs)}")
    return xs[0] * ctx.model_param(0, "scale", 1.0)


def sparsify(delta, density, kind, rescale, key):
    if density >= 1:
        return delta
    if kind == "magnitude":
        k = int(math.floor(density * delta.size))
        mask = np.zeros(delta.size, dtype=bool)
        if k > 0:
            mask[np.argsort(-np.abs(delta.ravel()), kind="stable")[:k]] = True
    else:  # random (DARE)
        mask = draw_uniform(key, delta.size) < density
    masked = np.where(mask.reshape(delta.shape), delta, 0.0)
    if rescale:
        before, after = np.abs(delta).sum(), np.abs(masked).sum()
        if before >= 1e-7 and after >= 1e-7:
            masked = masked * (before / after)
    return masked


def merge_gta(xs, ctx, method, seed):
    kind, consensus, default_normalize, default_rescale = GTA[method]
    b = ctx.job.base_index
    if b is None:
        raise RuntimeError(f"{method} needs a base model")
    base = xs[b]
    rescale = ctx.global_param("rescale", 1.0 if default_rescale else 0.0) != 0
    normalize = ctx.global_param("normalize", 1.0 if default_normalize else 0.0) != 0
    lam = ctx.global_param("lambda", 1.0)
    weights, deltas = [], []
    for i, x in enumerate(xs):
        if i == b:
            continue
        if x.shape != base.shape:
            raise RuntimeError(f"shape mismatch in {ctx.job.out_name}")
        delta = x - base
        if kind:
            density = ctx.model_param(i, "density", 1.0)
            key = stream_key(seed, ctx.job.out_name, i)
            delta = sparsify(delta, density, kind, rescale, key)
        weights.append(ctx.required_model_param(i, "weight"))
        deltas.append(delta)
    if not deltas:
        return base
    D = np.stack([w * d for w, d in zip(weights, deltas)])
    W = np.array(weights).reshape((-1,) + (1,) * base.ndim)
    if consensus:
        majority = np.where(D.sum(axis=0) >= 0, 1.0, -1.0)
        mask = np.sign(D) == majority
        mixed = np.where(mask, D, 0.0).sum(axis=0)
        divisor = np.where(mask, W, 0.0).sum(axis=0)
        divisor = np.where(divisor == 0, 1.0, divisor)
    else:
        mixed = D.sum(axis=0)
        divisor = sum(weights)
        if abs(divisor) < 1e-8:
            divisor = 1.0
    if normalize:
        mixed = mixed / divisor
    if lam != 1:
        mixed = mixed * lam
    return base + mixed


def merge(method, xs, ctx, seed):
    if method == "linear":
        return merge_linear(xs, ctx)
    if method == "slerp":
        return merge_slerp(xs, ctx)
    if method == "passthrough":
        return merge_passthrough(xs, ctx)
    if method in GTA:
        return merge_gta(xs, ctx, method, seed)
    raise RuntimeError(f"reference does not implement merge_method {method}")


# ------------------------------------------------------------------------------------------
# Comparison


def ordered16(bits):
    """16-bit float bit patterns as integers ordered like the values (+0 == -0)."""
    b = bits.astype(np.int64)
    return np.where(b & 0x8000, -(b & 0x7FFF), b)


class Report:
    def __init__(self):
        self.failures = []
        self.rows = []
        self.rounded_elements = 0
        self.rounded_mismatches = 0
        self.rounded_unexplained = 0

    def fail(self, msg):
        self.failures.append(msg)


def compare_tensor(name, expected_dtype, ref, got, report):
    """ref: float64 values (or a Tensor for copied non-float tensors); got: output Tensor."""
    if got.dtype != expected_dtype:
        report.fail(f"{name}: dtype {got.dtype}, expected {expected_dtype}")
        return
    ref_shape = ref.shape
    if got.shape != tuple(ref_shape):
        report.fail(f"{name}: shape {list(got.shape)}, expected {list(ref_shape)}")
        return
    if isinstance(ref, Tensor):  # non-float: exact copy
        same = np.array_equal(ref.raw, got.raw)
        report.rows.append((name, got.dtype, got.shape, "exact" if same else "DIFFERENT"))
        if not same:
            report.fail(f"{name}: non-float tensor differs from the copied input")
        return
    if got.dtype == "F32" or got.dtype == "F64":
        vals = got.values()
        floor = 1e-6 * float(np.max(np.abs(ref))) if ref.size else 0.0
        err = np.abs(vals - ref)
        tol = np.maximum(1e-6 * np.abs(ref), floor)
        bad = ~(err <= tol)  # NaN counts as bad
        worst = int(np.argmax(np.where(np.isnan(err), np.inf, err / np.maximum(tol, 1e-300)))) if ref.size else 0
        rel = float(err.ravel()[worst] / max(abs(ref.ravel()[worst]), floor, 1e-300)) if ref.size else 0.0
        report.rows.append((name, got.dtype, got.shape, f"max err {float(np.nanmax(err)) if ref.size else 0:.3g}"
                            f" (worst rel {rel:.3g}), {int(bad.sum())} over tol"))
        if bad.any():
            i = int(np.flatnonzero(bad.ravel())[0])
            report.fail(f"{name}: {int(bad.sum())}/{ref.size} elements off; first at flat index {i}:"
                        f" expected {ref.ravel()[i]!r}, got {vals.ravel()[i]!r}")
        return
    # F16 / BF16: compare with the reference rounded once. Two allowances, both at the F32
    # tolerance: an element may differ by 1 ulp when the reference lies on the tie between the
    # two neighbours (the low-precision inputs make exact ties common, and an f32 computation may
    # land on either side), and an element near zero (after cancellation) may differ by any number
    # of its tiny ulps as long as it is within the absolute floor.
    want = f64_to_bf16_bits(ref) if got.dtype == "BF16" else f64_to_f16_bits(ref)
    have = got.raw.view(np.uint16)
    ulps = np.abs(ordered16(want) - ordered16(have))
    got_vals = got.values()
    want_vals = bf16_bits_to_f64(want) if got.dtype == "BF16" else want.view(np.float16).astype(np.float64)
    floor = 1e-6 * float(np.max(np.abs(ref))) if ref.size else 0.0
    near_tie = (ulps == 1) & (np.abs((want_vals + got_vals) / 2 - ref) <= floor)
    near_zero = np.abs(got_vals - ref) <= floor
    differ = ulps != 0
    unexplained = differ & ~near_tie & ~near_zero
    too_far = (ulps > 1) & ~near_zero
    report.rounded_elements += ulps.size
    report.rounded_mismatches += int(differ.sum())
    report.rounded_unexplained += int(unexplained.sum())
    max_ulp = int(ulps.max()) if ulps.size else 0
    report.rows.append((name, got.dtype, got.shape, f"max {max_ulp} ulp; {int(differ.sum())} differ,"
                        f" {int(unexplained.sum())} unexplained, {int(too_far.sum())} > 1 ulp"))
    if too_far.any():
        i = int(np.flatnonzero(too_far.ravel())[0])
        report.fail(f"{name}: {int(too_far.sum())}/{ulps.size} elements more than 1 ulp off;"
                    f" first at flat index {i}: expected {ref.ravel()[i]!r}"
                    f" (rounded {want.ravel()[i]:#06x}), got {got_vals.ravel()[i]!r} ({have.ravel()[i]:#06x})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0, help="the --random-seed smelt was run with")
    args = ap.parse_args()

    with open(args.config) as f:
        cfg = yaml.safe_load(f)
    method = cfg["merge_method"]
    top_params = cfg.get("parameters") or {}
    if ("models" in cfg) == ("slices" in cfg):
        print("config needs exactly one of models / slices", file=sys.stderr)
        return 2

    models = {}
    refs = [m["model"] for m in cfg.get("models") or []]
    refs += [s["model"] for sl in cfg.get("slices") or [] for s in sl["sources"]]
    refs += [sl["base_model"] for sl in cfg.get("slices") or [] if sl.get("base_model")]
    if cfg.get("base_model"):
        refs.append(cfg["base_model"])
    for ref in refs:
        p = model_path(ref)
        if p not in models:
            models[p] = SafetensorsFolder(p)

    jobs = plan_models(cfg, models) if "models" in cfg else plan_slices(cfg, models)
    out_dtype_name = cfg.get("out_dtype") or cfg.get("dtype")
    if out_dtype_name:
        out_dtype_name = str(out_dtype_name).removeprefix("torch.")

    out = SafetensorsFolder(args.out_dir)
    report = Report()
    expected_names = set()
    for job in jobs:
        if job.out_name in expected_names:
            report.fail(f"{job.out_name}: planned twice (reference bug?)")
            continue
        expected_names.add(job.out_name)
        tensors = []
        for src, in_name in job.inputs:
            model = models[src.path]
            if not model.has(in_name) and in_name.startswith("lm_head.") and model.has("model.embed_tokens.weight"):
                in_name = "model.embed_tokens.weight"  # tied embeddings
            tensors.append(model.load(in_name))
        first = job.base_index if job.base_index is not None else 0
        if not out.has(job.out_name):
            report.fail(f"{job.out_name}: missing from the output")
            continue
        got = out.load(job.out_name)
        if not tensors[first].is_float():
            compare_tensor(job.out_name, tensors[first].dtype, tensors[first], got, report)
            continue
        expected_dtype = CONFIG_DTYPES[out_dtype_name] if out_dtype_name else tensors[first].dtype
        ref = merge(method, [t.values() for t in tensors], Context(job, top_params), args.seed)
        compare_tensor(job.out_name, expected_dtype, np.asarray(ref, dtype=np.float64), got, report)

    for name in out.names():
        if name not in expected_names:
            report.fail(f"{name}: in the output but not expected")
    check_index(args.out_dir, report)

    width = max((len(r[0]) for r in report.rows), default=10)
    for name, dtype, shape, summary in report.rows:
        print(f"{name:<{width}}  {dtype:<4} {str(list(shape)):<12} {summary}")
    if report.rounded_elements:
        n = report.rounded_elements
        print(f"16-bit outputs: {report.rounded_mismatches}/{n} elements differ from the once-rounded"
              f" reference; {report.rounded_unexplained} of them not explained by a rounding tie"
              f" or the absolute floor near zero")
        if report.rounded_unexplained > 0.001 * n:
            report.fail("more than 0.1% of 16-bit elements differ from the once-rounded reference"
                        " (not explained by rounding ties)")
    print(f"{len(report.rows)} tensors checked ({method}, seed {args.seed})")
    if report.failures:
        print(f"MISMATCH ({len(report.failures)}):")
        for msg in report.failures:
            print("  " + msg)
        return 1
    print("OK")
    return 0


def check_index(out_dir, report):
    """A sharded output: the index must list exactly the tensors of its shard files."""
    index = os.path.join(out_dir, "model.safetensors.index.json")
    shards = sorted(f for f in os.listdir(out_dir) if f.endswith(".safetensors"))
    if not os.path.isfile(index):
        if shards != ["model.safetensors"]:
            report.fail(f"no index, but the output holds {shards}")
        return
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    if "model.safetensors" in shards:
        report.fail("both model.safetensors and an index")
    listed = set(weight_map.values())
    if set(shards) != listed:
        report.fail(f"shard files {shards} but the index names {sorted(listed)}")
    n = len(listed)
    for i, file in enumerate(sorted(listed)):
        if file != f"model-{i + 1:05d}-of-{n:05d}.safetensors":
            report.fail(f"unexpected shard name {file}")
    for file in shards:
        header, _ = read_safetensors_header(os.path.join(out_dir, file))
        for name in header:
            if weight_map.get(name) != file:
                report.fail(f"{file} holds {name}, which the index maps to {weight_map.get(name)}")


if __name__ == "__main__":
    sys.exit(main())
