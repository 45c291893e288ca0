// Tests of the GGUF reader (every validation rule, with messages naming file and key/tensor), the
// streaming writer, split-model discovery, and a mutation loop that must never crash the reader.
#include "smelt/io/gguf.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <random>
#include <thread>

#include "smelt/error.h"
#include "test_util.h"

namespace smelt::io {
namespace {

using kernels::GgmlType;
using smelt::testing::read_bytes;
using smelt::testing::TempDir;
using smelt::testing::write_bytes;

// Builds GGUF bytes field by field, so tests can write any (also invalid) file.
class Raw {
 public:
  Raw& u8(uint8_t v) { return put(&v, 1); }
  Raw& u32(uint32_t v) { return put(&v, 4); }
  Raw& u64(uint64_t v) { return put(&v, 8); }
  Raw& str(std::string_view s) {
    u64(s.size());
    bytes_.append(s);
    return *this;
  }
  Raw& bytes(std::string_view s) {
    bytes_.append(s);
    return *this;
  }
  Raw& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    bytes_ += "GGUF";
    return u32(version).u64(n_tensors).u64(n_kv);
  }
  Raw& kv_u32(std::string_view key, uint32_t v) { return str(key).u32(4).u32(v); }
  Raw& kv_str(std::string_view key, std::string_view v) { return str(key).u32(8).str(v); }
  // A tensor info with ne given in ggml order (innermost first).
  Raw& tensor(std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name).u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) u64(d);
    return u32(type).u64(offset);
  }
  Raw& pad(size_t alignment = 32) {
    while (bytes_.size() % alignment != 0) bytes_ += '\0';
    return *this;
  }
  Raw& data(size_t n, char fill = 'x') {
    bytes_.append(n, fill);
    return *this;
  }
  size_t size() const { return bytes_.size(); }
  const std::string& str() const { return bytes_; }

 private:
  Raw& put(const void* p, size_t n) {
    bytes_.append(static_cast<const char*>(p), n);
    return *this;
  }
  std::string bytes_;
};

// A small valid file: two KVs and one F32 tensor "w" of 4 elements.
Raw valid_file() {
  Raw r;
  r.header(1, 2).kv_str("general.architecture", "llama").kv_u32("x.count", 7);
  r.tensor("w", {4}, 0, 0).pad().data(16).pad();
  return r;
}

