#!/usr/bin/env python3
"""Writes the PyTorch checkpoints in tests/data/torch/ made with a real torch.save (Debian's
python3-torch; the tests never need torch). Deterministic; rerun after changing it and commit the
output (legacy_views.bin differs from run to run: legacy storage keys are object ids; its contents
do not). sample_sd.bin, sample_module_sd.bin and sample_legacy.bin came from the shared fixtures and
are not touched here. tests/data/torch/README.md lists every file's contents. See docs/pytorch.md.
"""
import json
import os
import pickle
import sys
from collections import OrderedDict

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "torch")


def save(obj, name, **kw):
    path = os.path.join(OUT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(obj, path, **kw)


def main():
    torch.manual_seed(0)
    # Every dtype smelt reads: values 0..n-1 (bool: alternating, starting True).
    sd = OrderedDict()
    for name, dt in [("f32", torch.float32), ("f64", torch.float64), ("f16", torch.float16),
                     ("bf16", torch.bfloat16), ("i64", torch.int64), ("i32", torch.int32),
                     ("i16", torch.int16), ("i8", torch.int8), ("u8", torch.uint8),
                     ("c64", torch.complex64)]:
        sd[name] = torch.arange(6, dtype=torch.float32).reshape(2, 3).to(dt)
    sd["bool"] = torch.tensor([True, False, True, False])
    sd["scalar"] = torch.tensor(7.5)  # 0-d
    sd["empty"] = torch.zeros(0, 3)
    save(sd, "dtypes.bin")

    # Two tensors on one storage (tied weights) and a view in the middle of it.
    base = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    save(OrderedDict([("embed.weight", base), ("lm_head.weight", base),
                      ("row2", base[2]), ("col1", base[:, 1])]), "shared.bin")

    # nn.Parameter values (torch._utils._rebuild_parameter) as a module's state dict keeps them
    # when saved with keep_vars=True.
    lin = torch.nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(6, dtype=torch.float32).reshape(3, 2))
        lin.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    save(lin.state_dict(keep_vars=True), "parameters.bin")

    # A sharded checkpoint as transformers writes it.
    a = OrderedDict([("x.weight", torch.arange(4, dtype=torch.float16).reshape(2, 2))])
    b = OrderedDict([("y.weight", torch.arange(3, dtype=torch.float32) + 10),
                     ("y.bias", torch.tensor([1, 2], dtype=torch.int64))])
    save(a, "sharded/pytorch_model-00001-of-00002.bin")
    save(b, "sharded/pytorch_model-00002-of-00002.bin")
    index = {"metadata": {"total_size": 8 + 12 + 16},
             "weight_map": {"x.weight": "pytorch_model-00001-of-00002.bin",
                            "y.weight": "pytorch_model-00002-of-00002.bin",
                            "y.bias": "pytorch_model-00002-of-00002.bin"}}
    with open(os.path.join(OUT, "sharded", "pytorch_model.bin.index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")

    # Legacy layout with a transposed view and two tensors on one storage.
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    save(OrderedDict([("t", t.t()), ("a", t), ("b", t[1])]), "legacy_views.bin",
         _use_new_zipfile_serialization=False)

    # Not state dicts.
    save([torch.zeros(2)], "list.bin")
    save(5, "int.bin")
    save({"state_dict": OrderedDict([("w", torch.zeros(2))]), "epoch": 3}, "wrapped.bin")

    # Malicious: unpickling would run os.system (torch.load without weights_only does).
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/smelt-pwned-by-pickle",))

    save(OrderedDict([("w", torch.zeros(2)), ("evil", Evil())]), "evil_reduce.bin")


if __name__ == "__main__":
    sys.exit(main())
