// `smelt download REPO[@REV]`: fetch a model from the Hugging Face Hub into the HF cache and
// print its snapshot folder (docs/hub.md).
#include <fmt/format.h>

#include "cli/common.h"
#include "smelt/error.h"
#include "smelt/io/hub_client.h"
#include "smelt/io/model_ref.h"

namespace smelt::cli {
namespace {

struct DownloadOptions {
  std::string ref;
  bool quiet = false;
};

void run_download(const DownloadOptions& o) {
  const io::ModelRef ref = io::ModelRef::parse(o.ref);
  if (!ref.lora_path.empty()) fail("download '{}': give one repo id, without +LORA", o.ref);
  if (!io::looks_like_hub_id(ref.path)) {
    fail("download '{}': '{}' is not a Hub repo id; write it as org/name[@revision]", o.ref,
         ref.path);
  }
  const io::HubSettings settings = io::HubSettings::from_env();
  if (settings.offline) {
    // Offline, the cache is the answer (as huggingface_hub's snapshot_download falls back to it);
    // resolve_model says HF_HUB_OFFLINE forbids the download when it is not there.
    fmt::print("{}\n", io::resolve_model(ref).root.string());
    return;
  }
  const io::HubSnapshot snap = io::hub_download_model(settings, ref.path, ref.revision, o.quiet);
  if (!o.quiet) {
    fmt::print(stderr, "download {}: commit {}, {} files, {} received\n", ref.path, snap.commit,
               snap.files.size(), human_bytes(snap.downloaded_bytes));
  }
  fmt::print("{}\n", snap.snapshot.string());
}

}  // namespace

void add_download(CLI::App& app) {
  auto opts = std::make_shared<DownloadOptions>();
  auto* cmd = app.add_subcommand(
      "download",
      "Fetch a model from the Hugging Face Hub into the HF cache (weights, config, tokenizer) "
      "and print its snapshot folder. Other verbs download missing Hub ids themselves.");
  cmd->add_option("repo", opts->ref, "Hub repo id, org/name[@revision]")->required();
  cmd->add_flag("-q,--quiet", opts->quiet, "No progress on stderr");
  cmd->callback([opts] { run_download(*opts); });
}

}  // namespace smelt::cli
