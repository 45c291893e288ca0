#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/): small valid files of each
format plus a few hand-made edge cases. Deterministic; rerun after changing it and commit the
output. Inputs found by fuzzing (regression cases) live beside these as crash-* / regress-* files
and are not touched here. See docs/reliability.md, "Fuzzing"."""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors ---------------------------------------------------------------------------------
def safetensors(tensors, metadata=None, pad=b""):
    """tensors: list of (name, dtype, shape, data bytes), laid out in order."""
    header, blob = {}, b""
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode() + pad
    return struct.pack("<Q", len(h)) + h + blob


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


put("safetensors_header", "two_f32.safetensors", safetensors(
    [("a.weight", "F32", [2, 2], f32(1, 2, 3, 4)), ("a.bias", "F32", [2], f32(5, 6))],
    {"format": "pt"}))
put("safetensors_header", "dtypes.safetensors", safetensors(
    [("h", "F16", [2], b"\x00\x3c\x00\x40"), ("b", "BF16", [1, 2], b"\x80\x3f\x00\x40"),
     ("i", "I64", [1], struct.pack("<q", -3)), ("u", "U8", [3], b"\x01\x02\x03"),
     ("x", "BOOL", [1], b"\x01"), ("d", "F64", [], struct.pack("<d", 0.5)),
     ("e", "F8_E4M3", [2], b"\x38\x40")]))
put("safetensors_header", "empty_tensor.safetensors",
    safetensors([("z", "F32", [0, 4], b""), ("s", "F32", [], f32(7))], pad=b"   "))
put("safetensors_header", "empty_header.safetensors", struct.pack("<Q", 2) + b"{}")
# Edge cases: header length past the end, data offsets past the end, a tensor whose size does not
# match its shape, overlapping tensors, a huge shape, a non-object header.
put("safetensors_header", "len_past_end.safetensors", struct.pack("<Q", 1 << 40) + b"{}")
put("safetensors_header", "offset_past_end.safetensors",
    (lambda h: struct.pack("<Q", len(h)) + h + b"\0" * 8)(
        b'{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'))
put("safetensors_header", "overlap.safetensors",
    (lambda h: struct.pack("<Q", len(h)) + h + b"\0" * 8)(
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b'"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'))
put("safetensors_header", "huge_shape.safetensors",
    (lambda h: struct.pack("<Q", len(h)) + h)(
        b'{"t":{"dtype":"F64","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}'))
put("safetensors_header", "array_header.safetensors", struct.pack("<Q", 2) + b"[]")

# ---- model.safetensors.index.json ----------------------------------------------------------------
put("safetensors_index", "two_shards.json", json.dumps({
    "metadata": {"total_size": 48},
    "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                   "model.norm.weight": "model-00002-of-00002.safetensors",
                   "lm_head.weight": "model-00002-of-00002.safetensors"}}, indent=2))
put("safetensors_index", "one.json", '{"weight_map":{"w":"model.safetensors"}}')
put("safetensors_index", "empty_map.json", '{"weight_map":{}}')
put("safetensors_index", "bad_names.json",
    '{"weight_map":{"a":"../x.safetensors","b":"","c":".","d":3,"e":null}}')
put("safetensors_index", "not_object.json", '[{"weight_map":{"a":"b"}}]')
put("safetensors_index", "deep.json", '{"weight_map":' + "[" * 64 + "]" * 64 + "}")
put("safetensors_index", "unicode.json",
    '{"weight_map":{"\\u00e9\\ud83d\\ude00":"m\\u00e9.safetensors"}}')


# ---- GGUF ----------------------------------------------------------------------------------------
def gstr(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("<Q", len(s)) + s


SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q",
          11: "<q", 12: "<d"}


def gval(t, v):
    if t == 8:
        return gstr(v)
    if t == 9:
        et, items = v
        out = struct.pack("<IQ", et, len(items))
        return out + b"".join(gval(et, x) for x in items)
    return struct.pack(SCALAR[t], v)


def gguf(kvs, tensors, version=3, alignment=32):
    """kvs: list of (key, type, value); tensors: list of (name, ggml type, ne list, data)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", t) + gval(t, v)
    offsets, off = [], 0
    for name, typ, ne, data in tensors:
        offsets.append(off)
        off += (len(data) + alignment - 1) // alignment * alignment
    for (name, typ, ne, data), o in zip(tensors, offsets):
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", typ, o)
    out += b"\0" * ((-len(out)) % alignment)
    for name, typ, ne, data in tensors:
        out += data + b"\0" * ((-len(data)) % alignment)
    return out


