// Hub downloads (docs/hub.md) against tests/hub/mock_hub.py on 127.0.0.1: cache layout, no
// request when cached, resume with Range, checksum checks, gated/404/offline/network errors.
#include <fmt/format.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "smelt/io/hub_client.h"
#include "smelt/io/safetensors.h"
#include "test_util.h"

namespace smelt {
namespace {
namespace fs = std::filesystem;
using testing::quote;
using testing::read_bytes;
using testing::run_command;
using testing::TempDir;

#define EXPECT_HAS(text, part) \
  EXPECT_NE((text).find(part), std::string::npos) << "missing '" << (part) << "' in:\n" << (text)

const std::string kCommitA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1";
const std::string kCommitB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2";
const std::string kCommitG = "ccccccccccccccccccccccccccccccccccccccc3";

std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int i = 0; i < n; ++i) hex += fmt::format("{:02x}", md[i]);
  return hex;
}

// tests/hub/mock_hub.py as a child process, stopped (by its pid) when the object dies.
class MockHub {
 public:
  MockHub(const fs::path& dir, const nlohmann::json& config) : dir_(dir) {
    testing::write_bytes(dir / "hub.json", config.dump());
    const std::string script = std::string(SMELT_SOURCE_DIR) + "/tests/hub/mock_hub.py";
    const std::string cfg = (dir / "hub.json").string();
    const std::string port = (dir / "hub.port").string();
    const std::string log = (dir / "hub.log").string();
    pid_ = fork();
    if (pid_ == 0) {
      execlp("python3", "python3", script.c_str(), cfg.c_str(), port.c_str(), log.c_str(),
             static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 200 && !fs::exists(dir / "hub.port"); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    endpoint_ = "http://127.0.0.1:" + read_bytes(dir / "hub.port");
  }
  ~MockHub() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  const std::string& endpoint() const { return endpoint_; }
  // Every request served so far, one JSON object each (method, path, range, auth, bytes).
  std::vector<nlohmann::json> log() const {
    std::vector<nlohmann::json> out;
    std::istringstream in(read_bytes(dir_ / "hub.log"));
    for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
    return out;
  }

 private:
  fs::path dir_;
  pid_t pid_ = -1;
  std::string endpoint_;
};

class Hub : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* m : {"a", "b"}) {
      auto made = testing::run_smelt(
          fmt::format("dev make-model {} --hidden 32 --layers 2 --heads 2 --vocab 300 --seed {}",
                      quote(dir / "src" / m), m[0] == 'a' ? 1 : 2));
      ASSERT_EQ(made.exit_code, 0) << made.output;
    }
    testing::write_bytes(dir / "src" / "README.md", "# a model card\n");
    testing::write_bytes(dir / "src" / "pytorch_model.bin", "not needed when safetensors exist");
    fs::create_directories(dir / "home");
  }

  // A repo entry of the mock's config serving every file of `folder` (+ README, a .bin).
  nlohmann::json repo(const std::string& folder, const std::string& commit, bool gated = false) {
    nlohmann::json files = nlohmann::json::object();
    for (const auto& e : fs::directory_iterator(dir / "src" / folder)) {
      files[e.path().filename().string()] = e.path().string();
    }
    files["README.md"] = (dir / "src" / "README.md").string();
    files["pytorch_model.bin"] = (dir / "src" / "pytorch_model.bin").string();
    return {{"commit", commit}, {"revisions", {"main"}}, {"gated", gated}, {"files", files}};
  }

  nlohmann::json config() {
    nlohmann::json c;
    c["repos"]["org/a"] = repo("a", kCommitA);
    c["repos"]["org/b"] = repo("b", kCommitB);
    c["repos"]["org/gated"] = repo("a", kCommitG, true);
    c["token"] = "hf_right";
    return c;
  }

  // smelt with the Hub at `endpoint`, the cache in the temp dir and no token unless given.
  testing::CommandResult smelt(const std::string& endpoint, const std::string& args,
                               const std::string& env = "") {
    return run_command(fmt::format(
        "env -u HF_TOKEN -u HUGGING_FACE_HUB_TOKEN -u HF_HUB_OFFLINE -u TRANSFORMERS_OFFLINE "
        "-u HF_TOKEN_PATH HF_ENDPOINT={} HF_HUB_CACHE={} HF_HOME={} {} {} {}",
        endpoint, quote(cache()), quote(dir / "home"), env, SMELT_BIN, args));
  }

  fs::path cache() const { return dir / "cache"; }
  fs::path repo_dir(const std::string& name) const { return cache() / ("models--org--" + name); }
  std::string weights_sha(const std::string& m) const {
    return sha256_hex(read_bytes(dir / "src" / m / "model.safetensors"));
  }

  TempDir dir;
};

