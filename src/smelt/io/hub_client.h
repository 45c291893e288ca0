// Downloads models from the Hugging Face Hub (HTTP API, libcurl) into the standard HF cache
// layout, so smelt, huggingface_hub and transformers share what each downloaded (docs/hub.md).
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "smelt/io/model_ref.h"

namespace smelt::io {

// Where and how the Hub is reached, read from the environment as huggingface_hub reads it:
// HF_ENDPOINT, HF_TOKEN / HUGGING_FACE_HUB_TOKEN / the token file, HF_HUB_OFFLINE /
// TRANSFORMERS_OFFLINE, HF_HUB_ETAG_TIMEOUT, and the cache folder (hf_hub_cache_dir()).
struct HubSettings {
  std::string endpoint;  // no trailing '/'
  std::string token;     // empty: anonymous
  bool offline = false;
  std::filesystem::path cache;
  long timeout_s = 10;  // connect timeout, and the HEAD/API request timeout
  int threads = 4;      // files downloaded in parallel

  static HubSettings from_env();
};

// Whether an HF_HUB_OFFLINE-style value means "on" (1, ON, YES, TRUE; any case).
bool hub_env_true(const char* value);

// The cache folder name of a model repo: "org/name" -> "models--org--name".
std::string hub_repo_folder(const std::string& repo_id);

// `text` percent-encoded as Python's urllib.parse.quote: letters, digits and "_.-~" kept, and
// every character of `keep` (e.g. "/" for file paths); everything else as %XX.
std::string hub_quote(const std::string& text, const std::string& keep);

// The files of a repo that smelt downloads (docs/hub.md): of `names` (paths in the repo), the
// safetensors weights (index, model.safetensors or model-*-of-*.safetensors shards) when present,
// else the PyTorch ones (pytorch_model.bin.index.json, pytorch_model.bin, shards), else a PEFT
// adapter's adapter_model.safetensors or adapter_model.bin; plus config, generation config,
// adapter_config.json and tokenizer files at the root. When an index is listed, the shards are
// taken from it later (hub_download_model), not from `names`.
std::vector<std::string> hub_select_files(const std::vector<std::string>& names);

// Result of hub_download_model.
struct HubSnapshot {
  std::string commit;              // 40-hex commit the revision resolved to
  std::filesystem::path snapshot;  // cache/models--org--name/snapshots/<commit>
  std::vector<std::string> files;  // files the snapshot holds for smelt
  uint64_t downloaded_bytes = 0;   // bytes received from the network in this call
};

// Downloads what smelt needs of model `repo_id` at `revision` ("" = main) into the cache: model
// info for the commit and file list, then each missing file (HEAD for its etag, GET resumed from
// blobs/<etag>.incomplete with Range, sha256/git-sha1 checked against the etag), snapshot
// symlinks and refs/<revision>. Files already in the snapshot are not requested. Prints progress
// on stderr unless `quiet`. Throws smelt::Error naming the repo, file or endpoint and what to do:
// offline mode, repo/revision not found, gated/private (HF_TOKEN), network down, checksum
// mismatch (the file is removed), disk full (the partial file is kept for the next run).
HubSnapshot hub_download_model(const HubSettings& settings, const std::string& repo_id,
                               const std::string& revision, bool quiet = false);

// Whether hub_open_headers_only does anything; `smelt plan` turns it on (docs/hub.md).
void set_hub_headers_only(bool on);

// For `smelt plan`: a Hub id missing from the cache opened without downloading its weights. The
// small files (config, tokenizer, index) are downloaded into the snapshot; of each safetensors
// weights file only the header is read, by two HTTP Range requests (8 bytes, then the header).
// Reading tensor data from the result throws. Returns nullptr (the caller resolves as usual) when
// headers-only mode is off, in offline mode, for local paths, cached snapshots and PyTorch-only
// repos. For MODEL+LORA, the base model's headers with the adapter (resolved as resolve_model
// does, downloaded whole) applied: its checks run against the headers. Throws smelt::Error as
// hub_download_model does.
std::shared_ptr<Model> hub_open_headers_only(const ModelRef& ref);

}  // namespace smelt::io
