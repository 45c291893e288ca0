// The token surgery job: match, approximate, write.
#include "smelt/surgery/tokensurgeon.h"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "smelt/error.h"
#include "smelt/exec/output_path.h"
#include "smelt/exec/thread_pool.h"
#include "smelt/interrupt.h"
#include "smelt/io/file_util.h"
#include "smelt/io/model_ref.h"
#include "smelt/io/output_claim.h"
#include "smelt/io/safetensors.h"
#include "smelt/kernels/convert.h"
#include "smelt/plan/architecture.h"
#include "smelt/surgery/approximate.h"

namespace smelt::surgery {
namespace fs = std::filesystem;
namespace {

using ordered_json = nlohmann::ordered_json;

constexpr uint64_t kCopyChunk = 16ull << 20;

// Tokenizer files: taken from the donor, never from the model.
constexpr const char* kTokenizerFiles[] = {"tokenizer.json",
                                           "tokenizer_config.json",
                                           "special_tokens_map.json",
                                           "tokenizer.model",
                                           "added_tokens.json",
                                           "merges.txt",
                                           "vocab.json",
                                           "vocab.txt",
                                           "chat_template.jinja"};

enum class Scope : uint8_t { kNo, kYes, kEmbed, kLmHead };

Scope parse_scope(const std::string& option, const std::string& value) {
  if (value == "no") return Scope::kNo;
  if (value == "yes") return Scope::kYes;
  if (value == "embed") return Scope::kEmbed;
  if (value == "lm_head") return Scope::kLmHead;
  fail("{} '{}': expected yes, no, embed or lm_head", option, value);
}

bool scope_covers(Scope s, bool lm_head) {
  return s == Scope::kYes || (lm_head ? s == Scope::kLmHead : s == Scope::kEmbed);
}

void check_method(const std::string& m) {
  if (m == "omp" || m == "subword" || m == "mean" || m == "zero") return;
  for (const char* known : {"common_interpolation", "landmark_pca", "stb", "mp_rope", "john_hewitt",
                            "random_matching_distribution", "randn"}) {
    if (m == known) {
      fail(
          "--approximation-method {}: mergekit has this method but smelt does not support it "
          "yet; use omp, subword, mean or zero (docs/tokensurgeon.md)",
          m);
    }
  }
  fail("--approximation-method '{}': unknown; expected omp, subword, mean or zero", m);
}

bool is_tokenizer_file(const std::string& name) {
  for (const char* f : kTokenizerFiles) {
    if (name == f) return true;
  }
  return false;
}

// Non-weight files of the model folder that go to the output unchanged.
bool is_copied_file(const std::string& name) {
  if (!io::is_model_file_name(name) || is_tokenizer_file(name)) return false;
  if (name == "config.json" || name == "generation_config.json") return false;
  for (const char* s : {".safetensors", ".gguf", ".bin", ".pt", ".pth", ".index.json"}) {
    if (name.ends_with(s)) return false;
  }
  return name[0] != '.' || name == ".gitattributes";
}

std::string read_text_if_exists(const fs::path& p) {
  std::error_code ec;
  if (p.empty() || !fs::is_regular_file(p, ec)) return "";
  return io::read_whole_file(p);
}

ordered_json parse_json_file(const fs::path& p) {
  try {
    ordered_json j = ordered_json::parse(io::read_whole_file(p));
    if (!j.is_object()) fail("{}: expected a JSON object", p.string());
    return j;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", p.string(), e.what());
  }
}

// The input embedding and (untied) LM head of a model, found by name.
struct EmbeddingTensors {
  io::ModelTensor embed;
  io::ModelTensor head;  // info == nullptr when tied
};

EmbeddingTensors find_embeddings(const io::Model& model, const std::string& label) {
  std::vector<std::string> names;
  for (const auto& t : model.tensors()) names.push_back(t.info->name);
  const plan::ArchitectureInfo arch =
      plan::infer_architecture(names, read_text_if_exists(model.resolved().config_json));
  std::vector<io::ModelTensor> inputs, heads, others;
  for (const auto& t : model.tensors()) {
    if (!arch.is_embedding(t.info->name)) continue;
    const bool weight = t.info->shape.size() == 2 && t.info->name.ends_with(".weight");
    if (!weight) {
      others.push_back(t);
    } else if (arch.is_post_weight(t.info->name)) {
      heads.push_back(t);
    } else {
      inputs.push_back(t);
    }
  }
  if (inputs.size() != 1) {
    std::string list;
    for (const auto& t : inputs) list += (list.empty() ? "" : ", ") + t.info->name;
    fail("{}: expected one input embedding tensor (e.g. model.embed_tokens.weight), found {}{}",
         label, inputs.size(), list.empty() ? "" : " (" + list + ")");
  }
  if (heads.size() > 1) {
    fail("{}: expected at most one LM head tensor, found {} ({}, {}, ...)", label, heads.size(),
         heads[0].info->name, heads[1].info->name);
  }
  if (!others.empty()) {
    fail(
        "{}: tensor {} is indexed by the vocabulary but is not a 2-D weight; re-targeting it is "
        "not supported yet",
        label, others[0].info->name);
  }
  EmbeddingTensors e{inputs[0], heads.empty() ? io::ModelTensor{} : heads[0]};
  for (const io::ModelTensor* t : {&e.embed, &e.head}) {
    if (t->info && !dtype_is_convertible_float(t->info->dtype)) {
      fail("{}: tensor {} has dtype {}; token surgery needs F32, F16, BF16 or F8 weights", label,
           t->info->name, dtype_name(t->info->dtype));
    }
  }
  return e;
}

// A whole 2-D tensor widened to f32.
Matrix load_matrix(const io::ModelTensor& t) {
  Matrix m(t.info->shape[0], t.info->shape[1]);
  const uint64_t elem_bits = dtype_bits(t.info->dtype);
  const uint64_t row_bytes = m.cols * elem_bits / 8;
  const uint64_t rows_per_chunk =
      std::max<uint64_t>(1, kCopyChunk / std::max<uint64_t>(1, row_bytes));
  std::vector<char> buf;
  for (uint64_t r = 0; r < m.rows; r += rows_per_chunk) {
    check_interrupted();
    const uint64_t n = std::min<uint64_t>(rows_per_chunk, m.rows - r);
    buf.resize(n * row_bytes);
    t.file->read(*t.info, r * row_bytes, buf.data(), buf.size());
    kernels::to_f32(t.info->dtype, buf.data(), m.row(r), n * m.cols);
  }
  return m;
}

// One matrix being rebuilt (input embedding or LM head).
struct Job {
  bool lm_head = false;
  const io::ModelTensor* tensor = nullptr;  // the model's
  Matrix orig;
  std::optional<Matrix> donor;  // omp: the donor's matching matrix
  std::vector<Match> matches;
  Matrix result;
};

// Fills job.result (donor_vocab rows).
void build_rows(Job& job, const TokenSurgeonOptions& o,
                const std::vector<std::vector<int32_t>>& pieces, exec::ThreadPool& pool,
                double& max_residual) {
  const size_t h = job.orig.cols;
  job.result = Matrix(job.matches.size(), h);
  std::vector<size_t> fresh;
  std::vector<std::pair<size_t, int32_t>> shared;  // (donor id, model id), donor id order
  for (size_t id = 0; id < job.matches.size(); ++id) {
    const Match& m = job.matches[id];
    if (m.kind == MatchKind::kNew) {
      fresh.push_back(id);
    } else if (m.kind != MatchKind::kNone) {
      std::copy_n(job.orig.row(static_cast<size_t>(m.model_id)), h, job.result.row(id));
      if (m.kind == MatchKind::kExact) shared.emplace_back(id, m.model_id);
    }
  }
  if (fresh.empty() || o.method == "zero") return;
  if (o.method == "mean") {
    const std::vector<float> mean = mean_row(job.orig);
    for (size_t id : fresh) std::copy(mean.begin(), mean.end(), job.result.row(id));
    return;
  }
  if (o.method == "subword") {
    const SubwordMethod sm = parse_subword_method(o.subword_method);
    pool.parallel_for(fresh.size(), [&](size_t i, size_t) {
      subword_row(job.orig, pieces[fresh[i]], sm, job.lm_head, job.result.row(fresh[i]));
    });
    return;
  }
  // omp: the dictionary is the donor rows of the shared tokens.
  const Matrix& donor = *job.donor;
  std::vector<std::pair<size_t, int32_t>> usable;
  for (const auto& s : shared) {
    if (s.first < donor.rows) usable.push_back(s);
  }
  if (usable.empty()) {
    fail(
        "omp: the model and the donor share no tokens, so no new token can be expressed; use "
        "--approximation-method mean or zero");
  }
  Matrix dict(usable.size(), donor.cols);
  for (size_t i = 0; i < usable.size(); ++i) {
    std::copy_n(donor.row(usable[i].first), donor.cols, dict.row(i));
  }
  std::vector<double> residuals(fresh.size(), 0.0);
  pool.parallel_for(fresh.size(), [&](size_t i, size_t) {
    check_interrupted();
    const OmpCode code = omp(donor.row(fresh[i]), dict, o.k);
    residuals[i] = code.relative_residual;
    std::vector<double> acc(h, 0.0);
    for (size_t a = 0; a < code.atoms.size(); ++a) {
      const float* src = job.orig.row(static_cast<size_t>(usable[code.atoms[a]].second));
      for (size_t c = 0; c < h; ++c) acc[c] += code.coeffs[a] * src[c];
    }
    float* dst = job.result.row(fresh[i]);
    for (size_t c = 0; c < h; ++c) dst[c] = static_cast<float>(acc[c]);
  });
  for (double r : residuals) max_residual = std::max(max_residual, r);
}

// The donor's special-token ids for config.json: its config's values where it has config.json,
// else the ids of the tokens its tokenizer files declare for each role (null when none).
ordered_json donor_special_ids(const fs::path& donor_root, const tok::Tokenizer& donor_tok,
                               const std::map<std::string, std::vector<std::string>>& roles) {
  ordered_json ids = ordered_json::object();
  std::optional<ordered_json> cfg;
  if (fs::is_regular_file(donor_root / "config.json")) {
    cfg = parse_json_file(donor_root / "config.json");
  }
  for (const char* role : {"bos", "eos", "pad", "unk"}) {
    const std::string key = std::string(role) + "_token_id";
    if (cfg && cfg->contains(key)) {
      ids[key] = (*cfg)[key];
      continue;
    }
    const std::string token = token_for_role(roles, role);
    std::optional<int32_t> id;
    if (!token.empty()) id = donor_tok.token_to_id(token);
    if (id) {
      ids[key] = *id;
    } else if (std::string(role) != "unk") {
      ids[key] = nullptr;
    }
  }
  return ids;
}

}  // namespace

TokenSurgeonReport token_surgeon(const std::string& model_ref, const std::string& donor_ref,
                                 const fs::path& out, const TokenSurgeonOptions& o) {
  check_method(o.method);
  if (o.method == "omp" && o.k == 0) fail("--k must be at least 1");
  const Scope byte_scope = parse_scope("--byte-match", o.byte_match);
  const Scope prefix_scope = parse_scope("--prefix-match", o.prefix_match);
  if (o.method == "subword") parse_subword_method(o.subword_method);

  // The model: weights, embeddings, tokenizer.
  const auto model = io::Model::open(model_ref);
  const io::ResolvedModel& mr = model->resolved();
  if (mr.gguf) {
    fail(
        "model '{}': GGUF input is not supported by tokensurgeon yet; give a safetensors model "
        "folder (docs/tokensurgeon.md)",
        model_ref);
  }
  if (mr.single_file) {
    fail(
        "model '{}': tokensurgeon needs a model folder (weights, config.json and tokenizer), "
        "not a single weights file",
        model_ref);
  }
  if (mr.config_json.empty()) fail("model '{}': no config.json in {}", model_ref, mr.root.string());
  const EmbeddingTensors emb = find_embeddings(*model, "model '" + model_ref + "'");
  std::unique_ptr<tok::Tokenizer> model_tok;
  try {
    model_tok = tok::Tokenizer::load(mr.root);
  } catch (const Error& e) {
    fail("model '{}': cannot load its tokenizer: {}", model_ref, e.what());
  }

  // The donor: tokenizer, and weights when omp needs them.
  fs::path donor_root;
  std::optional<io::ResolvedModel> donor_weights;
  {
    std::error_code ec;
    const bool local = fs::is_directory(donor_ref, ec);
    try {
      donor_weights = io::resolve_model(io::ModelRef::parse(donor_ref));
    } catch (const Error& e) {
      if (!local || o.method == "omp") {
        if (o.method == "omp") {
          fail(
              "donor '{}': omp needs the donor's embeddings, but it has no weights ({}); give a "
              "donor model folder with weights, or use --approximation-method subword, mean or "
              "zero, which need only its tokenizer",
              donor_ref, e.what());
        }
        throw;
      }
    }
    donor_root = donor_weights ? donor_weights->root : fs::path(donor_ref);
    if (donor_weights && donor_weights->gguf) {
      fail(
          "donor '{}': GGUF donors are not supported by tokensurgeon yet; give a folder with "
          "tokenizer.json (and safetensors weights for omp)",
          donor_ref);
    }
  }
  std::unique_ptr<tok::Tokenizer> donor_tok;
  try {
    donor_tok = tok::Tokenizer::load(donor_root);
  } catch (const Error& e) {
    fail("donor '{}': cannot load its tokenizer: {}", donor_ref, e.what());
  }

  // Output checks before any heavy work.
  exec::check_no_overlap(out, mr, model_ref);
  {
    io::ResolvedModel donor_folder;
    donor_folder.root = donor_root;
    exec::check_no_overlap(out, donor_folder, donor_ref);
  }
  exec::check_existing_output(out, false, o.overwrite);

  // Matching.
  TokenSurgeonReport report;
  report.embed_name = emb.embed.info->name;
  report.head_name = emb.head.info ? emb.head.info->name : "";
  std::vector<Job> jobs(emb.head.info ? 2 : 1);
  jobs[0].tensor = &emb.embed;
  if (emb.head.info) jobs[1].tensor = &emb.head, jobs[1].lm_head = true;
  size_t model_rows = emb.embed.info->shape[0];
  if (emb.head.info) {
    if (emb.head.info->shape[1] != emb.embed.info->shape[1]) {
      fail("model '{}': {} has {} columns but {} has {}", model_ref, emb.head.info->name,
           emb.head.info->shape[1], emb.embed.info->name, emb.embed.info->shape[1]);
    }
    model_rows = std::min<size_t>(model_rows, emb.head.info->shape[0]);
  }
  const auto model_roles = read_special_roles(mr.root);
  const auto donor_roles = read_special_roles(donor_root);
  const NormalizedVocab model_vocab = normalize_vocab(*model_tok, model_roles, model_rows);
  const NormalizedVocab donor_vocab =
      normalize_vocab(*donor_tok, donor_roles, std::numeric_limits<size_t>::max());
  report.model_vocab = model_vocab.size();
  report.donor_vocab = donor_vocab.size();
  if (donor_vocab.size() == 0) fail("donor '{}': its tokenizer has no tokens", donor_ref);
  if (model_tok->vocab_size() > model_rows && o.on_note) {
    o.on_note(fmt::format("model tokenizer ids {}..{} have no embedding row and are not used",
                          model_rows, model_tok->vocab_size() - 1));
  }
  for (Job& job : jobs) {
    job.matches = match_tokens(model_vocab, donor_vocab,
                               {.byte_match = scope_covers(byte_scope, job.lm_head),
                                .prefix_match = scope_covers(prefix_scope, job.lm_head)});
  }

  // The donor's matrices for omp, checked against the tokens to approximate.
  std::shared_ptr<io::Model> donor_model;
  if (o.method == "omp") {
    donor_model = io::Model::open(*donor_weights);
    const EmbeddingTensors demb = find_embeddings(*donor_model, "donor '" + donor_ref + "'");
    for (Job& job : jobs) {
      const io::ModelTensor& src = job.lm_head && demb.head.info ? demb.head : demb.embed;
      bool needed = false;
      for (const Match& m : job.matches) needed = needed || m.kind == MatchKind::kNew;
      if (!needed) continue;
      if (src.info->shape[0] < donor_vocab.size()) {
        fail(
            "donor '{}': its tokenizer has {} ids but {} has only {} rows; the donor's weights do "
            "not match its tokenizer",
            donor_ref, donor_vocab.size(), src.info->name, src.info->shape[0]);
      }
      job.donor = load_matrix(src);
    }
  }

  // Subword pieces: each new token's text (decoded by the donor) encoded by the model.
  std::vector<std::vector<int32_t>> pieces(donor_vocab.size());
  if (o.method == "subword") {
    for (size_t id = 0; id < donor_vocab.size(); ++id) {
      bool fresh = false;
      for (const Job& job : jobs) fresh = fresh || job.matches[id].kind == MatchKind::kNew;
      if (!fresh) continue;
      const std::string text = donor_tok->decode({static_cast<int32_t>(id)});
      for (int32_t p : model_tok->encode(text, {.add_special_tokens = false}).ids) {
        if (p >= 0 && static_cast<size_t>(p) < model_rows) pieces[id].push_back(p);
      }
    }
  }

  const size_t threads =
      o.threads ? o.threads : std::max<size_t>(1, std::thread::hardware_concurrency());
  exec::ThreadPool pool(threads);
  for (Job& job : jobs) {
    job.orig = load_matrix(*job.tensor);
    build_rows(job, o, pieces, pool, report.omp_max_residual);
    job.orig = Matrix();
    job.donor.reset();
  }
  report.embed_counts = count_matches(jobs[0].matches);
  report.head_counts = count_matches(jobs.back().matches);

  // config.json and generation_config.json with the donor's vocabulary.
  std::vector<std::string> names;
  for (const auto& t : model->tensors()) names.push_back(t.info->name);
  const std::string config_text = io::read_whole_file(mr.config_json);
  const plan::ArchitectureInfo arch = plan::infer_architecture(names, config_text);
  ordered_json config = parse_json_file(mr.config_json);
  config[arch.vocab_size_key.empty() ? "vocab_size" : arch.vocab_size_key] = donor_vocab.size();
  const ordered_json special_ids = donor_special_ids(donor_root, *donor_tok, donor_roles);
  for (const auto& [k, v] : special_ids.items()) config[k] = v;
  std::optional<ordered_json> generation;
  if (fs::is_regular_file(mr.root / "generation_config.json")) {
    generation = parse_json_file(mr.root / "generation_config.json");
    for (const auto& [k, v] : special_ids.items()) {
      if (generation->contains(k)) (*generation)[k] = v;
    }
  }

  // Write: every tensor in the model's order, the two matrices replaced.
  const fs::path target = exec::output_location(out);
  InterruptibleScope interruptible;
  io::OutputClaim claim(target);
  if (o.on_note && !claim.removed().empty()) {
    o.on_note(fmt::format("removed {} temporaries left beside {} by an interrupted run",
                          claim.removed().size(), target.string()));
  }
  exec::check_no_overlap(out, mr, model_ref);  // again under the lock
  exec::check_existing_output(out, false, o.overwrite);
  exec::InputStamps stamps;
  stamps.add(mr);
  if (donor_weights) stamps.add(*donor_weights);
  std::vector<io::TensorSpec> specs;
  std::vector<const Job*> replaced(model->tensors().size(), nullptr);
  for (size_t i = 0; i < model->tensors().size(); ++i) {
    const io::ModelTensor& t = model->tensors()[i];
    io::TensorSpec spec{t.info->name, t.info->dtype, t.info->shape};
    for (const Job& job : jobs) {
      if (job.tensor->info == t.info) {
        spec.shape[0] = job.result.rows;
        replaced[i] = &job;
      }
    }
    specs.push_back(spec);
  }
  exec::TempFolder temp(io::temp_name_for(target));
  {
    io::ShardedWriter writer(temp.path(), specs, o.shard_size, {});
    std::vector<char> buf;
    std::vector<float> unused;
    for (size_t i = 0; i < model->tensors().size(); ++i) {
      const io::ModelTensor& t = model->tensors()[i];
      if (const Job* job = replaced[i]) {
        const Matrix& m = job->result;
        const uint64_t row_bytes = m.cols * dtype_bits(t.info->dtype) / 8;
        const uint64_t per = std::max<uint64_t>(1, kCopyChunk / std::max<uint64_t>(1, row_bytes));
        for (uint64_t r = 0; r < m.rows; r += per) {
          check_interrupted();
          const uint64_t n = std::min<uint64_t>(per, m.rows - r);
          buf.resize(n * row_bytes);
          kernels::from_f32(t.info->dtype, m.row(r), buf.data(), n * m.cols);
          writer.write(i, r * row_bytes, buf.data(), buf.size());
        }
        continue;
      }
      for (uint64_t off = 0; off < t.info->nbytes; off += kCopyChunk) {
        check_interrupted();
        const uint64_t n = std::min(kCopyChunk, t.info->nbytes - off);
        buf.resize(n);
        t.file->read(*t.info, off, buf.data(), n);
        writer.write(i, off, buf.data(), n);
      }
    }
    writer.finish();
  }
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(mr.root, ec)) {
    std::error_code sec;
    const std::string name = e.path().filename().string();
    if (e.is_regular_file(sec) && is_copied_file(name)) {
      io::write_file_atomic(temp.path() / name, io::read_whole_file(e.path()));
    }
  }
  for (const char* f : kTokenizerFiles) {
    std::error_code sec;
    if (fs::is_regular_file(donor_root / f, sec)) {
      io::write_file_atomic(temp.path() / f, io::read_whole_file(donor_root / f));
    }
  }
  io::write_file_atomic(temp.path() / "config.json", config.dump(2) + "\n");
  if (generation) {
    io::write_file_atomic(temp.path() / "generation_config.json", generation->dump(2) + "\n");
  }
  io::fsync_dir(temp.path());
  check_interrupted();
  stamps.check("token surgery");
  const std::string left = io::publish_folder(temp.path(), target, o.overwrite);
  temp.release();
  if (!left.empty() && o.on_note) o.on_note(left);
  return report;
}

}  // namespace smelt::surgery
