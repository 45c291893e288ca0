// PyTorch .bin checkpoints (docs/pytorch.md): real torch.save fixtures read to the README's
// values, hand-built archives and pickles for every refusal, and merges of .bin models that equal
// the same merges of their safetensors twins byte for byte.
#include "smelt/io/torch_bin.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "smelt/error.h"
#include "smelt/io/model_ref.h"
#include "smelt/io/safetensors.h"
#include "smelt/io/torch_pickle.h"
#include "test_util.h"
#include "torch_writer.h"

namespace {

namespace fs = std::filesystem;
using smelt::DType;
using smelt::io::SafetensorsFile;
using smelt::io::TensorInfo;
using smelt::io::TorchFile;
using smelt::testing::quote;
using smelt::testing::read_bytes;
using smelt::testing::run_smelt;
using smelt::testing::TempDir;
using smelt::testing::write_bytes;

const fs::path kData = fs::path(SMELT_SOURCE_DIR) / "tests/data/torch";

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const smelt::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// The tensor's data in C order, read through TensorFile::read.
template <typename T>
std::vector<T> values(const smelt::io::TensorFile& f, const std::string& name) {
  const TensorInfo* t = f.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (!t) return {};
  std::vector<T> out(t->nbytes / sizeof(T));
  f.read(*t, 0, out.data(), t->nbytes);
  return out;
}

float bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float f16(uint16_t h) {  // normal numbers and zero are enough here
  if ((h & 0x7fff) == 0) return 0;
  const uint32_t u =
      ((h & 0x8000u) << 16) | ((((h >> 10) & 0x1f) - 15 + 127) << 23) | ((h & 0x3ffu) << 13);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- hand-built pickles and archives: tests/torch_writer.h ---------------------------------

using smelt::testing::archive;
using smelt::testing::BinTensor;
using smelt::testing::Pickle;
using smelt::testing::state_dict_pickle;
using smelt::testing::zip;

std::string floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

std::string open_error(const TempDir& dir, const std::string& bytes) {
  write_bytes(dir / "x.bin", bytes);
  return error_of([&] { TorchFile::open(dir / "x.bin"); });
}

// Converts a safetensors model folder into a pytorch_model.bin one (same config and tokenizer).
// Every 2-D tensor is stored transposed (a non-contiguous view, as .t() saves it) when
// `transposed`; `shards` > 1 splits the tensors round-robin with a pytorch_model.bin.index.json.
void to_bin_model(const fs::path& src, const fs::path& dst, bool transposed, int shards) {
  fs::create_directories(dst);
  for (const auto& e : fs::directory_iterator(src)) {
    if (e.path().extension() != ".safetensors" && !e.path().string().ends_with(".index.json")) {
      fs::copy_file(e.path(), dst / e.path().filename());
    }
  }
  auto model = smelt::io::Model::open(src.string());
  std::vector<std::vector<BinTensor>> sd(shards);
  std::vector<std::vector<std::pair<std::string, std::string>>> storages(shards);
  nlohmann::json map = nlohmann::json::object();
  int n = 0;
  for (const auto& mt : model->tensors()) {
    const TensorInfo& t = *mt.info;
    std::string bytes(t.nbytes, '\0');
    mt.file->read(t, 0, bytes.data(), t.nbytes);
    const uint64_t esize = smelt::dtype_bits(t.dtype) / 8;
    BinTensor b{t.name,
                t.dtype == DType::kBF16  ? "BFloat16Storage"
                : t.dtype == DType::kF16 ? "HalfStorage"
                                         : "FloatStorage",
                std::to_string(n),
                t.numel(),
                0,
                t.shape,
                {}};
    if (t.shape.size() == 2 && transposed) {
      const uint64_t rows = t.shape[0], cols = t.shape[1];
      std::string tb(bytes.size(), '\0');
      for (uint64_t i = 0; i < rows; ++i)
        for (uint64_t j = 0; j < cols; ++j)
          std::memcpy(&tb[(j * rows + i) * esize], &bytes[(i * cols + j) * esize], esize);
      bytes = tb;
      b.stride = {1, rows};
    } else {
      uint64_t s = 1;
      b.stride.assign(t.shape.size(), 1);
      for (size_t d = t.shape.size(); d-- > 0;) b.stride[d] = s, s *= t.shape[d];
    }
    const int shard = n % shards;
    sd[shard].push_back(b);
    storages[shard].emplace_back(b.key, bytes);
    const std::string file =
        shards == 1 ? "pytorch_model.bin"
                    : fmt::format("pytorch_model-{:05d}-of-{:05d}.bin", shard + 1, shards);
    map[t.name] = file;
    ++n;
  }
  for (int s = 0; s < shards; ++s) {
    const std::string file = shards == 1
                                 ? "pytorch_model.bin"
                                 : fmt::format("pytorch_model-{:05d}-of-{:05d}.bin", s + 1, shards);
    write_bytes(dst / file, archive(state_dict_pickle(sd[s]), storages[s]));
  }
  if (shards > 1) {
    write_bytes(dst / "pytorch_model.bin.index.json",
                nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", map}}.dump());
  }
}

// Every tensor of two models: same names, dtypes, shapes and bytes.
void expect_same_tensors(const fs::path& a, const fs::path& b) {
  auto ma = smelt::io::Model::open(a.string());
  auto mb = smelt::io::Model::open(b.string());
  ASSERT_EQ(ma->tensors().size(), mb->tensors().size());
  for (const auto& ta : ma->tensors()) {
    const auto tb = mb->find(ta.info->name);
    ASSERT_NE(tb.info, nullptr) << ta.info->name;
    EXPECT_EQ(ta.info->dtype, tb.info->dtype) << ta.info->name;
    EXPECT_EQ(ta.info->shape, tb.info->shape) << ta.info->name;
    std::string x(ta.info->nbytes, '\0'), y(tb.info->nbytes, '\0');
    ta.file->read(*ta.info, 0, x.data(), x.size());
    tb.file->read(*tb.info, 0, y.data(), y.size());
    EXPECT_TRUE(x == y) << ta.info->name << " differs between " << a << " and " << b;
  }
}

// ---- the shared torch.save fixtures ---------------------------------------------------------

TEST(TorchBin, SampleStateDictHasTheReadmeValues) {
  auto f = TorchFile::open(kData / "sample_sd.bin");
  ASSERT_EQ(f->tensors().size(), 6u);
  const TensorInfo* a = f->find("a.weight");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::kBF16);
  EXPECT_EQ(a->shape, (std::vector<uint64_t>{2, 3}));
  std::vector<float> got;
  for (uint16_t v : values<uint16_t>(*f, "a.weight")) got.push_back(bf16(v));
  EXPECT_EQ(got, (std::vector<float>{0, 1, 2, 3, 4, 5}));
  got.clear();
  for (uint16_t v : values<uint16_t>(*f, "b.bias")) got.push_back(f16(v));
  EXPECT_EQ(got, (std::vector<float>{1, 1, 1, 1}));
  EXPECT_EQ(f->find("b.bias")->dtype, DType::kF16);
  // A view at storage offset 2: still a plain byte range of the file.
  const TensorInfo* view = f->find("c.view");
  EXPECT_TRUE(view->contiguous);
  EXPECT_EQ(values<float>(*f, "c.view"), (std::vector<float>{2, 3, 4, 5, 6, 7}));
  // The transposed view over the same storage: gathered by strides.
  const TensorInfo* t = f->find("c.t");
  EXPECT_FALSE(t->contiguous);
  EXPECT_EQ(t->shape, (std::vector<uint64_t>{5, 2}));
  EXPECT_EQ(values<float>(*f, "c.t"), (std::vector<float>{0, 5, 1, 6, 2, 7, 3, 8, 4, 9}));
  // A read starting inside the gathered tensor.
  float mid[3];
  f->read(*t, 12, mid, 12);
  EXPECT_EQ(std::vector<float>(mid, mid + 3), (std::vector<float>{6, 2, 7}));
  EXPECT_EQ(f->find("d.int")->dtype, DType::kI64);
  EXPECT_EQ(values<int64_t>(*f, "d.int"), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(f->find("e.bool")->dtype, DType::kBool);
  EXPECT_EQ(values<uint8_t>(*f, "e.bool"), (std::vector<uint8_t>{1, 0}));
}

TEST(TorchBin, ModuleStateDictAndLegacyFormat) {
  auto m = TorchFile::open(kData / "sample_module_sd.bin");
  std::vector<std::string> names;
  for (const TensorInfo& t : m->tensors()) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias"}));
  EXPECT_EQ(m->find("0.weight")->shape, (std::vector<uint64_t>{2, 2}));
  EXPECT_EQ(values<float>(*m, "1.weight"), (std::vector<float>{1, 1}));
  EXPECT_EQ(values<float>(*m, "1.bias"), (std::vector<float>{0, 0}));
  auto legacy = TorchFile::open(kData / "sample_legacy.bin");
  ASSERT_EQ(legacy->tensors().size(), 1u);
  EXPECT_EQ(values<float>(*legacy, "w"), (std::vector<float>{0, 1, 2}));
}

// ---- fixtures made by scripts/make_torch_fixtures.py with torch.save --------------------------

TEST(TorchBin, EveryDtype) {
  auto f = TorchFile::open(kData / "dtypes.bin");
  const std::vector<float> want = {0, 1, 2, 3, 4, 5};
  EXPECT_EQ(values<float>(*f, "f32"), want);
  EXPECT_EQ(values<double>(*f, "f64"), (std::vector<double>{0, 1, 2, 3, 4, 5}));
  std::vector<float> h, b;
  for (uint16_t v : values<uint16_t>(*f, "f16")) h.push_back(f16(v));
  for (uint16_t v : values<uint16_t>(*f, "bf16")) b.push_back(bf16(v));
  EXPECT_EQ(h, want);
  EXPECT_EQ(b, want);
  EXPECT_EQ(values<int64_t>(*f, "i64"), (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(values<int32_t>(*f, "i32"), (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(values<int16_t>(*f, "i16"), (std::vector<int16_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(values<int8_t>(*f, "i8"), (std::vector<int8_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(values<uint8_t>(*f, "u8"), (std::vector<uint8_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(values<float>(*f, "c64"), (std::vector<float>{0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0}));
  EXPECT_EQ(values<uint8_t>(*f, "bool"), (std::vector<uint8_t>{1, 0, 1, 0}));
  EXPECT_EQ(f->find("scalar")->shape, std::vector<uint64_t>{});
  EXPECT_EQ(values<float>(*f, "scalar"), (std::vector<float>{7.5f}));
  EXPECT_EQ(f->find("empty")->nbytes, 0u);
  const std::vector<std::pair<std::string, DType>> types = {
      {"f32", DType::kF32}, {"f64", DType::kF64}, {"f16", DType::kF16},  {"bf16", DType::kBF16},
      {"i64", DType::kI64}, {"i32", DType::kI32}, {"i16", DType::kI16},  {"i8", DType::kI8},
      {"u8", DType::kU8},   {"c64", DType::kC64}, {"bool", DType::kBool}};
  for (const auto& [name, type] : types) EXPECT_EQ(f->find(name)->dtype, type) << name;
}

TEST(TorchBin, SharedStoragesViewsAndParameters) {
  auto f = TorchFile::open(kData / "shared.bin");
  std::vector<float> all(12);
  for (int i = 0; i < 12; ++i) all[i] = static_cast<float>(i);
  EXPECT_EQ(values<float>(*f, "embed.weight"), all);
  EXPECT_EQ(values<float>(*f, "lm_head.weight"), all);
  EXPECT_EQ(values<float>(*f, "row2"), (std::vector<float>{6, 7, 8}));
  EXPECT_EQ(values<float>(*f, "col1"), (std::vector<float>{1, 4, 7, 10}));
  auto p = TorchFile::open(kData / "parameters.bin");
  EXPECT_EQ(values<float>(*p, "weight"), (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(values<float>(*p, "bias"), (std::vector<float>{-1, 0, 1}));
  auto l = TorchFile::open(kData / "legacy_views.bin");
  EXPECT_EQ(values<float>(*l, "t"), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(values<float>(*l, "a"), (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(values<float>(*l, "b"), (std::vector<float>{3, 4, 5}));
}

TEST(TorchBin, ShardedFolderWithIndex) {
  auto m = smelt::io::Model::open((kData / "sharded").string());
  EXPECT_EQ(m->files().size(), 2u);
  ASSERT_TRUE(m->has("x.weight") && m->has("y.weight") && m->has("y.bias"));
  EXPECT_EQ(m->find("y.weight").file->path().filename(), "pytorch_model-00002-of-00002.bin");
  EXPECT_EQ(values<float>(*m->find("y.weight").file, "y.weight"), (std::vector<float>{10, 11, 12}));
  EXPECT_EQ(values<int64_t>(*m->find("y.bias").file, "y.bias"), (std::vector<int64_t>{1, 2}));
}

TEST(TorchBin, NotAStateDictIsAClearError) {
  for (const char* name : {"list.bin", "int.bin"}) {
    const std::string e = error_of([&] { TorchFile::open(kData / name); });
    EXPECT_NE(e.find("is not a state dict"), std::string::npos) << e;
    EXPECT_NE(e.find(name), std::string::npos) << e;
  }
  const std::string e = error_of([&] { TorchFile::open(kData / "wrapped.bin"); });
  EXPECT_NE(e.find("'state_dict' is a dict, not a tensor"), std::string::npos) << e;
}

TEST(TorchBin, PickleThatWouldRunOsSystemIsRefusedAndNothingRuns) {
  const fs::path marker = "/tmp/smelt-pwned-by-pickle";  // what the fixture's payload touches
  fs::remove(marker);
  const std::string e = error_of([&] { TorchFile::open(kData / "evil_reduce.bin"); });
  EXPECT_NE(e.find("global 'posix.system' is not allowed"), std::string::npos) << e;
  EXPECT_NE(e.find("pickle byte "), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(marker));
  // Through the CLI as well.
  auto r = run_smelt("inspect " + quote(kData / "evil_reduce.bin"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("posix.system"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(marker));
}

// ---- hand-built refusals ---------------------------------------------------------------------

TEST(TorchBin, GlobalsOutsideTheAllowListAreRefusedByNameAndOffset) {
  TempDir dir;
  const fs::path marker = dir / "ran";
  Pickle p;
  p.global("os", "system").op('(').str("touch " + marker.string()).op('t').op('R').op('.');
  std::string e = open_error(dir, archive(p.b));
  // data.pkl starts after the 30-byte local header and its 16-byte name; GLOBAL is at byte 2.
  EXPECT_NE(e.find("pickle byte 48: global 'os.system' is not allowed"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(marker));
  Pickle s;  // STACK_GLOBAL builtins.eval
  s.str("builtins").str("eval").op('\x93').op('(').str("1").op('t').op('R').op('.');
  e = open_error(dir, archive(s.b));
  EXPECT_NE(e.find("global 'builtins.eval' is not allowed"), std::string::npos) << e;
  Pickle n;  // NEWOBJ of something other than Parameter
  n.global("torch", "Size").op(')').op('\x81').op('.');
  e = open_error(dir, archive(n.b));
  EXPECT_NE(e.find("NEWOBJ of 'torch.Size'"), std::string::npos) << e;
  Pickle c;  // REDUCE calling a non-callable
  c.str("x").op(')').op('R').op('.');
  e = open_error(dir, archive(c.b));
  EXPECT_NE(e.find("REDUCE calls a str"), std::string::npos) << e;
  Pickle i;  // INST: an opcode a state dict never uses
  i.b += "ios\nsystem\n";
  e = open_error(dir, archive(i.b));
  EXPECT_NE(e.find("opcode 0x69 ('i')"), std::string::npos) << e;
}

TEST(TorchBin, MemoStackAndTruncationLimits) {
  TempDir dir;
  Pickle get;
  get.op(']').op('j').u32(0xFFFFFFFF).op('.');
  std::string e = open_error(dir, archive(get.b));
  EXPECT_NE(e.find("memo index 4294967295 was never stored"), std::string::npos) << e;
  Pickle put;  // a huge memo index is stored sparsely, not allocated
  put.op('}').op('r').u32(0xFFFFFFFF).op('.');
  e = open_error(dir, archive(put.b));
  EXPECT_NE(e.find("holds no tensors"), std::string::npos) << e;
  const std::string whole = state_dict_pickle({{"w", "FloatStorage", "0", 2, 0, {2}, {1}}});
  e = open_error(dir, archive(whole.substr(0, whole.size() / 2), {{"0", floats({1, 2})}}));
  EXPECT_NE(e.find("ends in the middle of an opcode"), std::string::npos) << e;
  e = open_error(dir, archive(whole.substr(0, whole.size() - 1), {{"0", floats({1, 2})}}));
  EXPECT_NE(e.find("pickle byte"), std::string::npos) << e;
  Pickle pop;
  pop.op('0').op('.');
  e = open_error(dir, archive(pop.b));
  EXPECT_NE(e.find("pops from an empty stack"), std::string::npos) << e;
  // The whole file cut short: no zip end record.
  const std::string good = archive(whole, {{"0", floats({1, 2})}});
  e = open_error(dir, good.substr(0, good.size() - 10));
  EXPECT_NE(e.find("end-of-central-directory"), std::string::npos) << e;
}

TEST(TorchBin, SelfReferencingStructuresAreRefusedNotFollowed) {
  TempDir dir;
  Pickle list;  // d = {}; l = []; l.append(l); d['w'] = l
  list.op('}').op('q').op(0).str("w").op(']').op('q').op(1).op('h').op(1).op('a').op('s').op('.');
  std::string e = open_error(dir, archive(list.b));
  EXPECT_NE(e.find("entry 'w' is a list, not a tensor"), std::string::npos) << e;
  Pickle dict;  // d = {}; d['w'] = d
  dict.op('}').op('q').op(0).str("w").op('h').op(0).op('s').op('.');
  e = open_error(dir, archive(dict.b));
  EXPECT_NE(e.find("entry 'w' is a dict, not a tensor"), std::string::npos) << e;
}

TEST(TorchBin, TensorsOutsideTheirStorageOrFileAreRefused) {
  TempDir dir;
  std::string e =
      open_error(dir, archive(state_dict_pickle({{"w", "FloatStorage", "0", 4, 2, {3}, {1}}}),
                              {{"0", floats({1, 2, 3, 4})}}));
  EXPECT_NE(e.find("tensor 'w'"), std::string::npos) << e;
  EXPECT_NE(e.find("reaches past its storage"), std::string::npos) << e;
  e = open_error(dir, archive(state_dict_pickle({{"w", "FloatStorage", "0", 4, 0, {4}, {1}}}),
                              {{"0", floats({1, 2})}}));
  EXPECT_NE(e.find("less than its 4 F32 elements need"), std::string::npos) << e;
  e = open_error(dir, archive(state_dict_pickle({{"w", "FloatStorage", "7", 1, 0, {1}, {1}}})));
  EXPECT_NE(e.find("no record archive/data/7"), std::string::npos) << e;
  e = open_error(dir, archive(state_dict_pickle({{"w", "QInt8Storage", "0", 1, 0, {1}, {1}}})));
  EXPECT_NE(e.find("global 'torch.QInt8Storage' is not allowed"), std::string::npos) << e;
  e = open_error(
      dir, archive(state_dict_pickle({{"w", "FloatStorage", "0", 1, 0, {1000, 1000}, {0, 0}}}),
                   {{"0", floats({1})}}));
  EXPECT_NE(e.find("expanded view"), std::string::npos) << e;
  e = open_error(dir, zip({{"archive/data.pkl", state_dict_pickle({})}}, false, 8));
  EXPECT_NE(e.find("zip entry 'archive/data.pkl' is compressed (method 8)"), std::string::npos)
      << e;
  e = open_error(dir, "not a checkpoint at all");
  EXPECT_NE(e.find("not a PyTorch checkpoint"), std::string::npos) << e;
}

TEST(TorchBin, Zip64ArchivesAndSharedStoragesRead) {
  TempDir dir;
  // Two tensors on one storage: the whole 2x3 and its transpose.
  write_bytes(dir / "x.bin",
              archive(state_dict_pickle({{"a", "FloatStorage", "0", 6, 0, {2, 3}, {3, 1}},
                                         {"a.t", "FloatStorage", "0", 6, 0, {3, 2}, {1, 3}}}),
                      {{"0", floats({0, 1, 2, 3, 4, 5})}}, /*zip64=*/true));
  auto f = TorchFile::open(dir / "x.bin");
  EXPECT_EQ(values<float>(*f, "a"), (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(values<float>(*f, "a.t"), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(f->find("a")->offset, f->find("a.t")->offset);
}

TEST(TorchBin, BigEndianArchivesAreSwappedAndTruncatedLegacyFilesRefused) {
  TempDir dir;
  std::string be;  // 1.0f, 2.0f big-endian
  for (const char* f : {"\x3f\x80\x00\x00", "\x40\x00\x00\x00"}) be.append(f, 4);
  write_bytes(
      dir / "be.bin",
      zip({{"archive/data.pkl", state_dict_pickle({{"w", "FloatStorage", "0", 2, 0, {2}, {1}}})},
           {"archive/byteorder", "big"},
           {"archive/data/0", be}}));
  auto f = TorchFile::open(dir / "be.bin");
  EXPECT_FALSE(f->find("w")->contiguous);
  EXPECT_EQ(values<float>(*f, "w"), (std::vector<float>{1, 2}));
  const std::string legacy = read_bytes(kData / "sample_legacy.bin");
  std::string e = open_error(dir, legacy.substr(0, 100));
  EXPECT_NE(e.find("ends in the middle of an opcode"), std::string::npos) << e;
  e = open_error(dir, legacy.substr(0, legacy.size() - 4));
  EXPECT_NE(e.find("storage '"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
}

// ---- models, verbs and conversion -------------------------------------------------------------

struct BinZoo {
  TempDir dir;
  fs::path base, ft, base_bin, ft_bin;
  BinZoo() {
    base = dir / "base", ft = dir / "ft", base_bin = dir / "base-bin", ft_bin = dir / "ft-bin";
    auto r = run_smelt("dev make-model " + quote(base) +
                       " --hidden 32 --heads 2 --kv-heads 1 --layers 2 --vocab 300 --dtype BF16 "
                       "--seed 1");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    r = run_smelt("dev make-model " + quote(ft) +
                  " --hidden 32 --heads 2 --kv-heads 1 --layers 2 --vocab 300 --dtype BF16 "
                  "--seed 2 --base " +
                  quote(base) + " --delta-scale 0.05");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    to_bin_model(base, base_bin, /*transposed=*/true, 1);
    to_bin_model(ft, ft_bin, /*transposed=*/false, 3);
  }
};

TEST(TorchBinModels, ConvertMergeAndEvalMatchTheSafetensorsTwins) {
  BinZoo z;
  // Folders of .bin weights resolve, single and sharded.
  EXPECT_EQ(
      smelt::io::resolve_model(smelt::io::ModelRef::parse(z.base_bin.string())).weight_files.size(),
      1u);
  EXPECT_EQ(
      smelt::io::resolve_model(smelt::io::ModelRef::parse(z.ft_bin.string())).weight_files.size(),
      3u);
  // The converted twins hold exactly the original tensors (checked against the safetensors the
  // .bin models were made from, not against the .bin reader).
  for (const auto& [bin, original] : {std::pair{z.base_bin, z.base}, std::pair{z.ft_bin, z.ft}}) {
    const fs::path twin = bin.string() + "-st";
    auto r = run_smelt("convert " + quote(bin) + " " + quote(twin));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_TRUE(fs::exists(twin / "model.safetensors"));
    EXPECT_TRUE(fs::exists(twin / "config.json"));
    EXPECT_TRUE(fs::exists(twin / "tokenizer.json"));
    EXPECT_FALSE(fs::exists(twin / "pytorch_model.bin"));
    expect_same_tensors(twin, original);
    expect_same_tensors(bin, original);
  }
  // The same merge of .bin inputs and of their safetensors twins: identical tensors.
  const std::string yaml =
      "models:\n  - model: {}\n    parameters: {{weight: 0.6}}\n  - model: {}\n    parameters: "
      "{{weight: 0.4}}\nmerge_method: task_arithmetic\nbase_model: {}\ndtype: bfloat16\n";
  write_bytes(z.dir / "bin.yml", fmt::format(fmt::runtime(yaml), z.ft_bin.string(),
                                             z.base_bin.string(), z.base_bin.string()));
  write_bytes(z.dir / "st.yml",
              fmt::format(fmt::runtime(yaml), z.ft.string(), z.base.string(), z.base.string()));
  auto r = run_smelt("plan " + quote(z.dir / "bin.yml"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  r = run_smelt("merge " + quote(z.dir / "bin.yml") + " " + quote(z.dir / "out-bin"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_smelt("merge " + quote(z.dir / "st.yml") + " " + quote(z.dir / "out-st"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_same_tensors(z.dir / "out-bin", z.dir / "out-st");
  // Weights byte for byte: the files differ only in the recorded config's paths.
  auto a = SafetensorsFile::open(z.dir / "out-bin" / "model.safetensors");
  auto b = SafetensorsFile::open(z.dir / "out-st" / "model.safetensors");
  const std::string fa = read_bytes(a->path()), fb = read_bytes(b->path());
  EXPECT_TRUE(fa.substr(a->tensors().front().offset) == fb.substr(b->tensors().front().offset));
  // inspect and eval read the .bin model like its twin.
  r = run_smelt("inspect " + quote(z.base_bin));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("model.embed_tokens.weight"), std::string::npos) << r.output;
  std::string text;
  for (int i = 0; i < 40; ++i) text += fmt::format("word{} and {} more; ", i, i * 7 % 13);
  write_bytes(z.dir / "text.txt", text);
  // One eval of both models: the .bin one (with transposed, gathered weights) scores exactly as
  // the safetensors model it was made from.
  auto ev = run_smelt("eval --json -j 2 --ctx 32 " + quote(z.base_bin) + " " + quote(z.base) +
                      " --text " + quote(z.dir / "text.txt"));
  ASSERT_EQ(ev.exit_code, 0) << ev.output;
  const auto j = nlohmann::json::parse(ev.output.substr(ev.output.find('{')));
  ASSERT_EQ(j["models"].size(), 2u) << j.dump();
  EXPECT_EQ(j["models"][0]["perplexity"]["ppl"].get<double>(),
            j["models"][1]["perplexity"]["ppl"].get<double>());
  EXPECT_GT(j["models"][0]["perplexity"]["ppl"].get<double>(), 1.0);
}

TEST(TorchBinModels, SingleFileConvertAndOutputRules) {
  TempDir dir;
  fs::copy_file(kData / "sample_sd.bin", dir / "w.bin");
  auto r = run_smelt("convert " + quote(dir / "w.bin") + " " + quote(dir / "w.safetensors"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto st = SafetensorsFile::open(dir / "w.safetensors");
  EXPECT_EQ(values<float>(*st, "c.t"), (std::vector<float>{0, 5, 1, 6, 2, 7, 3, 8, 4, 9}));
  EXPECT_EQ(values<int64_t>(*st, "d.int"), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(st->find("a.weight")->dtype, DType::kBF16);
  // Never over an existing file without --overwrite, never into the input.
  r = run_smelt("convert " + quote(dir / "w.bin") + " " + quote(dir / "w.safetensors"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("exists; pass --overwrite"), std::string::npos) << r.output;
  r = run_smelt("convert --overwrite " + quote(dir / "w.bin") + " " + quote(dir / "w.safetensors"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  r = run_smelt("convert " + quote(dir / "w.bin") + " " + quote(dir / "w.bin"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("never writes into an input model"), std::string::npos) << r.output;
  EXPECT_EQ(read_bytes(dir / "w.bin"), read_bytes(kData / "sample_sd.bin"));
  r = run_smelt("convert " + quote(kData / "sharded") + " " + quote(kData / "sharded" / "out"));
  EXPECT_NE(r.output.find("never writes into an input model"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(kData / "sharded" / "out"));
  // inspect of a single .bin file.
  r = run_smelt("inspect " + quote(dir / "w.bin"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("c.view"), std::string::npos) << r.output;
}

TEST(TorchBinModels, SafetensorsArePreferredWhenBothExist) {
  TempDir dir;
  write_bytes(dir / "model.safetensors", "x");
  fs::copy_file(kData / "sample_sd.bin", dir / "pytorch_model.bin");
  const auto r = smelt::io::resolve_model(smelt::io::ModelRef::parse(dir.path().string()));
  ASSERT_EQ(r.weight_files.size(), 1u);
  EXPECT_EQ(r.weight_files[0].filename(), "model.safetensors");
}

}  // namespace
