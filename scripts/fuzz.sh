#!/usr/bin/env bash
# Runs every cargo-fuzz target for a fixed time on its kept corpus
# (crates/*/fuzz/corpus/<target>, in the repository), minimizes the corpus
# afterwards, and prints one line per target: executions, coverage, crashes.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET_FILTER]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a C++ compiler; the
# nightly-only flags are enabled on the stable toolchain with
# RUSTC_BOOTSTRAP=1. A crash leaves its input in crates/*/fuzz/artifacts/
# and the script exits 1. Results go in docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
filter="${2:-}"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 2; }
export RUSTC_BOOTSTRAP=1
failed=0
printf '%-10s %-10s %12s %10s %s\n' crate target executions coverage result
for dir in crates/dvrip crates/cvip crates/ivr-rpc crates/media; do
  for t in $(sed -n 's/^name = "\(.*\)"$/\1/p' "$dir/fuzz/Cargo.toml" | grep -v -- '-fuzz$'); do
    [[ -n "$filter" && "$t" != *"$filter"* && "$dir" != *"$filter"* ]] && continue
    corpus="fuzz/corpus/$t"
    mkdir -p "$dir/$corpus"
    log=$(mktemp)
    result=ok
    if ! (cd "$dir" && cargo fuzz run "$t" "$corpus" -- -max_total_time="$secs" -max_len=4096 -print_final_stats=1) >"$log" 2>&1; then
      result="CRASH (see $dir/fuzz/artifacts/$t and $log)"
      failed=1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    # Keep the corpus small: only inputs that add coverage.
    (cd "$dir" && cargo fuzz cmin "$t" "$corpus" >/dev/null 2>&1) || true
    printf '%-10s %-10s %12s %10s %s\n' "${dir#crates/}" "$t" "${runs:-?}" "${cov:-?}" "$result"
    [[ "$result" == ok ]] && rm -f "$log"
  done
done
exit "$failed"