TEST(HubUnits, QuoteSelectAndFolder) {
  EXPECT_EQ(io::hub_quote("refs/pr/1", ""), "refs%2Fpr%2F1");
  EXPECT_EQ(io::hub_quote("sub dir/a+b.json", "/"), "sub%20dir/a%2Bb.json");
  EXPECT_EQ(io::hub_repo_folder("org/name"), "models--org--name");
  EXPECT_TRUE(io::hub_env_true("YES"));
  EXPECT_FALSE(io::hub_env_true("0"));
  using V = std::vector<std::string>;
  EXPECT_EQ(
      io::hub_select_files({"README.md", "config.json", "model.safetensors", "pytorch_model.bin",
                            "tokenizer.json", "onnx/model.onnx", "sub/config.json"}),
      (V{"config.json", "model.safetensors", "tokenizer.json"}));
  EXPECT_EQ(
      io::hub_select_files({"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                            "model.safetensors.index.json", "consolidated.safetensors"}),
      (V{"model.safetensors.index.json"}));
  EXPECT_EQ(io::hub_select_files({"pytorch_model-00001-of-00002.bin",
                                  "pytorch_model-00002-of-00002.bin", "generation_config.json"}),
            (V{"generation_config.json", "pytorch_model-00001-of-00002.bin",
               "pytorch_model-00002-of-00002.bin"}));
  // A PEFT LoRA adapter repo (docs/lora.md).
  EXPECT_EQ(io::hub_select_files({"README.md", "adapter_config.json", "adapter_model.safetensors",
                                  "adapter_model.bin"}),
            (V{"adapter_config.json", "adapter_model.safetensors"}));
}

TEST_F(Hub, ALoraAdapterIdIsPlannedDownloadedAndAppliedOnRead) {
  // A rank-2 adapter on org/a's layer-0 q_proj ([32, 32]).
  const fs::path ad = dir / "src" / "ad";
  fs::create_directories(ad);
  testing::write_bytes(ad / "adapter_config.json",
                       R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                           "target_modules": ["q_proj"]})");
  {
    const std::string p = "base_model.model.model.layers.0.self_attn.q_proj.";
    io::SafetensorsWriter w(
        ad / "adapter_model.safetensors",
        {{p + "lora_A.weight", DType::kF32, {2, 32}}, {p + "lora_B.weight", DType::kF32, {32, 2}}},
        {});
    std::vector<float> v(64);
    for (size_t i = 0; i < v.size(); ++i) v[i] = 0.01f * static_cast<float>(i % 7) - 0.03f;
    w.write(0, 0, v.data(), 256);
    w.write(1, 0, v.data(), 256);
    w.finish();
  }
  auto c = config();
  const std::string commit = "ddddddddddddddddddddddddddddddddddddddd4";
  c["repos"]["org/ad"] = {
      {"commit", commit},
      {"revisions", {"main"}},
      {"gated", false},
      {"files",
       {{"adapter_config.json", (ad / "adapter_config.json").string()},
        {"adapter_model.safetensors", (ad / "adapter_model.safetensors").string()},
        {"README.md", (dir / "src" / "README.md").string()}}}};
  MockHub hub(dir.path(), c);
  testing::write_bytes(dir / "hub.yml",
                       "models:\n  - model: org/a+org/ad\n    parameters: {weight: 1}\n"
                       "merge_method: linear\ndtype: bfloat16\n");
  // Planning reads org/a's headers only, and fetches the (small) adapter whole.
  auto r = smelt(hub.endpoint(), "plan " + quote(dir / "hub.yml"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(repo_dir("a") / "snapshots" / kCommitA / "model.safetensors"));
  const fs::path ad_snap = repo_dir("ad") / "snapshots" / commit;
  EXPECT_EQ(read_bytes(ad_snap / "adapter_model.safetensors"),
            read_bytes(ad / "adapter_model.safetensors"));
  EXPECT_FALSE(fs::exists(ad_snap / "README.md"));
  r = smelt(hub.endpoint(), "merge " + quote(dir / "hub.yml") + " " + quote(dir / "out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The same tensors as the local folders give; not org/a's own.
  testing::write_bytes(dir / "local.yml",
                       fmt::format("models:\n  - model: {}+{}\n    parameters: {{weight: 1}}\n"
                                   "merge_method: linear\ndtype: bfloat16\n",
                                   (dir / "src" / "a").string(), ad.string()));
  r = testing::run_smelt("merge " + quote(dir / "local.yml") + " " + quote(dir / "local"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // (The files' metadata records each config's text, so tensors are compared.)
  const auto out = io::SafetensorsFile::open(dir / "out/model.safetensors");
  const auto local = io::SafetensorsFile::open(dir / "local/model.safetensors");
  const auto base = io::SafetensorsFile::open(dir / "src/a/model.safetensors");
  auto bytes = [](const io::SafetensorsFile& f, const std::string& name) {
    const io::TensorInfo* t = f.find(name);
    std::string b(t ? t->nbytes : 0, '\0');
    if (t) f.read(*t, 0, b.data(), b.size());
    return b;
  };
  ASSERT_EQ(out->tensors().size(), local->tensors().size());
  size_t changed = 0;
  for (const io::TensorInfo& t : out->tensors()) {
    EXPECT_TRUE(bytes(*out, t.name) == bytes(*local, t.name)) << t.name;
    changed += bytes(*out, t.name) != bytes(*base, t.name);
  }
  EXPECT_EQ(changed, 1u);  // layer 0's q_proj
  // The model card lists the model and the adapter as Hub ids.
  const std::string card = read_bytes(dir / "out/README.md");
  EXPECT_HAS(card, "- org/a\n");
  EXPECT_HAS(card, "- org/ad\n");
}

TEST_F(Hub, DownloadThenMergeFillTheCacheLayoutAndASecondRunMakesNoRequest) {
  MockHub hub(dir.path(), config());
  auto r = smelt(hub.endpoint(), "download org/a", "HF_TOKEN=hf_secret");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const fs::path snap = repo_dir("a") / "snapshots" / kCommitA;
  EXPECT_HAS(r.output, snap.string());
  // blobs/<sha256> + a relative snapshot symlink + refs/main holding exactly the commit.
  const std::string sha = weights_sha("a");
  EXPECT_TRUE(fs::is_regular_file(repo_dir("a") / "blobs" / sha));
  ASSERT_TRUE(fs::is_symlink(snap / "model.safetensors"));
  EXPECT_EQ(fs::read_symlink(snap / "model.safetensors"), fs::path("../../blobs") / sha);
  EXPECT_EQ(read_bytes(snap / "model.safetensors"), read_bytes(dir / "src/a/model.safetensors"));
  EXPECT_TRUE(fs::is_symlink(snap / "config.json"));
  EXPECT_EQ(read_bytes(repo_dir("a") / "refs" / "main"), kCommitA);
  EXPECT_FALSE(fs::exists(snap / "README.md"));
  EXPECT_FALSE(fs::exists(snap / "pytorch_model.bin"));
  for (const auto& e : hub.log()) {
    const std::string path = e["path"];
    EXPECT_EQ(path.find("README"), std::string::npos) << path;
    // The token goes to the endpoint only, never to the CDN host of LFS files.
    if (path.rfind("/cdn/", 0) == 0) {
      EXPECT_EQ(e["auth"], "") << path;
    } else {
      EXPECT_EQ(e["auth"], "Bearer hf_secret") << path;
    }
  }

  testing::write_bytes(dir / "merge.yml",
                       "models:\n  - model: org/a\n    parameters: {weight: 0.5}\n"
                       "  - model: org/b\n    parameters: {weight: 0.5}\n"
                       "merge_method: linear\ndtype: float32\n");
  r = smelt(hub.endpoint(), "merge " + quote(dir / "merge.yml") + " " + quote(dir / "out1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::is_regular_file(repo_dir("b") / "blobs" / weights_sha("b")));
  const size_t requests = hub.log().size();
  r = smelt(hub.endpoint(), "merge " + quote(dir / "merge.yml") + " " + quote(dir / "out2"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(hub.log().size(), requests);
  EXPECT_EQ(read_bytes(dir / "out1/model.safetensors"), read_bytes(dir / "out2/model.safetensors"));
}

TEST_F(Hub, PlanReadsOnlyConfigAndSafetensorsHeaders) {
  MockHub hub(dir.path(), config());
  testing::write_bytes(dir / "merge.yml",
                       "models:\n  - model: org/a\n    parameters: {weight: 0.5}\n"
                       "  - model: org/b\n    parameters: {weight: 0.5}\n"
                       "merge_method: linear\ndtype: float32\n");
  auto r = smelt(hub.endpoint(), "plan " + quote(dir / "merge.yml"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Weights: two Range requests each (the length, then the header), never the whole file.
  const uint64_t weights_size = fs::file_size(dir / "src/a/model.safetensors") +
                                fs::file_size(dir / "src/b/model.safetensors");
  uint64_t weight_bytes = 0;
  int ranges = 0;
  for (const auto& e : hub.log()) {
    const std::string path = e["path"];
    if (path.find("model.safetensors") == std::string::npos || e["method"] != "GET") continue;
    EXPECT_NE(e["range"], "") << path;
    ranges += 1;
    weight_bytes += e["bytes"].get<uint64_t>();
  }
  EXPECT_EQ(ranges, 4);
  EXPECT_LT(weight_bytes * 5, weights_size) << weight_bytes << " of " << weights_size;
  const fs::path snap = repo_dir("a") / "snapshots" / kCommitA;
  EXPECT_TRUE(fs::is_regular_file(snap / "config.json"));
  EXPECT_FALSE(fs::exists(snap / "model.safetensors"));
  EXPECT_FALSE(fs::exists(repo_dir("a") / "refs" / "main"));
  // Planning again (also by commit) reads the headers again, still without the weights.
  testing::write_bytes(dir / "by_commit.yml",
                       "models:\n  - model: org/a@" + kCommitA +
                           "\n    parameters: {weight: 0.5}\n"
                           "  - model: org/b\n    parameters: {weight: 0.5}\n"
                           "merge_method: linear\ndtype: float32\n");
  r = smelt(hub.endpoint(), "plan " + quote(dir / "by_commit.yml"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(snap / "model.safetensors"));
  // A merge afterwards downloads the rest.
  r = smelt(hub.endpoint(), "merge " + quote(dir / "merge.yml") + " " + quote(dir / "out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(read_bytes(snap / "model.safetensors"), read_bytes(dir / "src/a/model.safetensors"));
}

TEST_F(Hub, AShardedModelIsPlannedFromHeadersThenMergedByCommit) {
  auto made =
      testing::run_smelt("dev make-model " + quote(dir / "src" / "s") +
                         " --hidden 32 --layers 2 --heads 2 --vocab 300 --seed 3 --shards 2");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  ASSERT_TRUE(fs::exists(dir / "src/s/model.safetensors.index.json"));
  const std::string commit = "dddddddddddddddddddddddddddddddddddddddd";
  nlohmann::json c = config();
  c["repos"]["org/s"] = repo("s", commit);
  MockHub hub(dir.path(), c);
  testing::write_bytes(dir / "m.yml", "models:\n  - model: org/s@" + commit +
                                          "\n    parameters: {weight: 0.5}\n"
                                          "  - model: org/a\n    parameters: {weight: 0.5}\n"
                                          "merge_method: linear\ndtype: float32\n");
  auto r = smelt(hub.endpoint(), "plan " + quote(dir / "m.yml"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const fs::path snap = repo_dir("s") / "snapshots" / commit;
  EXPECT_TRUE(fs::exists(snap / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(snap / "model-00001-of-00002.safetensors"));
  // The snapshot has the index but not its shards: the merge downloads them.
  r = smelt(hub.endpoint(), "merge " + quote(dir / "m.yml") + " " + quote(dir / "out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* shard :
       {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
    EXPECT_EQ(read_bytes(snap / shard), read_bytes(dir / "src/s" / shard)) << shard;
  }
}

TEST_F(Hub, ACutTransferResumesWithRangeAndIsByteExact) {
  nlohmann::json c = config();
  c["cut_after"]["org/a/model.safetensors"] = 1000;
  MockHub hub(dir.path(), c);
  auto r = smelt(hub.endpoint(), "download org/a");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  bool resumed = false;
  for (const auto& e : hub.log()) {
    if (e["path"] == "/cdn/org/a/model.safetensors" && e["range"] == "bytes=1000-") resumed = true;
  }
  EXPECT_TRUE(resumed);
  EXPECT_EQ(read_bytes(repo_dir("a") / "blobs" / weights_sha("a")),
            read_bytes(dir / "src/a/model.safetensors"));
}

TEST_F(Hub, APartialFileFromAnEarlierRunIsResumed) {
  MockHub hub(dir.path(), config());
  const std::string full = read_bytes(dir / "src/a/model.safetensors");
  fs::create_directories(repo_dir("a") / "blobs");
  testing::write_bytes(repo_dir("a") / "blobs" / (weights_sha("a") + ".incomplete"),
                       full.substr(0, 500));
  auto r = smelt(hub.endpoint(), "download org/a");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  size_t body_bytes = 0;
  bool resumed = false;
  for (const auto& e : hub.log()) {
    if (e["path"] != "/cdn/org/a/model.safetensors") continue;
    resumed = resumed || e["range"] == "bytes=500-";
    body_bytes += e["bytes"].get<size_t>();
  }
  EXPECT_TRUE(resumed);
  EXPECT_EQ(body_bytes, full.size() - 500);
  EXPECT_EQ(read_bytes(repo_dir("a") / "blobs" / weights_sha("a")), full);
  EXPECT_FALSE(fs::exists(repo_dir("a") / "blobs" / (weights_sha("a") + ".incomplete")));
}

TEST_F(Hub, AServerIgnoringRangeRestartsThePartialFile) {
  nlohmann::json c = config();
  c["ignore_range"] = {"org/a/model.safetensors"};
  MockHub hub(dir.path(), c);
  const std::string full = read_bytes(dir / "src/a/model.safetensors");
  fs::create_directories(repo_dir("a") / "blobs");
  testing::write_bytes(repo_dir("a") / "blobs" / (weights_sha("a") + ".incomplete"),
                       full.substr(0, 500));
  auto r = smelt(hub.endpoint(), "download org/a");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(read_bytes(repo_dir("a") / "blobs" / weights_sha("a")), full);
}

TEST_F(Hub, AWriteErrorKeepsThePartialFileForTheNextRun) {
  MockHub hub(dir.path(), config());
  // A file size limit (ulimit -f, SIGXFSZ ignored) makes writes past 40 KiB fail as a full disk
  // does.
  auto r = run_command(fmt::format(
      "env -u HF_TOKEN -u HUGGING_FACE_HUB_TOKEN -u HF_HUB_OFFLINE -u TRANSFORMERS_OFFLINE "
      "-u HF_TOKEN_PATH HF_ENDPOINT={} HF_HUB_CACHE={} HF_HOME={} sh -c "
      "\"trap '' XFSZ; ulimit -f 40; exec {} download org/a\"",
      hub.endpoint(), quote(cache()), quote(dir / "home"), SMELT_BIN));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "cannot write");
  EXPECT_HAS(r.output, "run again to resume");
  const fs::path part = repo_dir("a") / "blobs" / (weights_sha("a") + ".incomplete");
  ASSERT_TRUE(fs::exists(part));
  const uint64_t kept = fs::file_size(part);
  EXPECT_GT(kept, 0u);
  r = smelt(hub.endpoint(), "download org/a");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  bool resumed = false;
  for (const auto& e : hub.log()) resumed = resumed || e["range"] == fmt::format("bytes={}-", kept);
  EXPECT_TRUE(resumed);
  EXPECT_EQ(read_bytes(repo_dir("a") / "blobs" / weights_sha("a")),
            read_bytes(dir / "src/a/model.safetensors"));
}

TEST_F(Hub, CorruptBytesAreDetectedByChecksumAndRemoved) {
  nlohmann::json c = config();
  c["corrupt"] = {"org/a/model.safetensors", "org/b/config.json"};
  MockHub hub(dir.path(), c);
  auto r = smelt(hub.endpoint(), "download org/a");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "checksum mismatch");
  EXPECT_HAS(r.output, "sha256");
  EXPECT_HAS(r.output, "model.safetensors");
  EXPECT_FALSE(fs::exists(repo_dir("a") / "blobs" / weights_sha("a")));
  EXPECT_FALSE(fs::exists(repo_dir("a") / "blobs" / (weights_sha("a") + ".incomplete")));
  EXPECT_FALSE(fs::exists(repo_dir("a") / "snapshots" / kCommitA / "model.safetensors"));
  EXPECT_FALSE(fs::exists(repo_dir("a") / "refs" / "main"));
  // A regular (non-LFS) file is checked by its git blob sha1.
  r = smelt(hub.endpoint(), "download org/b");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "git blob sha1");
  EXPECT_HAS(r.output, "config.json");
}

TEST_F(Hub, GatedRepoNeedsAToken) {
  MockHub hub(dir.path(), config());
  auto r = smelt(hub.endpoint(), "download org/gated");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "gated");
  EXPECT_HAS(r.output, "HF_TOKEN");
  // The token file under HF_HOME is read like HF_TOKEN.
  testing::write_bytes(dir / "home" / "token", "hf_right\n");
  r = smelt(hub.endpoint(), "download org/gated");
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST_F(Hub, OfflineModeFailsFastWithoutAnyRequest) {
  MockHub hub(dir.path(), config());
  auto r = smelt(hub.endpoint(), "download org/a", "HF_HUB_OFFLINE=1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "org/a");
  EXPECT_HAS(r.output, "HF_HUB_OFFLINE");
  testing::write_bytes(dir / "m.yml",
                       "models:\n  - model: org/a\n  - model: org/b\nmerge_method: linear\n"
                       "parameters: {weight: 0.5}\n");
  r = smelt(hub.endpoint(), "merge " + quote(dir / "m.yml") + " " + quote(dir / "out"),
            "HF_HUB_OFFLINE=1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "HF_HUB_OFFLINE");
  EXPECT_TRUE(hub.log().empty());
  // Once cached, offline works.
  ASSERT_EQ(smelt(hub.endpoint(), "download org/a").exit_code, 0);
  r = smelt(hub.endpoint(), "download org/a", "HF_HUB_OFFLINE=1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_HAS(r.output, (repo_dir("a") / "snapshots" / kCommitA).string());
}

TEST_F(Hub, MissingRepoAndRevisionAreNamed) {
  MockHub hub(dir.path(), config());
  auto r = smelt(hub.endpoint(), "download org/missing");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "'org/missing' not found");
  EXPECT_HAS(r.output, hub.endpoint());
  r = smelt(hub.endpoint(), "download org/a@v9");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "revision 'v9'");
  // Through a verb: the cache places looked at and the Hub's answer.
  r = smelt(hub.endpoint(), "inspect org/missing");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "HF cache ref");
  EXPECT_HAS(r.output, "'org/missing' not found on");
}

TEST_F(Hub, NetworkDownFailsFastNamingTheEndpoint) {
  // A port nothing listens on: connection refused.
  const auto start = std::chrono::steady_clock::now();
  auto r = smelt("http://127.0.0.1:9", "download org/a");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "cannot reach the Hugging Face Hub at http://127.0.0.1:9");
  EXPECT_HAS(r.output, "HF_HUB_OFFLINE");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

}  // namespace
}  // namespace smelt
