// Tests of model references: parsing, folder / file / Hugging Face cache resolution, and errors.
#include "smelt/io/model_ref.h"

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "smelt/dev/make_model.h"
#include "smelt/error.h"
#include "test_util.h"

namespace smelt::io {
namespace {

namespace fs = std::filesystem;
using smelt::testing::TempDir;
using smelt::testing::write_bytes;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Sets an environment variable for the lifetime of the object.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() { had_ ? setenv(name_, old_.c_str(), 1) : unsetenv(name_); }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

TEST(ModelRef, ParsesRevisionAndLoraAndRoundTrips) {
  ModelRef r = ModelRef::parse("org/model@v1.0+org/lora@main");
  EXPECT_EQ(r.path, "org/model");
  EXPECT_EQ(r.revision, "v1.0");
  EXPECT_EQ(r.lora_path, "org/lora");
  EXPECT_EQ(r.lora_revision, "main");
  EXPECT_EQ(ModelRef::parse(r.str()), r);
  EXPECT_EQ(ModelRef::parse("org/model").str(), "org/model");
  EXPECT_EQ(ModelRef::parse("a+b").lora_path, "b");
}

TEST(ModelRef, RejectsMalformedReferences) {
  EXPECT_THROW(ModelRef::parse("a+b+c"), Error);
  EXPECT_THROW(ModelRef::parse("@@@@@"), Error);
  EXPECT_THROW(ModelRef::parse("a+b+c@d+e@f@g"), Error);
  EXPECT_THROW(ModelRef::parse("a@b@c"), Error);
  EXPECT_THROW(ModelRef::parse(""), Error);
}

TEST(ModelRef, ExistingLocalPathIsTakenWhole) {
  TempDir dir;
  fs::create_directories(dir / "odd@name+x");
  EXPECT_EQ(ModelRef::parse((dir / "odd@name+x").string()).path, (dir / "odd@name+x").string());
}

class ModelResolve : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    dev::MakeModelOptions o;
    o.hidden_size = 16, o.num_layers = 2, o.num_heads = 2, o.vocab_size = 260;
    dev::make_model(o, *dir_ / "single");
    o.shards = 3;
    dev::make_model(o, *dir_ / "sharded");
  }
  static void TearDownTestSuite() { delete dir_; }
  static TempDir* dir_;
};
TempDir* ModelResolve::dir_ = nullptr;

TEST_F(ModelResolve, FolderWithOneFile) {
  ResolvedModel r = resolve_model(ModelRef::parse((*dir_ / "single").string()));
  ASSERT_EQ(r.weight_files.size(), 1u);
  EXPECT_EQ(r.weight_files[0].filename(), "model.safetensors");
  EXPECT_EQ(r.config_json.filename(), "config.json");
  EXPECT_FALSE(r.single_file);
}

TEST_F(ModelResolve, ShardedFolderWithIndex) {
  ResolvedModel r = resolve_model(ModelRef::parse((*dir_ / "sharded").string()));
  EXPECT_EQ(r.weight_files.size(), 3u);
  EXPECT_EQ(r.index_json.filename(), "model.safetensors.index.json");
  auto single = Model::open((*dir_ / "single").string());
  auto sharded = Model::open((*dir_ / "sharded").string());
  EXPECT_EQ(single->tensors().size(), sharded->tensors().size());
}

TEST_F(ModelResolve, SingleSafetensorsFile) {
  ResolvedModel r =
      resolve_model(ModelRef::parse((*dir_ / "single" / "model.safetensors").string()));
  EXPECT_TRUE(r.single_file);
  EXPECT_EQ(r.weight_files.size(), 1u);
}