def q8_0_block(scale_bits, qs):
    return struct.pack("<H", scale_bits) + bytes(q & 0xFF for q in qs)


ALL_KVS = [
    ("general.architecture", 8, "llama"), ("general.name", 8, "fuzz"),
    ("llama.block_count", 4, 2), ("x.u8", 0, 7), ("x.i8", 1, -7), ("x.u16", 2, 700),
    ("x.i16", 3, -700), ("x.i32", 5, -70000), ("x.f32", 6, 0.5), ("x.bool", 7, 1),
    ("x.u64", 10, 1 << 40), ("x.i64", 11, -(1 << 40)), ("x.f64", 12, 0.25),
    ("tokenizer.ggml.tokens", 9, (8, ["<s>", "</s>", "a", "b"])),
    ("tokenizer.ggml.scores", 9, (6, [0.0, -1.0, -2.0, -3.0])),
    ("tokenizer.ggml.token_type", 9, (5, [3, 3, 1, 1])),
    ("x.empty", 9, (4, [])),
]
put("gguf_reader", "kvs_and_tensors.gguf", gguf(ALL_KVS, [
    ("token_embd.weight", 0, [2, 4], f32(*range(8))),
    ("blk.0.attn_norm.weight", 1, [2], b"\x00\x3c\x00\x40"),
    ("blk.0.ffn_down.weight", 8, [32, 1], q8_0_block(0x3c00, range(-16, 16))),
]))
put("gguf_reader", "v2_no_tensors.gguf", gguf(ALL_KVS[:3], [], version=2))
put("gguf_reader", "aligned64.gguf", gguf(
    [("general.alignment", 4, 64), ("general.architecture", 8, "llama")],
    [("a", 0, [3], f32(1, 2, 3)), ("b", 0, [1, 1, 1, 2], f32(4, 5))], alignment=64))
put("gguf_reader", "empty.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
# Edge cases: huge counts, a huge string length, a nested array, a big-endian version field, a
# bool that is not 0/1, a tensor offset past the end.
put("gguf_reader", "huge_counts.gguf", b"GGUF" + struct.pack("<IQQ", 3, 1 << 62, 1 << 62))
put("gguf_reader", "huge_string.gguf",
    b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 61) + b"abc")
put("gguf_reader", "nested_array.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gstr("a") +
    struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 0, 1) + b"\x01")
