#!/usr/bin/env bash
# Installs everything smelt needs to build and test on Debian 12 (idempotent, quiet when done).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libfmt-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  libpcre2-dev libutf8proc-dev libsentencepiece-dev python3-sentencepiece
  python3 python3-numpy python3-yaml time
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
# build llama.cpp from source; the tests only use the prebuilt binaries. It needs node >= 20
# (Debian 12's own nodejs is 18); without it the llama.cpp test is skipped. The same folder pins
# Hugging Face's tokenizers (Node binding, prebuilt .node binaries), the tokenizer tests' reference.
if [ ! -d "$here/tests/node/node_modules/node-llama-cpp" ] ||
  [ ! -d "$here/tests/node/node_modules/tokenizers" ]; then
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "setup: installing nodejs npm"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  if node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
    echo "setup: installing tests/node (node-llama-cpp, tokenizers)"
    (cd "$here/tests/node" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
  else
    echo "setup: node $(node --version) is older than 20; skipping tests/node (node-llama-cpp)"
  fi
fi
