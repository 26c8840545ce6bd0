#!/usr/bin/env bash
# Runs every libFuzzer target (*_fuzz executables) in BUILD_DIR for SECONDS
# each, seeded from fuzz/corpus/<target>/. The corpus is copied to a temp dir
# first so new inputs libFuzzer finds never dirty the repository.
#
# usage: scripts/run_fuzzers.sh BUILD_DIR SECONDS
# Exit status is non-zero if any target crashes (the reproducer is kept and
# its path printed) or if no target was found.
set -u

if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUILD_DIR SECONDS" >&2
  exit 2
fi
build_dir=$1
seconds=$2
if ! [[ $seconds =~ ^[0-9]+$ ]]; then
  echo "error: SECONDS must be a whole number, got '$seconds'" >&2
  exit 2
fi
if [[ ! -d $build_dir ]]; then
  echo "error: build dir '$build_dir' does not exist (build with -DSTRATA_FUZZ=ON first)" >&2
  exit 2
fi

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/strata-fuzz.XXXXXX")
keep_work=0
cleanup() { [[ $keep_work -eq 1 ]] || rm -rf "$work"; }
trap cleanup EXIT

mapfile -t targets < <(find "$build_dir" -maxdepth 2 -type f -name '*_fuzz' -perm -u+x | sort)
if [[ ${#targets[@]} -eq 0 ]]; then
  echo "error: no *_fuzz executables in '$build_dir'" >&2
  exit 1
fi

failed=0
for target in "${targets[@]}"; do
  name=$(basename "$target")
  corpus="$work/$name/corpus"
  artifacts="$work/$name/artifacts/"
  mkdir -p "$corpus" "$artifacts"
  seeds="$repo_root/fuzz/corpus/$name"
  n_seeds=0
  if [[ -d $seeds ]]; then
    cp -r "$seeds/." "$corpus/"
    n_seeds=$(find "$corpus" -type f | wc -l)
  fi
  log="$work/$name/log.txt"
  start=$(date +%s)
  "$target" "$corpus" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  n_corpus=$(find "$corpus" -type f | wc -l)
  crashes=$(find "$artifacts" -type f | wc -l)
  if [[ $rc -eq 0 && $crashes -eq 0 ]]; then
    echo "PASS $name: ${runs:-?} runs in ${elapsed}s, cov ${cov:-?}, corpus $n_seeds -> $n_corpus"
  else
    failed=1
    keep_work=1
    echo "FAIL $name: exit $rc after ${elapsed}s; reproducers in $artifacts; log $log"
    grep -m1 -E 'ERROR: |runtime error:|deadly signal' "$log" | sed 's/^/     /'
  fi
done

exit $failed
