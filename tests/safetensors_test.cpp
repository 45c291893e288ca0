// Tests of the safetensors reader (every validation rule) and the streaming, sharded writer.
#include "smelt/io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "smelt/error.h"
#include "smelt/io/model_ref.h"
#include "test_util.h"

namespace smelt::io {
namespace {

using smelt::testing::raw_safetensors;
using smelt::testing::read_bytes;
using smelt::testing::TempDir;
using smelt::testing::write_bytes;

// Opens `bytes` as a file and returns the error message (empty if it opened).
std::string open_error(const TempDir& dir, const std::string& name, const std::string& bytes) {
  write_bytes(dir / name, bytes);
  try {
    SafetensorsFile::open(dir / name);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<char> pattern(uint64_t n, int salt) {
  std::vector<char> v(n);
  for (uint64_t i = 0; i < n; ++i)
    v[i] = static_cast<char>((i * 131 + salt * 17 + (i >> 8)) & 0xFF);
  return v;
}

TEST(Safetensors_RoundTrip, EveryDtypeScalarAndEmptyTensorsReadBackBitIdentical) {
  TempDir dir;
  std::vector<TensorSpec> specs;
  for (int d = 0; d < kDTypeCount; ++d) {
    const DType t = static_cast<DType>(d);
    // 12 elements is a whole number of bytes for 4-, 6- and 8k-bit types.
    specs.push_back({"t." + std::string(dtype_name(t)), t, {3, 4}});
  }
  specs.push_back({"scalar", DType::kF32, {}});
  specs.push_back({"empty", DType::kBF16, {0, 7}});
  specs.push_back({"empty.1d", DType::kF16, {0}});
  std::vector<std::vector<char>> data;
  {
    SafetensorsWriter w(dir / "all.safetensors", specs, {{"note", "hello"}});
    for (size_t i = 0; i < specs.size(); ++i) {
      data.push_back(pattern(specs[i].nbytes(), static_cast<int>(i)));
      // Write in two pieces, second first, to exercise offset writes.
      const uint64_t half = data[i].size() / 2;
      w.write(i, half, data[i].data() + half, data[i].size() - half);
      w.write(i, 0, data[i].data(), half);
    }
    w.finish();
  }
  auto f = SafetensorsFile::open(dir / "all.safetensors");
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("note"), "hello");
  ASSERT_EQ(f->tensors().size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorInfo* t = f->find(specs[i].name);
    ASSERT_NE(t, nullptr) << specs[i].name;
    EXPECT_EQ(t->dtype, specs[i].dtype);
    EXPECT_EQ(t->shape, specs[i].shape);
    EXPECT_EQ(t->nbytes, data[i].size());
    // Natural alignment of every element type within the file.
    const uint64_t elem = std::max(1, dtype_bits(t->dtype) / 8);
    EXPECT_EQ(t->offset % elem, 0u) << t->name;
    std::vector<char> back(t->nbytes);
    f->read(*t, 0, back.data(), back.size());
    EXPECT_EQ(back, data[i]) << specs[i].name;
  }
  // The header starts with '{' and the data section is 8-aligned.
  const std::string raw = read_bytes(dir / "all.safetensors");
  EXPECT_EQ(raw[8], '{');
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(raw[i]);
  EXPECT_EQ((8 + n) % 8, 0u);
}

TEST(Safetensors_RoundTrip, MultiGigabyteShapedTensorOpensFromSparseFile) {
  TempDir dir;
  // 3 GiB of BF16 described by the header; the file is sparse so no disk is used.
  const uint64_t rows = 49152, cols = 32768;
  const uint64_t nbytes = rows * cols * 2;
  const std::string header = fmt::format(
      R"({{"big":{{"dtype":"BF16","shape":[{},{}],"data_offsets":[0,{}]}},"tail":{{"dtype":"U8","shape":[3],"data_offsets":[{},{}]}}}})",
      rows, cols, nbytes, nbytes, nbytes + 3);
  std::string head = raw_safetensors(header, 0);
  write_bytes(dir / "big.safetensors", head);
  const int fd = ::open((dir / "big.safetensors").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(head.size() + nbytes + 3)), 0);
  ASSERT_EQ(::pwrite(fd, "xyz", 3, static_cast<off_t>(head.size() + nbytes)), 3);
  ::close(fd);
  auto f = SafetensorsFile::open(dir / "big.safetensors");
  const TensorInfo* big = f->find("big");
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(big->numel(), rows * cols);
  EXPECT_EQ(big->nbytes, nbytes);
  char tail[3];
  f->read(*f->find("tail"), 0, tail, 3);
  EXPECT_EQ(std::string(tail, 3), "xyz");
}

TEST(Safetensors_Sharding, ThreeShardsWithIndexReadBackAsTheSameModel) {
  TempDir dir;
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 9; ++i)
    specs.push_back({fmt::format("layer.{}.w", i), DType::kF32, {10, 10}});
  // 400 bytes each; a 1200-byte limit holds 3 per shard.
  ShardedWriter w(dir.path(), specs, 1200, {});
  ASSERT_EQ(w.layout().shards.size(), 3u);
  std::vector<std::vector<char>> data;
  for (size_t i = 0; i < specs.size(); ++i) {
    data.push_back(pattern(400, static_cast<int>(i)));
    w.write(i, 0, data[i].data(), 400);
  }
  w.finish();
  for (int s = 1; s <= 3; ++s) {
    EXPECT_TRUE(std::filesystem::exists(dir / fmt::format("model-{:05d}-of-00003.safetensors", s)));
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors"));
  const auto index = nlohmann::json::parse(read_bytes(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 9 * 400);
  EXPECT_EQ(index["weight_map"]["layer.0.w"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["layer.4.w"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["layer.8.w"], "model-00003-of-00003.safetensors");
  auto model = Model::open(dir.path().string());
  ASSERT_EQ(model->tensors().size(), 9u);
  for (size_t i = 0; i < specs.size(); ++i) {
    ModelTensor t = model->find(specs[i].name);
    ASSERT_NE(t.info, nullptr);
    std::vector<char> back(400);
    t.file->read(*t.info, 0, back.data(), 400);
    EXPECT_EQ(back, data[i]);
  }
}

TEST(Safetensors_Sharding, TensorLargerThanLimitGetsItsOwnShard) {
  std::vector<TensorSpec> specs = {{"a", DType::kU8, {10}},
                                   {"big", DType::kU8, {100}},
                                   {"b", DType::kU8, {10}},
                                   {"c", DType::kU8, {10}}};
  ShardLayout l = plan_shards(specs, 25);
  ASSERT_EQ(l.shards.size(), 3u);
  EXPECT_EQ(l.shards[0], (std::vector<size_t>{0}));
  EXPECT_EQ(l.shards[1], (std::vector<size_t>{1}));
  EXPECT_EQ(l.shards[2], (std::vector<size_t>{2, 3}));
  EXPECT_EQ(plan_shards(specs, 1000).file_names, (std::vector<std::string>{"model.safetensors"}));
}

TEST(Safetensors_Sharding, ShardSizeParsesMergekitSuffixes) {
  EXPECT_EQ(parse_shard_size("5B"), 5'000'000'000u);
  EXPECT_EQ(parse_shard_size("500m"), 500'000'000u);
  EXPECT_EQ(parse_shard_size("2k"), 2000u);
  EXPECT_EQ(parse_shard_size("1234"), 1234u);
  EXPECT_THROW(parse_shard_size("5GB"), Error);
  EXPECT_THROW(parse_shard_size(""), Error);
  EXPECT_THROW(parse_shard_size("-3"), Error);
  EXPECT_THROW(parse_shard_size("0"), Error);
}

TEST(Safetensors_Writer, UnfinishedWriterLeavesNoFile) {
  TempDir dir;
  {
    SafetensorsWriter w(dir / "x.safetensors", {{"a", DType::kF32, {4}}}, {});
    float v[2] = {1, 2};
    w.write(0, 0, v, 8);
    EXPECT_THROW(w.finish(), Error);  // 8 of 16 bytes written
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "x.safetensors"));
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(Safetensors_Writer, WriteOutsideTensorIsRejected) {
  TempDir dir;
  SafetensorsWriter w(dir / "x.safetensors", {{"a", DType::kF32, {4}}}, {});
  char buf[32] = {};
  EXPECT_THROW(w.write(0, 8, buf, 16), Error);
}

// ---- bad input: each message names the file, the tensor and the rule ----

class SafetensorsBadInput : public ::testing::Test {
 protected:
  std::string err(const std::string& header, size_t data_bytes, size_t cut = 0) {
    std::string bytes = raw_safetensors(header, data_bytes);
    bytes.resize(bytes.size() - cut);
    return open_error(dir_, "bad.safetensors", bytes);
  }
  TempDir dir_;
};

const char* kGood = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";

TEST_F(SafetensorsBadInput, ValidFileOpens) { EXPECT_EQ(err(kGood, 16), ""); }

TEST_F(SafetensorsBadInput, TruncatedFile) {
  const std::string e = err(kGood, 16, 5);
  EXPECT_NE(e.find("bad.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, FileShorterThanLengthField) {
  const std::string e = open_error(dir_, "tiny.safetensors", "abc");
  EXPECT_NE(e.find("tiny.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("too small"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, HeaderLengthBeyondFile) {
  std::string bytes = raw_safetensors(kGood, 16);
  bytes[0] = static_cast<char>(0xFF);  // N = 255 + ... > file size
  bytes[1] = static_cast<char>(0x7F);
  const std::string e = open_error(dir_, "bad.safetensors", bytes);
  EXPECT_NE(e.find("beyond the end of the file"), std::string::npos) << e;
  EXPECT_NE(e.find("bad.safetensors"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, HeaderOverCeiling) {
  std::string bytes = raw_safetensors(kGood, 16);
  const uint64_t n = kMaxHeaderBytes + 1;
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  const std::string e = open_error(dir_, "bad.safetensors", bytes);
  EXPECT_NE(e.find("ceiling"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, HeaderNotUtf8) {
  std::string h = kGood;
  h.replace(2, 1, "\xC3\x28");  // invalid 2-byte sequence inside the tensor name
  const std::string e = err(h, 16);
  EXPECT_NE(e.find("UTF-8"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, HeaderNotJson) {
  const std::string e = err(R"({"w":{"dtype":"F32",)", 0);
  EXPECT_NE(e.find("not valid JSON"), std::string::npos) << e;
  EXPECT_NE(e.find("bad.safetensors"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, UnknownDtype) {
  const std::string e = err(R"({"w":{"dtype":"F12","shape":[2],"data_offsets":[0,4]}})", 4);
  EXPECT_NE(e.find("'w'"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown dtype 'F12'"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, MissingTensorKey) {
  const std::string e = err(R"({"w":{"dtype":"F32","shape":[1]}})", 0);
  EXPECT_NE(e.find("'w'"), std::string::npos) << e;
  EXPECT_NE(e.find("missing key 'data_offsets'"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, ExtraTensorKey) {
  const std::string e =
      err(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"stride":[1]}})", 4);
  EXPECT_NE(e.find("unexpected key 'stride'"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, DuplicateTensorNames) {
  const std::string e = err(
      R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
      2);
  EXPECT_NE(e.find("'w' appears twice"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, MetadataMustBeStrings) {
  const std::string e =
      err(R"({"__metadata__":{"n":3},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1);
  EXPECT_NE(e.find("__metadata__ key 'n'"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, GapBetweenTensors) {
  const std::string e = err(
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})",
      5);
  EXPECT_NE(e.find("'b'"), std::string::npos) << e;
  EXPECT_NE(e.find("gap"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, OverlappingTensors) {
  const std::string e = err(
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})",
      3);
  EXPECT_NE(e.find("'b'"), std::string::npos) << e;
  EXPECT_NE(e.find("overlap"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, FirstTensorNotAtZero) {
  const std::string e = err(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})", 4);
  EXPECT_NE(e.find("'a'"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, ShapeTimesDtypeDiffersFromSpan) {
  const std::string e = err(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})", 16);
  EXPECT_NE(e.find("'w'"), std::string::npos) << e;
  EXPECT_NE(e.find("needs 24 bytes but data_offsets span 16"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, ShapeOverflow) {
  const std::string e =
      err(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}})", 16);
  EXPECT_NE(e.find("'w'"), std::string::npos) << e;
  EXPECT_NE(e.find("overflow"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, FractionalBytes) {
  const std::string e = err(R"({"w":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", 2);
  EXPECT_NE(e.find("not a whole number of bytes"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, NegativeOrFloatShape) {
  EXPECT_NE(
      err(R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", 0).find("non-negative"),
      std::string::npos);
  EXPECT_NE(
      err(R"({"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", 1).find("non-negative"),
      std::string::npos);
}

TEST_F(SafetensorsBadInput, TrailingBytes) {
  std::string bytes = raw_safetensors(kGood, 16) + "junk";
  const std::string e = open_error(dir_, "bad.safetensors", bytes);
  EXPECT_NE(e.find("4 trailing bytes"), std::string::npos) << e;
}

TEST_F(SafetensorsBadInput, HeaderNotAnObject) {
  EXPECT_NE(err("[1,2]", 0).find("must be a JSON object"), std::string::npos);
}

TEST_F(SafetensorsBadInput, WhitespacePaddedHeaderIsAccepted) {
  EXPECT_EQ(err(std::string(kGood) + "    \t\n", 16), "");
}

}  // namespace
}  // namespace smelt::io