TEST_F(ModelResolve, HubIdFoundInCacheByRefAndByCommit) {
  TempDir cache;
  const std::string commit = "0123456789abcdef0123456789abcdef01234567";
  const fs::path repo = cache / "models--org--tiny";
  fs::create_directories(repo / "refs");
  fs::create_directories(repo / "snapshots");
  write_bytes(repo / "refs" / "main", commit + "\n");
  fs::copy(*dir_ / "sharded", repo / "snapshots" / commit, fs::copy_options::recursive);
  ScopedEnv env("HF_HUB_CACHE", cache.path().string());
  ResolvedModel r = resolve_model(ModelRef::parse("org/tiny"));
  EXPECT_EQ(r.root, repo / "snapshots" / commit);
  EXPECT_EQ(r.weight_files.size(), 3u);
  ResolvedModel by_hash = resolve_model(ModelRef::parse("org/tiny@" + commit));
  EXPECT_EQ(by_hash.root, r.root);
  const std::string e = error_of([] { resolve_model(ModelRef::parse("org/tiny@v2")); });
  EXPECT_NE(e.find("refs/v2"), std::string::npos) << e;
}

TEST_F(ModelResolve, HfHomeIsUsedWhenHubCacheUnset) {
  TempDir home;
  ScopedEnv unset_guard("HF_HUB_CACHE", "");
  ScopedEnv env("HF_HOME", home.path().string());
  EXPECT_EQ(hf_hub_cache_dir(), home.path() / "hub");
}

TEST_F(ModelResolve, CacheIdWithNoSnapshotListsPlacesLooked) {
  TempDir cache;
  const fs::path repo = cache / "models--org--gone";
  fs::create_directories(repo / "refs");
  write_bytes(repo / "refs" / "main", "0123456789abcdef0123456789abcdef01234567");
  ScopedEnv env("HF_HUB_CACHE", cache.path().string());
  const std::string e = error_of([] { resolve_model(ModelRef::parse("org/gone")); });
  EXPECT_NE(e.find("'org/gone' not found"), std::string::npos) << e;
  EXPECT_NE(e.find("local path"), std::string::npos) << e;
  EXPECT_NE(e.find("snapshots/0123456789abcdef"), std::string::npos) << e;
  EXPECT_NE(e.find("missing"), std::string::npos) << e;
}

TEST_F(ModelResolve, FolderWithNoWeights) {
  TempDir empty;
  write_bytes(empty / "config.json", "{}");
  const std::string e = error_of([&] { resolve_model(ModelRef::parse(empty.path().string())); });
  EXPECT_NE(e.find("has no weights"), std::string::npos) << e;
  EXPECT_NE(e.find(empty.path().string()), std::string::npos) << e;
}

