#!/usr/bin/env bash
# Long fuzz run of the libFuzzer targets (cargo-fuzz): each target for SECONDS, one after the
# other, then a summary of executions and crashes per target.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     # default 300 s each; targets rule_file rule_input token_response
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz (installed
# here if missing). New corpus entries go to fuzz/corpus/<target>, crashes to
# fuzz/artifacts/<target>, logs to fuzz/logs/<target>.log (all git-ignored).
# Without nightly, the same properties run under proptest with a large case count:
#   GRANTD_FUZZ_CASES=200000 cargo test --release --test fuzz_props
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-300}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(rule_file rule_input token_response)

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz/run.sh: needs a nightly toolchain (rustup toolchain install nightly);" >&2
  echo "or run: GRANTD_FUZZ_CASES=200000 cargo test --release --test fuzz_props" >&2
  exit 2
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

# Seeds: the shipped rule files for the loader, hand-written responses for the others.
mkdir -p corpus/rule_file corpus/rule_input corpus/token_response artifacts logs
cp ../rules/*.yaml corpus/rule_file/
cp seeds/rule_input/* corpus/rule_input/
cp seeds/token_response/* corpus/token_response/

cargo +nightly fuzz build -O

declare -A max_len=([rule_file]=16384 [rule_input]=8192 [token_response]=4096)
for t in "${targets[@]}"; do
  echo "== $t: ${secs}s"
  status=0
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len="${max_len[$t]:-4096}" -timeout=10 -rss_limit_mb=4096 \
    -dict="dict/$t.dict" -print_final_stats=1 >"logs/$t.log" 2>&1 || status=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -n 1)
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "logs/$t.log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -n 1)
  if [ "$status" -eq 0 ]; then
    echo "$t: ${runs:-?} executions in ${took:-?} s, ${cov:-cov ?}, no crash"
  else
    echo "$t: CRASH (exit $status) after ${runs:-?} executions; see fuzz/logs/$t.log and fuzz/artifacts/$t/"
    grep -m 5 -E 'panicked|ERROR: libFuzzer|SUMMARY' "logs/$t.log" || true
  fi
done
