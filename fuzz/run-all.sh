#!/usr/bin/env bash
# Usage: run-all.sh [SECONDS [TARGET...]]
# Builds every fuzz target once, then runs each (or each TARGET named) for
# SECONDS (default 30) and prints, per target, the executions and the CPU
# seconds they took.
# Exits non-zero if any target crashed (a failed invariant is a crash), hung
# or ran out of memory; the input is saved as artifacts/TARGET/crash-*.
# Replay one with: target/<host>/release/TARGET artifacts/TARGET/crash-...
#
# The seeds in corpus/TARGET are read, never written: what a run finds goes
# to target/corpus/TARGET, which later runs on the same machine start from.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"
shift || true

if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi
# No sanitizer (stable Rust), optimised, with debug assertions and overflow
# checks, which fuzzing is for.
cargo fuzz build -s none -O -a
host="$(rustc -vV | sed -n 's/^host: //p')"
bin="target/$host/release"

failed=()
printf '%-16s %-7s %12s %10s %8s\n' target result executions exec/s cpu_s
if [ "$#" -eq 0 ]; then
    set -- $(cargo fuzz list)
fi
for t in "$@"; do
    mkdir -p "target/corpus/$t" "artifacts/$t" target/logs
    log="target/logs/$t.log"
    rc=0
    start="$(awk '{print $14 + $15 + $16 + $17}' /proc/$$/stat)"
    "$bin/$t" "target/corpus/$t" "corpus/$t" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || rc=$?
    # Children's CPU time (user + system, waited for) in clock ticks.
    end="$(awk '{print $14 + $15 + $16 + $17}' /proc/$$/stat)"
    cpu="$(awk -v a="$start" -v b="$end" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (b - a) / hz }')"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    result=ok
    if [ "$rc" -ne 0 ]; then
        result=FAILED
        failed+=("$t")
    fi
    printf '%-16s %-7s %12s %10s %8s\n' "$t" "$result" "${execs:-?}" "${rate:-?}" "$cpu"
done

for t in "${failed[@]}"; do
    echo
    echo "=== $t (full log: fuzz/target/logs/$t.log)"
    grep -E -A12 "panicked at|ERROR: libFuzzer|SUMMARY" "target/logs/$t.log" | head -40
    ls "artifacts/$t"
done
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}"
    exit 1
fi
echo "fuzz: every target ran ${secs}s without a failure"