TEST_F(ModelResolve, FolderWithOnlyPytorchBinResolvesToItAndACorruptOneIsAnError) {
  TempDir d;
  write_bytes(d / "pytorch_model.bin", "PK");
  const ResolvedModel r = resolve_model(ModelRef::parse(d.path().string()));
  ASSERT_EQ(r.weight_files.size(), 1u);
  EXPECT_EQ(r.weight_files[0].filename(), "pytorch_model.bin");
  const std::string e = error_of([&] { Model::open(r); });
  EXPECT_NE(e.find("pytorch_model.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("not a PyTorch checkpoint"), std::string::npos) << e;
}

TEST_F(ModelResolve, IndexNamingAMissingShard) {
  TempDir d;
  fs::copy(*dir_ / "sharded", d / "m", fs::copy_options::recursive);
  fs::remove(d / "m" / "model-00002-of-00003.safetensors");
  const std::string e = error_of([&] { resolve_model(ModelRef::parse((d / "m").string())); });
  EXPECT_NE(e.find("model.safetensors.index.json"), std::string::npos) << e;
  EXPECT_NE(e.find("model-00002-of-00003.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("missing"), std::string::npos) << e;
}

TEST_F(ModelResolve, IndexMappingATensorItsShardLacks) {
  TempDir d;
  fs::copy(*dir_ / "sharded", d / "m", fs::copy_options::recursive);
  auto index =
      nlohmann::json::parse(smelt::testing::read_bytes(d / "m" / "model.safetensors.index.json"));
  index["weight_map"]["model.ghost.weight"] = "model-00001-of-00003.safetensors";
  write_bytes(d / "m" / "model.safetensors.index.json", index.dump());
  const std::string e = error_of([&] { Model::open((d / "m").string()); });
  EXPECT_NE(e.find("'model.ghost.weight'"), std::string::npos) << e;
  EXPECT_NE(e.find("does not contain it"), std::string::npos) << e;
}

// Model::open re-reads the index: one that went bad after resolution (or a ResolvedModel built by
// hand) is a smelt::Error naming the file, not a JSON library exception or a read of a missing key.
TEST_F(ModelResolve, OpenWithAnIndexThatIsNoLongerValid) {
  TempDir d;
  fs::copy(*dir_ / "sharded", d / "m", fs::copy_options::recursive);
  // resolve_model parses the index once and Model::open uses that; a ResolvedModel built by
  // hand (no parsed weight map) has its index parsed, with the same checks, by Model::open.
  ResolvedModel resolved = resolve_model(ModelRef::parse((d / "m").string()));
  EXPECT_FALSE(resolved.index_weight_map.empty());
  resolved.index_weight_map.clear();
  for (const char* text :
       {"{\"weight_map\": 3}", "{}", "[1]", "{\"weight_map\": {\"a\": 1}}", "{"}) {
    write_bytes(d / "m" / "model.safetensors.index.json", text);
    const std::string e = error_of([&] { Model::open(resolved); });
    EXPECT_NE(e.find("model.safetensors.index.json"), std::string::npos) << text << ": " << e;
  }
}

TEST(SafetensorsIndex, ParsesTheWeightMapInNameOrder) {
  const auto map = parse_safetensors_index(
      R"({"metadata": {"total_size": 8}, "weight_map": {"b": "s2.safetensors", "a": "s1.safetensors"}})",
      "i.json");
  ASSERT_EQ(map.size(), 2u);
  EXPECT_EQ(map[0], (std::pair<std::string, std::string>("a", "s1.safetensors")));
  EXPECT_EQ(map[1], (std::pair<std::string, std::string>("b", "s2.safetensors")));
}

TEST(SafetensorsIndex, MalformedIndexIsAnErrorNamingTheFile) {
  const std::pair<const char*, const char*> cases[] = {
      {"{", "not valid JSON"},
      {"[]", "no \"weight_map\" object"},
      {R"({"weight_map": []})", "no \"weight_map\" object"},
      {R"({"weight_map": {}})", "weight_map is empty"},
      {R"({"weight_map": {"t": 1}})", "entry 't' must be a file name string"},
      {R"({"weight_map": {"t": "../x.safetensors"}})", "not a plain file name"},
      {R"({"weight_map": {"t": ".."}})", "not a plain file name"},
      {R"({"weight_map": {"t": ""}})", "not a plain file name"},
  };
  for (const auto& [text, message] : cases) {
    const std::string e = error_of([&] { parse_safetensors_index(text, "i.json"); });
    EXPECT_NE(e.find("i.json: "), std::string::npos) << text << ": " << e;
    EXPECT_NE(e.find(message), std::string::npos) << text << ": " << e;
  }
}

TEST_F(ModelResolve, LoraReferenceResolvesTheBaseAndTheAdapterFolder) {
  const std::string e =
      error_of([&] { resolve_model(ModelRef::parse((*dir_ / "single").string() + "+some/lora")); });
  EXPECT_NE(e.find("LoRA adapter 'some/lora' of model"), std::string::npos) << e;
  EXPECT_NE(e.find("not found"), std::string::npos) << e;
  // A local adapter folder: the base resolves as without it; the folder's contents are checked
  // when the model is opened (lora_bake_test.cpp).
  const ResolvedModel r = resolve_model(
      ModelRef::parse((*dir_ / "single").string() + "+" + (*dir_ / "sharded").string()));
  EXPECT_EQ(r.root, *dir_ / "single");
  EXPECT_EQ(r.lora_dir, *dir_ / "sharded");
  EXPECT_NE(r.ref.find("+"), std::string::npos);
  const std::string open_error = error_of([&] { Model::open(r); });
  EXPECT_NE(open_error.find("adapter_config.json is missing"), std::string::npos) << open_error;
}

}  // namespace
}  // namespace smelt::io
