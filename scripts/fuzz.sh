#!/usr/bin/env bash
# Runs one cargo-fuzz (libFuzzer) target of fuzz/ for a fixed time, on one core.
#
#   scripts/fuzz.sh TARGET [SECONDS]     e.g. scripts/fuzz.sh git_parse 600
#   scripts/fuzz.sh --list               the targets
#
# Targets and what each asserts: docs/fuzzing.md. Needs `cargo install --locked cargo-fuzz`.
# Only the stable toolchain exists here: cargo fuzz needs nightly-only rustc flags
# (-Zsanitizer=address), which RUSTC_BOOTSTRAP=1 unlocks on stable.
#
# The working corpus is fuzz/corpus/TARGET (seeded from the small committed
# fuzz/corpus-seed/TARGET, never committed); crashes land in fuzz/artifacts/TARGET; the
# whole libFuzzer output goes to fuzz/logs/TARGET-<UTC time>.log and a summary line
# (executions, execs/s, coverage, corpus size, crashes) is printed at the end.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "$0")/../fuzz" && pwd)"
cd "$fuzz_dir"
export RUSTC_BOOTSTRAP=1

if [ "${1:-}" = "--list" ]; then
    cargo fuzz list
    exit 0
fi
target=${1:?usage: scripts/fuzz.sh TARGET [SECONDS] (scripts/fuzz.sh --list for targets)}
seconds=${2:-600}

mkdir -p "corpus/$target" "artifacts/$target" logs
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log="$fuzz_dir/logs/$target-$stamp.log"

# Build first (cargo fuzz's defaults: release, debug assertions, AddressSanitizer), so the
# timed run measures fuzzing, not compiling.
cargo fuzz build -O "$target"
host=$(rustc -vV | sed -n 's/^host: //p')
bin="$fuzz_dir/target/$host/release/$target"

# -jobs=1 -workers=1: one fuzzing process on one core (machines are shared). In that mode
# libFuzzer writes its output to fuzz-0.log in the current directory, so each run gets a
# private directory: two runs side by side would otherwise overwrite each other's log.
# The committed seeds are read as a second corpus directory; new inputs go to the first.
run_dir="$fuzz_dir/logs/$target-$stamp.d"
mkdir -p "$run_dir"
set +e
(cd "$run_dir" && "$bin" -artifact_prefix="$fuzz_dir/artifacts/$target/" \
    -max_total_time="$seconds" -jobs=1 -workers=1 -print_final_stats=1 \
    -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    "$fuzz_dir/corpus/$target" "$fuzz_dir/corpus-seed/$target") >"$log" 2>&1
status=$?
set -e
cat "$run_dir"/fuzz-*.log >>"$log" 2>/dev/null || true
rm -rf "$run_dir"

# grep -a: the log can hold bytes of fuzz inputs.
execs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
rate=$(grep -ao 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
# Coverage at the end of the run (libFuzzer's DONE line): cov = covered edges, ft = features.
cov=$(grep -a 'DONE ' "$log" | tail -1 | grep -o 'cov: [0-9]* ft: [0-9]*' || echo "cov: ?")
corpus=$(find "corpus/$target" -type f | wc -l)
crashes=$(find "artifacts/$target" -type f | wc -l)
echo "$target: ${seconds}s execs=$execs execs/s=$rate $cov corpus=$corpus crashes=$crashes exit=$status log=fuzz/logs/$(basename "$log")"
exit "$status"