// Opens `bytes` as a file and returns the error message (empty if it opened).
std::string open_error(const TempDir& dir, const std::string& bytes,
                       const std::string& name = "bad.gguf") {
  write_bytes(dir / name, bytes);
  try {
    GgufFile::open(dir / name);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Asserts the message mentions the file and every fragment.
void expect_error(const std::string& message, const TempDir& dir,
                  std::initializer_list<std::string_view> fragments) {
  ASSERT_FALSE(message.empty()) << "the file opened but should have been rejected";
  EXPECT_NE(message.find((dir / "bad.gguf").string()), std::string::npos) << message;
  for (std::string_view f : fragments) {
    EXPECT_NE(message.find(f), std::string::npos) << "missing '" << f << "' in: " << message;
  }
}

std::vector<char> pattern(uint64_t n, int salt) {
  std::vector<char> v(n);
  for (uint64_t i = 0; i < n; ++i)
    v[i] = static_cast<char>((i * 131 + salt * 17 + (i >> 8)) & 0xFF);
  return v;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Round trip.

std::vector<GgufKv> every_kind_of_kv() {
  return {
      {"general.architecture", GgufValue::of("llama")},
      {"v.u8", GgufValue::of(uint8_t{200})},
      {"v.i8", GgufValue::of(int8_t{-100})},
      {"v.u16", GgufValue::of(uint16_t{60000})},
      {"v.i16", GgufValue::of(int16_t{-30000})},
      {"v.u32", GgufValue::of(uint32_t{4000000000u})},
      {"v.i32", GgufValue::of(int32_t{-2000000000})},
      {"v.f32", GgufValue::of(0.1f)},
      {"v.bool", GgufValue::of(true)},
      {"v.string", GgufValue::of(std::string("h\xC3\xA9llo\0x", 8))},
      {"v.u64", GgufValue::of(uint64_t{18000000000000000000u})},
      {"v.i64", GgufValue::of(int64_t{-9000000000000000000})},
      {"v.f64", GgufValue::of(-1e300)},
      {"a.u8", GgufValue::array(std::vector<uint8_t>{1, 2, 255})},
      {"a.i8", GgufValue::array(std::vector<int8_t>{-1, 0, 1})},
      {"a.u16", GgufValue::array(std::vector<uint16_t>{65535})},
      {"a.i16", GgufValue::array(std::vector<int16_t>{-5, 5})},
      {"a.u32", GgufValue::array(std::vector<uint32_t>{1, 2, 3, 4})},
      {"a.i32", GgufValue::array(std::vector<int32_t>{-7})},
      {"a.f32", GgufValue::array(std::vector<float>{0.5f, -2.0f})},
      {"a.bool", GgufValue::array(std::vector<bool>{true, false, true})},
      {"a.string", GgufValue::array(std::vector<std::string>{"<s>", "", "\xE2\x96\x81the"})},
      {"a.u64", GgufValue::array(std::vector<uint64_t>{UINT64_MAX})},
      {"a.i64", GgufValue::array(std::vector<int64_t>{INT64_MIN, 0})},
      {"a.f64", GgufValue::array(std::vector<double>{3.25})},
      {"a.empty_i32", GgufValue::empty_array(GgufType::kI32)},
      {"a.empty_string", GgufValue::array(std::vector<std::string>{})},
      {"a.many", GgufValue::array(std::vector<int32_t>(1000, 3))},
  };
}

std::vector<GgufTensorSpec> every_kind_of_tensor() {
  return {{"t.f32", GgmlType::kF32, {3, 5}},     {"t.f16", GgmlType::kF16, {4}},
          {"t.bf16", GgmlType::kBF16, {2, 3}},   {"t.q8_0", GgmlType::kQ8_0, {2, 64}},
          {"t.q4_k", GgmlType::kQ4_K, {3, 256}}, {"t.scalar", GgmlType::kF32, {}},
          {"t.empty", GgmlType::kF32, {0, 8}},   {"t.4d", GgmlType::kI32, {2, 1, 3, 2}}};
}

TEST(GgufRoundTrip, EveryValueTypeAndTensorTypeReadsBackIdentical) {
  TempDir dir;
  const auto kvs = every_kind_of_kv();
  const auto specs = every_kind_of_tensor();
  std::vector<std::vector<char>> data;
  for (size_t i = 0; i < specs.size(); ++i) {
    data.push_back(pattern(specs[i].nbytes(), static_cast<int>(i)));
  }
  {
    GgufWriter w(dir / "all.gguf", kvs, specs);
    for (size_t i = 0; i < specs.size(); ++i) {
      // Second half first, to exercise offset writes.
      const uint64_t half = data[i].size() / 2;
      w.write(i, half, data[i].data() + half, data[i].size() - half);
      w.write(i, 0, data[i].data(), half);
    }
    w.finish();
  }
  const auto f = GgufFile::open(dir / "all.gguf");
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->kvs(), kvs);  // same keys, order, types and payload bytes
  ASSERT_EQ(f->tensors().size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorInfo& t = f->tensors()[i];
    EXPECT_EQ(t.name, specs[i].name);
    EXPECT_EQ(t.shape, specs[i].shape) << t.name;
    EXPECT_EQ(t.ggml_type, static_cast<int32_t>(specs[i].type)) << t.name;
    EXPECT_EQ(t.nbytes, specs[i].nbytes()) << t.name;
    EXPECT_EQ((t.offset - f->data_start()) % 32, 0u) << t.name;
    std::vector<char> back(t.nbytes);
    f->read(t, 0, back.data(), back.size());
    EXPECT_EQ(back, data[i]) << t.name;
  }
  EXPECT_EQ(f->find("t.f32")->dtype, DType::kF32);
  EXPECT_EQ(f->find("t.f16")->dtype, DType::kF16);
  EXPECT_EQ(f->find("t.bf16")->dtype, DType::kBF16);
  EXPECT_EQ(f->find("t.4d")->dtype, DType::kI32);
  EXPECT_EQ(f->find("t.q8_0")->dtype, DType::kU8);
  EXPECT_TRUE(f->find("t.q4_k")->quantized());
  EXPECT_EQ(f->find("t.q4_k")->numel(), 768u);
  EXPECT_EQ(f->find("missing"), nullptr);
}

TEST(GgufRoundTrip, TypedAccessorsAndTextRendering) {
  TempDir dir;
  {
    GgufWriter w(dir / "m.gguf", every_kind_of_kv(), {});
    w.finish();
  }
  const auto f = GgufFile::open(dir / "m.gguf");
  EXPECT_EQ(f->find_kv("v.u8")->as_uint(), 200u);
  EXPECT_EQ(f->find_kv("v.i8")->as_int(), -100);
  EXPECT_FALSE(f->find_kv("v.i8")->as_uint().has_value());
  EXPECT_EQ(f->find_kv("v.u64")->as_uint(), 18000000000000000000u);
  EXPECT_FALSE(f->find_kv("v.u64")->as_int().has_value());
  EXPECT_EQ(f->find_kv("v.f32")->as_float(), static_cast<double>(0.1f));
  EXPECT_EQ(f->find_kv("v.f64")->as_float(), -1e300);
  EXPECT_EQ(f->find_kv("v.bool")->as_bool(), true);
  EXPECT_EQ(f->find_kv("v.string")->as_string(), std::string_view("h\xC3\xA9llo\0x", 8));
  EXPECT_FALSE(f->find_kv("v.string")->as_uint().has_value());
  const GgufValue* strings = f->find_kv("a.string");
  ASSERT_TRUE(strings->is_array());
  EXPECT_EQ(strings->elem_type(), GgufType::kString);
  EXPECT_EQ(strings->size(), 3u);
  EXPECT_EQ(strings->at(2).as_string(), "\xE2\x96\x81the");
  EXPECT_EQ(*strings->string_array(),
            (std::vector<std::string_view>{"<s>", "", "\xE2\x96\x81the"}));
  EXPECT_EQ(f->find_kv("a.i64")->at(0).as_int(), INT64_MIN);
  EXPECT_EQ(f->find_kv("a.empty_string")->size(), 0u);
  EXPECT_NE(error_of([&] { (void)strings->at(3); }).find("out of range"), std::string::npos);
  EXPECT_EQ(f->find_kv("nope"), nullptr);

  const auto& m = f->metadata();
  EXPECT_EQ(m.at("general.architecture"), "llama");
  EXPECT_EQ(m.at("v.bool"), "true");
  EXPECT_EQ(m.at("v.i16"), "-30000");
  EXPECT_EQ(m.at("v.f32"), "0.1");
  EXPECT_EQ(m.at("a.u32"), "[1, 2, 3, 4]");
  EXPECT_EQ(m.at("a.bool"), "[true, false, true]");
  EXPECT_EQ(m.at("a.string"), "[array of 3 string]");
  EXPECT_EQ(m.at("a.many"), "[array of 1000 i32]");
  EXPECT_EQ(m.at("a.empty_i32"), "[]");
}

// A merge copies the input's KV section (tokenizer arrays and all) byte for byte.
TEST(GgufRoundTrip, KvsReadFromAFileAreWrittenVerbatim) {
  TempDir dir;
  {
    GgufWriter w(dir / "in.gguf", every_kind_of_kv(), {});
    w.finish();
  }
  const auto in = GgufFile::open(dir / "in.gguf");
  std::vector<GgufKv> kvs = in->kvs();
  gguf_set_kv(kvs, "general.name", GgufValue::of("merged"));
  gguf_set_kv(kvs, "v.u8", GgufValue::of(uint8_t{1}));
  EXPECT_TRUE(gguf_remove_kv(kvs, "v.i8"));
  EXPECT_FALSE(gguf_remove_kv(kvs, "v.i8"));
  {
    GgufWriter w(dir / "out.gguf", kvs, {{"w", GgmlType::kF32, {2}}});
    w.write(0, 0, "12345678", 8);
    w.finish();
  }
  const auto out = GgufFile::open(dir / "out.gguf");
  EXPECT_EQ(out->kvs(), kvs);
  EXPECT_EQ(out->kvs()[1].key, "v.u8");              // replaced in place
  EXPECT_EQ(out->kvs().back().key, "general.name");  // appended
  // The encoded KVs of the output follow its 24-byte header exactly.
  std::string expect;
  for (const GgufKv& kv : kvs) expect += kv.encode();
  EXPECT_EQ(read_bytes(dir / "out.gguf").substr(24, expect.size()), expect);
  // The untouched tokenizer-like array has the same bytes as in the input file.
  const std::string in_bytes = read_bytes(dir / "in.gguf");
  const std::string enc = in->kvs()[21].encode();
  EXPECT_NE(in_bytes.find(enc), std::string::npos);
}

TEST(GgufWriter, AlignmentKeyFollowsTheWriterAlignment) {
  TempDir dir;
  {
    GgufWriter w(dir / "a64.gguf", {{"general.architecture", GgufValue::of("x")}},
                 {{"a", GgmlType::kF32, {3}}, {"b", GgmlType::kF32, {5}}}, 64);
    w.write(0, 0, "abcdefghijkl", 12);
    w.write(1, 0, "abcdefghijklmnopqrst", 20);
    EXPECT_EQ(w.data_offset(1) - w.data_offset(0), 64u);
    w.finish();
  }
  const auto f = GgufFile::open(dir / "a64.gguf");
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->find_kv("general.alignment")->type(), GgufType::kU32);
  EXPECT_EQ(f->find_kv("general.alignment")->as_uint(), 64u);
  EXPECT_EQ(f->data_start() % 64, 0u);
  EXPECT_EQ(f->file_size(), f->data_start() + 128);  // both tensors padded to 64

  // An existing general.alignment (even of the wrong type) is rewritten in place as u32.
  std::vector<GgufKv> kvs = {{"general.alignment", GgufValue::of(int32_t{16})},
                             {"general.architecture", GgufValue::of("x")}};
  {
    GgufWriter w(dir / "a32.gguf", kvs, {});
    w.finish();
  }
  const auto g = GgufFile::open(dir / "a32.gguf");
  EXPECT_EQ(g->kvs()[0].key, "general.alignment");
  EXPECT_EQ(g->kvs()[0].value, GgufValue::of(uint32_t{32}));
  // The default alignment is not added when absent.
  {
    GgufWriter w(dir / "plain.gguf", {{"k", GgufValue::of(true)}}, {});
    w.finish();
  }
  EXPECT_EQ(GgufFile::open(dir / "plain.gguf")->find_kv("general.alignment"), nullptr);
}

TEST(GgufWriter, RejectsSpecsGgmlCannotRead) {
  TempDir dir;
  const auto p = dir / "x.gguf";
  auto make = [&](std::vector<GgufKv> kvs, std::vector<GgufTensorSpec> specs, uint32_t a = 32) {
    return error_of([&] { GgufWriter w(p, kvs, specs, a); });
  };
  EXPECT_NE(
      make({}, {{"w", GgmlType::kF32, {2}}, {"w", GgmlType::kF16, {2}}}).find("'w' given twice"),
      std::string::npos);
  EXPECT_NE(make({}, {{std::string(64, 'n'), GgmlType::kF32, {2}}}).find("at most 63"),
            std::string::npos);
  EXPECT_NE(make({}, {{"w", GgmlType::kF32, {1, 1, 1, 1, 2}}}).find("at most 4"),
            std::string::npos);
  EXPECT_NE(make({}, {{"w", GgmlType::kQ4_K, {2, 128}}}).find("256-element q4_K blocks"),
            std::string::npos);
  EXPECT_NE(make({}, {{"w", static_cast<GgmlType>(5), {32}}}).find("unsupported ggml type 5"),
            std::string::npos);
  EXPECT_NE(make({{"k", GgufValue::of(1)}, {"k", GgufValue::of(2)}}, {}).find("'k' given twice"),
            std::string::npos);
  EXPECT_NE(make({{"", GgufValue::of(1)}}, {}).find("empty"), std::string::npos);
  EXPECT_NE(make({}, {}, 48).find("power of two"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(p));
}

TEST(GgufWriter, UnfinishedWriterLeavesNoFileAndFinishRefusesMissingBytes) {
  TempDir dir;
  {
    GgufWriter w(dir / "x.gguf", {}, {{"w", GgmlType::kQ8_0, {32}}});
    w.write(0, 0, "abc", 3);
    const std::string e = error_of([&] { w.finish(); });
    EXPECT_NE(e.find("tensor 'w': 3 of 34 bytes"), std::string::npos) << e;
    EXPECT_NE(error_of([&] { w.write(0, 30, "abcdefgh", 8); }).find("outside its 34 bytes"),
              std::string::npos);
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(GgufWriter, ThreadsWriteDisjointTensorsConcurrently) {
  TempDir dir;
  std::vector<GgufTensorSpec> specs;
  for (int i = 0; i < 8; ++i) specs.push_back({"t" + std::to_string(i), GgmlType::kQ8_0, {4, 96}});
  std::vector<std::vector<char>> data;
  for (size_t i = 0; i < specs.size(); ++i) data.push_back(pattern(specs[i].nbytes(), int(i)));
  {
    GgufWriter w(dir / "mt.gguf", {}, specs);
    std::vector<std::thread> threads;
    for (size_t i = 0; i < specs.size(); ++i) {
      threads.emplace_back([&, i] {
        for (size_t off = 0; off < data[i].size(); off += 34) w.write(i, off, &data[i][off], 34);
      });
    }
    for (auto& t : threads) t.join();
    w.finish();
  }
  const auto f = GgufFile::open(dir / "mt.gguf");
  for (size_t i = 0; i < specs.size(); ++i) {
    std::vector<char> back(f->tensors()[i].nbytes);
    f->read(f->tensors()[i], 0, back.data(), back.size());
    EXPECT_EQ(back, data[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Reader acceptance beyond our own writer.

TEST(GgufReader, AcceptsVersion2AndAFileWithoutTensors) {
  TempDir dir;
  Raw v2;
  v2.header(1, 1, 2).kv_str("general.architecture", "llama").tensor("w", {4}, 0, 0).pad().data(16);
  EXPECT_EQ(open_error(dir, v2.str()), "");
  Raw none;
  none.header(0, 1).kv_u32("k", 1);  // no tensors: no padding needed after the KVs
  EXPECT_EQ(open_error(dir, none.str()), "");
  EXPECT_EQ(GgufFile::open(dir / "bad.gguf")->data_start(), none.size());
}

// ggml's reader demands exactly consecutive offsets; smelt also accepts aligned gaps.
TEST(GgufReader, AcceptsAnAlignedGapBetweenTensors) {
  TempDir dir;
  Raw r;
  r.header(2, 0).tensor("a", {4}, 0, 0).tensor("b", {4}, 0, 64).pad().data(96);
  ASSERT_EQ(open_error(dir, r.str()), "");
  const auto f = GgufFile::open(dir / "bad.gguf");
  EXPECT_EQ(f->find("b")->offset, f->data_start() + 64);
}

TEST(GgufReader, ReadsOutsideATensorAreErrors) {
  TempDir dir;
  write_bytes(dir / "ok.gguf", valid_file().str());
  const auto f = GgufFile::open(dir / "ok.gguf");
  char buf[32];
  EXPECT_NE(error_of([&] { f->read(f->tensors()[0], 8, buf, 9); }).find("tensor 'w'"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Rejected files: each message names the file and the key or tensor.

TEST(GgufReader, RejectsBadMagic) {
  TempDir dir;
  std::string b = valid_file().str();
  b[3] = 'G';
  expect_error(open_error(dir, b), dir, {"not a GGUF file", "GGUG"});
  expect_error(open_error(dir, "GG"), dir, {"too small"});
}

TEST(GgufReader, RejectsVersion1AndFutureVersions) {
  TempDir dir;
  Raw v1;
  v1.header(0, 0, 1);
  expect_error(open_error(dir, v1.str()), dir, {"version 1 is no longer supported"});
  Raw v4;
  v4.header(0, 0, 4);
  expect_error(open_error(dir, v4.str()), dir, {"version 4", "2 and 3"});
  Raw v0;
  v0.header(0, 0, 0);
  expect_error(open_error(dir, v0.str()), dir, {"version 0"});
}

TEST(GgufReader, RejectsByteSwappedVersionWithAnEndiannessHint) {
  TempDir dir;
  Raw r;
  r.header(0, 0, 0x03000000);
  expect_error(open_error(dir, r.str()), dir, {"header", "byte order", "big-endian"});
}

TEST(GgufReader, RejectsTruncationInTheHeader) {
  TempDir dir;
  expect_error(open_error(dir, valid_file().str().substr(0, 12)), dir,
               {"header", "tensor count", "truncated"});
}

TEST(GgufReader, RejectsTruncationInTheKvs) {
  TempDir dir;
  Raw r;
  r.header(0, 2).kv_u32("first", 1).str("second.key").u32(10);  // u64 value cut short
  r.bytes("abc");
  expect_error(open_error(dir, r.str()), dir, {"key 'second.key'", "truncated"});
}

TEST(GgufReader, RejectsTruncationInTheTensorInfos) {
  TempDir dir;
  Raw r;
  r.header(1, 0).str("blk.0.attn_q.weight").u32(2).u64(64);  // second dimension missing
  // Enough trailing bytes for the header's count check, but not for this info.
  expect_error(open_error(dir, r.str()), dir, {"tensor 'blk.0.attn_q.weight'", "dimension"});
}

TEST(GgufReader, RejectsTruncationInTheData) {
  TempDir dir;
  const std::string b = valid_file().str();
  expect_error(open_error(dir, b.substr(0, b.size() - 20)), dir,
               {"tensor 'w'", "beyond the end of the file"});
}

TEST(GgufReader, RejectsStringLongerThanFile) {
  TempDir dir;
  Raw r;
  r.header(0, 1).str("general.name").u32(8).u64(1000).bytes("short");
  expect_error(open_error(dir, r.str()), dir, {"key 'general.name'", "length 1000", "remaining"});
  Raw huge;
  huge.header(0, 1).str("general.name").u32(8).u64(uint64_t{1} << 31).bytes("short");
  expect_error(open_error(dir, huge.str()), dir, {"key 'general.name'", "ceiling"});
}

TEST(GgufReader, RejectsKeyAndTensorNameLongerThanFile) {
  TempDir dir;
  Raw k;
  k.header(0, 1).u64(500).bytes("general.name....");
  expect_error(open_error(dir, k.str()), dir, {"key #0", "length 500"});
  Raw t;
  t.header(1, 0).u64(100).bytes(std::string(30, 'n'));
  expect_error(open_error(dir, t.str()), dir, {"tensor #0", "length 100"});
}

TEST(GgufReader, RejectsArrayLongerThanFile) {
  TempDir dir;
  Raw r;
  r.header(0, 1).str("tokenizer.ggml.scores").u32(9).u32(6).u64(1000).data(64);
  expect_error(open_error(dir, r.str()), dir,
               {"key 'tokenizer.ggml.scores'", "array of 1000 f32", "remain"});
  Raw s;  // strings need at least their 8-byte length each
  s.header(0, 1).str("tokenizer.ggml.tokens").u32(9).u32(8).u64(20).data(100);
  expect_error(open_error(dir, s.str()), dir, {"key 'tokenizer.ggml.tokens'", "20 string"});
  Raw huge;
  huge.header(0, 1).str("tokenizer.ggml.tokens").u32(9).u32(0).u64(uint64_t{1} << 31).data(64);
  expect_error(open_error(dir, huge.str()), dir, {"key 'tokenizer.ggml.tokens'", "ceiling"});
}

TEST(GgufReader, RejectsAbsurdTensorAndKvCounts) {
  TempDir dir;
  Raw t;
  t.header(uint64_t{1} << 60, 0).data(100);
  expect_error(open_error(dir, t.str()), dir, {"header", "tensor infos cannot fit"});
  Raw k;
  k.header(0, UINT64_MAX).data(100);
  expect_error(open_error(dir, k.str()), dir, {"header", "key/value pairs cannot fit"});
  // Counts that fit the file as a whole but not what is left after the KVs.
  Raw after;
  after.header(3, 1).kv_str("k", std::string(60, 'v')).data(30);
  expect_error(open_error(dir, after.str()), dir, {"tensor infos cannot fit", "after the key"});
}

TEST(GgufReader, RejectsUnknownGgmlType) {
  TempDir dir;
  for (uint32_t type : {4u, 33u, 43u, 0xFFFFFFFFu}) {
    Raw r;
    r.header(1, 0).tensor("blk.3.ffn_up.weight", {32}, type, 0).pad().data(64);
    expect_error(open_error(dir, r.str()), dir,
                 {fmt::format("unsupported ggml type {} for tensor 'blk.3.ffn_up.weight'",
                              static_cast<int32_t>(type))});
  }
}

TEST(GgufReader, RejectsRowNotAWholeNumberOfBlocks) {
  TempDir dir;
  Raw r;
  r.header(1, 0).tensor("output.weight", {31, 2}, 8, 0).pad().data(128);
  expect_error(open_error(dir, r.str()), dir, {"tensor 'output.weight'", "31", "32-element q8_0"});
}

TEST(GgufReader, RejectsMisalignedOffset) {
  TempDir dir;
  Raw r;
  r.header(1, 0).tensor("w", {4}, 0, 8).pad().data(64);
  expect_error(open_error(dir, r.str()), dir, {"tensor 'w'", "offset 8", "alignment 32"});
}

TEST(GgufReader, RejectsOverlappingOffsets) {
  TempDir dir;
  Raw r;
  r.header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {4}, 0, 32).pad().data(128);
  expect_error(open_error(dir, r.str()), dir, {"tensor 'b'", "overlaps tensor 'a'"});
  Raw back;  // out of info order
  back.header(2, 0).tensor("a", {4}, 0, 32).tensor("b", {4}, 0, 0).pad().data(128);
  expect_error(open_error(dir, back.str()), dir, {"tensor 'b'", "overlaps tensor 'a'"});
}

TEST(GgufReader, RejectsDuplicateKey) {
  TempDir dir;
  Raw r;
  r.header(0, 2).kv_u32("llama.block_count", 1).kv_u32("llama.block_count", 2);
  expect_error(open_error(dir, r.str()), dir, {"key 'llama.block_count'", "duplicate"});
}

TEST(GgufReader, RejectsEmptyKey) {
  TempDir dir;
  Raw r;
  r.header(0, 1).kv_u32("", 1).data(8);
  expect_error(open_error(dir, r.str()), dir, {"key #0 is empty"});
}

TEST(GgufReader, RejectsDuplicateTensorName) {
  TempDir dir;
  Raw r;
  r.header(2, 0).tensor("w", {4}, 0, 0).tensor("w", {4}, 0, 32).pad().data(64);
  expect_error(open_error(dir, r.str()), dir, {"tensor 'w'", "duplicate"});
}

TEST(GgufReader, RejectsTensorNameLongerThanGgmlAllows) {
  TempDir dir;
  const std::string name(64, 'n');
  Raw r;
  r.header(1, 0).tensor(name, {4}, 0, 0).pad().data(32);
  expect_error(open_error(dir, r.str()), dir, {name, "at most 63"});
}

TEST(GgufReader, RejectsNestedArray) {
  TempDir dir;
  Raw r;
  r.header(0, 1).str("nested").u32(9).u32(9).u64(1).u32(4).u64(1).u32(5);
  expect_error(open_error(dir, r.str()), dir, {"key 'nested'", "arrays of arrays"});
}

TEST(GgufReader, RejectsInvalidValueTypes) {
  TempDir dir;
  Raw r;
  r.header(0, 1).str("weird").u32(13).u64(0);
  expect_error(open_error(dir, r.str()), dir, {"key 'weird'", "invalid value type 13"});
  Raw a;
  a.header(0, 1).str("weird").u32(9).u32(77).u64(0);
  expect_error(open_error(dir, a.str()), dir, {"key 'weird'", "element type 77"});
  Raw b;
  b.header(0, 1).str("flag").u32(7).u8(2).data(8);
  expect_error(open_error(dir, b.str()), dir, {"key 'flag'", "not 0 or 1"});
}

TEST(GgufReader, RejectsNonU32Alignment) {
  TempDir dir;
  Raw r;
  r.header(0, 1).str("general.alignment").u32(5).u32(32);  // i32
  expect_error(open_error(dir, r.str()), dir, {"general.alignment", "u32", "i32"});
  Raw p;
  p.header(0, 1).kv_u32("general.alignment", 48);
  expect_error(open_error(dir, p.str()), dir, {"general.alignment", "48", "power of two"});
}

TEST(GgufReader, RejectsBadDimensions) {
  TempDir dir;
  Raw five;
  five.header(1, 0).tensor("w", {1, 1, 1, 1, 4}, 0, 0).pad().data(32);
  expect_error(open_error(dir, five.str()), dir, {"tensor 'w'", "5 dimensions"});
  Raw negative;
  negative.header(1, 0).tensor("w", {4, uint64_t{1} << 63}, 0, 0).pad().data(32);
  expect_error(open_error(dir, negative.str()), dir, {"tensor 'w'", "dimension 1"});
  Raw overflow;  // 2^80 elements, which wraps to 0 in 64 bits
  overflow.header(1, 0).tensor("w", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0).pad().data(32);
  expect_error(open_error(dir, overflow.str()), dir, {"tensor 'w'", "overflows"});
  Raw zero;  // a zero dimension makes the others irrelevant
  zero.header(1, 0).tensor("w", {uint64_t{1} << 62, 0, uint64_t{1} << 62}, 0, 0).pad().data(32);
  EXPECT_EQ(open_error(dir, zero.str()), "");
}

TEST(GgufReader, RejectsDataSectionStartingPastTheEnd) {
  TempDir dir;
  Raw r;
  r.header(1, 1).kv_u32("general.alignment", 1u << 20).tensor("w", {0}, 0, 0);
  expect_error(open_error(dir, r.str()), dir, {"data section would start"});
}

// Random corruption of a valid file must give smelt::Error or a file whose every tensor can be
// read, never a crash, hang or huge allocation.
TEST(GgufReader, SurvivesTwoThousandRandomMutations) {
  TempDir dir;
  std::vector<GgufKv> kvs = every_kind_of_kv();
  kvs.resize(20);
  {
    GgufWriter w(dir / "seed.gguf", kvs,
                 {{"a", GgmlType::kQ8_0, {2, 32}},
                  {"b", GgmlType::kF16, {3}},
                  {"c", GgmlType::kQ4_K, {256}}});
    for (size_t i = 0; i < 3; ++i) {
      const auto d = pattern(w.tensors()[i].nbytes(), 3);
      w.write(i, 0, d.data(), d.size());
    }
    w.finish();
  }
  const std::string seed = read_bytes(dir / "seed.gguf");
  std::mt19937_64 rng(20240521);
  const uint64_t interesting[] = {0,
                                  1,
                                  2,
                                  3,
                                  8,
                                  9,
                                  12,
                                  13,
                                  31,
                                  32,
                                  255,
                                  0xFFFF,
                                  0x7FFFFFFF,
                                  0xFFFFFFFF,
                                  uint64_t{1} << 30,
                                  uint64_t{1} << 31,
                                  uint64_t{1} << 62,
                                  uint64_t{1} << 63,
                                  UINT64_MAX};
  int opened = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string b = seed;
    const int kind = static_cast<int>(rng() % 4);
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits && !b.empty(); ++e) {
      const size_t pos = rng() % b.size();
      if (kind == 0) {
        b[pos] = static_cast<char>(rng());
      } else if (kind == 1) {
        b[pos] = static_cast<char>(b[pos] ^ (1 << (rng() % 8)));
      } else if (kind == 2) {
        const uint64_t v = interesting[rng() % std::size(interesting)];
        const size_t width = (rng() % 2) ? 8 : 4;
        if (pos + width <= b.size()) std::memcpy(b.data() + pos, &v, width);
      } else {
        b.resize(pos);
      }
    }
    // Replace rather than truncate the file: ext4 flushes on truncate-and-rewrite (~5 ms).
    std::filesystem::remove(dir / "m.gguf");
    write_bytes(dir / "m.gguf", b);
    try {
      const auto f = GgufFile::open(dir / "m.gguf");
      for (const TensorInfo& t : f->tensors()) {
        std::vector<char> buf(t.nbytes);
        f->read(t, 0, buf.data(), buf.size());
      }
      for (const GgufKv& kv : f->kvs()) {
        (void)kv.value.to_string();
        if (kv.value.is_array() && kv.value.size() > 0) (void)kv.value.at(kv.value.size() - 1);
      }
      ++opened;
    } catch (const Error&) {
    }
  }
  // Mutations in tensor data or string bytes leave the file valid: some must open.
  EXPECT_GT(opened, 50);
  EXPECT_LT(opened, 2000);
}

// ---------------------------------------------------------------------------------------------
// Split models.

// Writes a 3-part model whose parts hold tensors p0, p1, p2; `tweak` may edit a part's KVs.
void write_split(const TempDir& dir, const std::string& stem,
                 const std::function<void(uint16_t, std::vector<GgufKv>&)>& tweak = nullptr) {
  for (uint16_t i = 0; i < 3; ++i) {
    std::vector<GgufKv> kvs = {{"general.architecture", GgufValue::of("llama")},
                               {"split.no", GgufValue::of(i)},
                               {"split.count", GgufValue::of(uint16_t{3})},
                               {"split.tensors.count", GgufValue::of(int32_t{3})}};
    if (tweak) tweak(i, kvs);
    const auto name = fmt::format("{}-{:05d}-of-00003.gguf", stem, i + 1);
    GgufWriter w(dir / name, kvs, {{"p" + std::to_string(i), GgmlType::kF32, {2}}});
    w.write(0, 0, "abcdefgh", 8);
    w.finish();
  }
}

TEST(GgufSplit, FindsEveryPartFromAnyPartInOrder) {
  TempDir dir;
  write_split(dir, "model");
  const auto paths = gguf_split_paths(dir / "model-00002-of-00003.gguf");
  ASSERT_EQ(paths.size(), 3u);
  EXPECT_EQ(paths[0], dir / "model-00001-of-00003.gguf");
  EXPECT_EQ(paths[2], dir / "model-00003-of-00003.gguf");
  const auto parts = open_gguf_model(dir / "model-00001-of-00003.gguf");
  ASSERT_EQ(parts.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(parts[i]->tensors()[0].name, "p" + std::to_string(i));
  }
}

TEST(GgufSplit, PlainFileNameIsASingleFileModel) {
  TempDir dir;
  {
    GgufWriter w(dir / "model-q4.gguf", {}, {});
    w.finish();
  }
  EXPECT_EQ(gguf_split_paths(dir / "model-q4.gguf"), std::vector{dir / "model-q4.gguf"});
  EXPECT_EQ(open_gguf_model(dir / "model-q4.gguf").size(), 1u);
}

TEST(GgufSplit, MissingPartIsNamed) {
  TempDir dir;
  write_split(dir, "m");
  std::filesystem::remove(dir / "m-00003-of-00003.gguf");
  const std::string e = error_of([&] { open_gguf_model(dir / "m-00001-of-00003.gguf"); });
  EXPECT_NE(e.find((dir / "m-00003-of-00003.gguf").string()), std::string::npos) << e;
  EXPECT_NE(e.find("missing"), std::string::npos) << e;
}

TEST(GgufSplit, InconsistentSplitKeysAreErrorsNamingPartAndKey) {
  TempDir dir;
  write_split(dir, "c", [](uint16_t i, std::vector<GgufKv>& kvs) {
    if (i == 1) gguf_set_kv(kvs, "split.count", GgufValue::of(uint16_t{2}));
  });
  std::string e = error_of([&] { open_gguf_model(dir / "c-00001-of-00003.gguf"); });
  EXPECT_NE(e.find((dir / "c-00002-of-00003.gguf").string()), std::string::npos) << e;
  EXPECT_NE(e.find("'split.count' is 2"), std::string::npos) << e;

  write_split(dir, "n", [](uint16_t i, std::vector<GgufKv>& kvs) {
    if (i == 2) gguf_set_kv(kvs, "split.no", GgufValue::of(uint16_t{1}));
  });
  e = error_of([&] { open_gguf_model(dir / "n-00001-of-00003.gguf"); });
  EXPECT_NE(e.find((dir / "n-00003-of-00003.gguf").string()), std::string::npos) << e;
  EXPECT_NE(e.find("'split.no' is 1"), std::string::npos) << e;

  write_split(dir, "t", [](uint16_t, std::vector<GgufKv>& kvs) {
    gguf_set_kv(kvs, "split.tensors.count", GgufValue::of(int32_t{4}));
  });
  e = error_of([&] { open_gguf_model(dir / "t-00001-of-00003.gguf"); });
  EXPECT_NE(e.find("'split.tensors.count' is 4"), std::string::npos) << e;

  write_split(dir, "k", [](uint16_t i, std::vector<GgufKv>& kvs) {
    if (i == 1) gguf_remove_kv(kvs, "split.count");
  });
  e = error_of([&] { open_gguf_model(dir / "k-00001-of-00003.gguf"); });
  EXPECT_NE(e.find((dir / "k-00002-of-00003.gguf").string()), std::string::npos) << e;
  EXPECT_NE(e.find("'split.count' is missing"), std::string::npos) << e;
}

TEST(GgufSplit, TensorInTwoPartsIsAnError) {
  TempDir dir;
  for (uint16_t i = 0; i < 2; ++i) {
    std::vector<GgufKv> kvs = {{"split.no", GgufValue::of(i)},
                               {"split.count", GgufValue::of(uint16_t{2})}};
    GgufWriter w(dir / fmt::format("d-{:05d}-of-00002.gguf", i + 1), kvs,
                 {{"same", GgmlType::kF32, {1}}});
    w.write(0, 0, "abcd", 4);
    w.finish();
  }
  const std::string e = error_of([&] { open_gguf_model(dir / "d-00001-of-00002.gguf"); });
  EXPECT_NE(e.find("tensor 'same' also appears in"), std::string::npos) << e;
}

TEST(GgufSplit, SplitCountWithoutSplitFileNameIsAnError) {
  TempDir dir;
  {
    GgufWriter w(
        dir / "renamed.gguf",
        {{"split.no", GgufValue::of(uint16_t{0})}, {"split.count", GgufValue::of(uint16_t{3})}},
        {});
    w.finish();
  }
  const std::string e = error_of([&] { open_gguf_model(dir / "renamed.gguf"); });
  EXPECT_NE(e.find("renamed.gguf"), std::string::npos) << e;
  EXPECT_NE(e.find("'split.count' is 3"), std::string::npos) << e;
}

}  // namespace
}  // namespace smelt::io