put("gguf_reader", "big_endian.gguf", b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
put("gguf_reader", "bad_bool.gguf", gguf([("b", 7, 2)], []))
put("gguf_reader", "offset_past_end.gguf",
    gguf([], [("a", 0, [4], f32(1, 2, 3, 4))])[:-16])

# ---- YAML configs --------------------------------------------------------------------------------
with open(os.path.join(HERE, "..", "examples", "demo-ties.yml"), "rb") as f:
    put("config_yaml", "demo-ties.yml", f.read())
put("config_yaml", "linear.yml", """models:
  - model: a
    parameters: {weight: 0.5}
  - model: b@main
    parameters: {weight: [0.1, 0.9]}
merge_method: linear
dtype: float16
""")
put("config_yaml", "slices.yml", """slices:
  - sources:
      - model: a
        layer_range: [0, 4]
      - model: b
        layer_range: [0, 4]
        parameters:
          t: [{filter: self_attn, value: [0, 0.5, 1]}, {value: 0.5}]
merge_method: slerp
base_model: a
parameters: {t: 0.5}
tokenizer_source: union
out_dtype: bfloat16
""")
put("config_yaml", "passthrough.yml", """slices:
  - sources: [{model: a, layer_range: [0, 2]}]
  - sources: [{model: {model: {path: b, revision: main}}, layer_range: [1, 3]}]
merge_method: passthrough
tokenizer:
  source: base
  tokens:
    <|im_start|>: {source: {kind: zero_embed}}
    <|im_end|>: {source: b, force: true}
""")
put("config_yaml", "multi_doc.yml", """name: first
models: [{model: a}, {model: b}]
merge_method: model_stock
base_model: a
---
models: [{model: first}, {model: c, parameters: {weight: 1, density: 0.5}}]
merge_method: dare_ties
base_model: first
parameters: {normalize: false, rescale: true, lambda: 1.0}
""")
put("config_yaml", "anchors.yml", "x: &a [1, 2, *a]\nmodels: *a\nmerge_method: linear\n")
put("config_yaml", "tags.yml", "models: !!map {? [a] : b}\nmerge_method: !!str linear\n")

# ---- tokenizer.json (+ NUL + tokenizer_config.json) ----------------------------------------------
def byte_level_tokenizer():
    """A tiny byte-level BPE (ids below the fuzz target's vocab_size of 32)."""
    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2}
    for i, c in enumerate("abcdefghijklmnop\u0120\u010a"):
        vocab[c] = 3 + i
    vocab.update({"ab": 21, "abc": 22, "de": 23, "\u0120a": 24})
    merges = [["a", "b"], ["ab", "c"], "d e", "\u0120 a"]
    return {
        "version": "1.0",
        "added_tokens": [{"id": 0, "content": "<s>", "special": True},
                         {"id": 1, "content": "</s>", "special": True},
                         {"id": 25, "content": "<|im_start|>", "special": False},
                         {"id": 26, "content": " user", "special": False}],
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}]},
        "model": {"type": "BPE", "vocab": vocab, "merges": merges},
    }


tj = byte_level_tokenizer()
tc = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": True,
      "add_eos_token": False, "chat_template": "{{ messages }}", "add_prefix_space": False}
put("tokenizer_json", "byte_level.json", json.dumps(tj))
put("tokenizer_json", "byte_level_with_config.json",
    json.dumps(tj).encode() + b"\0" + json.dumps(tc).encode())
tc_list = dict(tc, chat_template=[{"name": "default", "template": "x"},
                                  {"name": "tool use", "template": "y"}])
put("tokenizer_json", "chat_template_list.json",
    json.dumps(tj).encode() + b"\0" + json.dumps(tc_list).encode())
sp_like = {"added_tokens": [{"id": 0, "content": "<unk>", "special": True}],
           "model": {"type": "BPE", "byte_fallback": True,
                     "vocab": dict({"<unk>": 0, "<s>": 1, "</s>": 2},
                                   **{"<0x%02X>" % i: 3 + i for i in range(8)}, **{"\u2581a": 11}),
                     "merges": []},
           "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
               {"type": "Split", "pattern": {"Regex": "\\s+"}},
               {"type": "ByteLevel", "use_regex": False}]}}
put("tokenizer_json", "byte_fallback.json", json.dumps(sp_like))
put("tokenizer_json", "unigram.json", '{"model":{"type":"Unigram","vocab":[["a",0.0]]}}')
put("tokenizer_json", "id_too_big.json",
    '{"model":{"type":"BPE","vocab":{"a":4000000000},"merges":["a b"]}}')
put("tokenizer_json", "bad_config.json", json.dumps(tj).encode() + b"\0[1,2]")


# ---- SentencePiece tokenizer.model ---------------------------------------------------------------
def varint(v):
    out = b""
    while v >= 0x80:
        out += bytes([(v & 0x7F) | 0x80])
        v >>= 7
    return out + bytes([v])


def field(n, wire, payload):
    key = varint(n << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def piece(text, score, typ=None):
    p = field(1, 2, text.encode()) + field(2, 5, struct.pack("<f", score))
    if typ is not None:
        p += field(3, 0, varint(typ))
    return p


pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("<0x0A>", 0.0, 6),
          ("\u2581a", -1.5, None), ("b", -2.25, 1), ("<pad>", 0.0, 5), ("<u>", 0.0, 4)]
model = field(2, 2, b"\x08\x01\x10\x02")
model += b"".join(field(1, 2, piece(*p)) for p in pieces)
model += field(3, 2, b"normalizer") + field(99, 1, b"\0" * 8) + field(98, 5, b"\0" * 4)
put("sentencepiece", "tiny.model", model)
# One that libsentencepiece loads (the reader of gguf_sentencepiece_vocab): byte pieces need
# trainer_spec.byte_fallback (field 35) and all 256 of them; NormalizerSpec.name "identity".
loads = field(2, 2, field(35, 0, varint(1)))
loads += b"".join(field(1, 2, piece(*p)) for p in pieces[:3])
loads += b"".join(field(1, 2, piece("<0x%02X>" % b, 0.0, 6)) for b in range(256))
loads += b"".join(field(1, 2, piece(*p)) for p in pieces[4:])
loads += field(3, 2, field(1, 2, b"identity"))
put("sentencepiece", "loads.model", loads)
put("sentencepiece", "nan_score_loads.model",
    field(1, 2, piece("<unk>", 0.0, 2)) + field(1, 2, field(1, 2, b"a") +
                                                field(2, 5, struct.pack("<I", 0x7FC00000))))
put("sentencepiece", "one_piece.model", field(1, 2, piece("a", 0.0)))
put("sentencepiece", "no_pieces.model", field(2, 2, b"\x08\x01"))
put("sentencepiece", "truncated.model", model[:37])
put("sentencepiece", "nan_score.model", field(1, 2, field(1, 2, b"a") +
                                              field(2, 5, struct.pack("<I", 0x7FC00000))))
put("sentencepiece", "long_varint.model", b"\x0a" + b"\xff" * 10 + b"\x01")
put("sentencepiece", "group_wire.model", field(1, 3, b""))


# ---- torch_pickle (first byte: 0 = a data.pkl pickle, 1 = a legacy head, 2 = a whole file) -----
TORCH = os.path.join(HERE, "..", "tests", "data", "torch")
for name in ["sample_sd.bin", "sample_module_sd.bin", "shared.bin", "parameters.bin"]:
    with open(os.path.join(TORCH, name), "rb") as f:
        whole = f.read()
    put("torch_pickle", "file_" + name, b"\x02" + whole)
    import zipfile
    with zipfile.ZipFile(os.path.join(TORCH, name)) as z:
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
        put("torch_pickle", "pickle_" + name.replace(".bin", ".pkl"), b"\x00" + z.read(pkl))
for name in ["sample_legacy.bin", "legacy_views.bin"]:
    with open(os.path.join(TORCH, name), "rb") as f:
        put("torch_pickle", "legacy_" + name, b"\x01" + f.read())
put("torch_pickle", "global_os_system.pkl",
    b"\x00\x80\x02cos\nsystem\nX\x02\x00\x00\x00lst\x85R.")
put("torch_pickle", "self_list.pkl", b"\x00\x80\x02}q\x00X\x01\x00\x00\x00w]q\x01h\x01as.")
put("torch_pickle", "memo_get.pkl", b"\x00\x80\x02]j\xff\xff\xff\xff.")

# lora_config: adapter_config.json texts (src/smelt/io/lora_adapter.h).
put("lora_config", "peft.json", json.dumps({
    "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 16, "lora_alpha": 32,
    "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
    "rank_pattern": {"model.layers.0.self_attn.q_proj": 8}, "alpha_pattern": {"v_proj": 4.5},
    "use_rslora": True, "use_dora": False, "fan_in_fan_out": False, "bias": "none",
    "modules_to_save": ["lm_head"], "init_lora_weights": True}))
put("lora_config", "regex.json", json.dumps({
    "peft_type": "LORA", "r": 8, "target_modules": ".*\\.(q_proj|v_proj)",
    "rank_pattern": {"(q|k)_proj": 2}}))
put("lora_config", "other.json", json.dumps({"peft_type": "LOHA", "r": 0}))
