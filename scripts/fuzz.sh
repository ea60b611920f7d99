#!/usr/bin/env bash
# `make fuzz`: every cargo-fuzz target of fuzz/ for a bounded time (FUZZ_SECONDS each, default
# 60), on a nightly toolchain; skipped with a message where there is none. Installs cargo-fuzz
# when missing. Arguments name targets to run (default: all of them).
#
# Each target starts from its committed seeds (fuzz/corpus/<target>, replayed on stable by
# shared/tests/fuzz_corpus.rs) and grows a local corpus in fuzz/corpus-local/<target> (not
# committed). A crash leaves its input in fuzz/artifacts/<target>/; the summary at the end
# prints the executions per target and the crashes; the exit status is non-zero after one.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

SECONDS_EACH="${FUZZ_SECONDS:-60}"
# libFuzzer options: the whole process under 1 GiB, one input under 20 s, inputs up to 64 KiB.
LIBFUZZER_ARGS=(-max_total_time="$SECONDS_EACH" -rss_limit_mb=1024 -timeout=20
    -max_len=65536 -print_final_stats=1)
# Release with debug assertions and overflow checks; no sanitizer (the code under test is
# safe Rust, and ASan would halve the executions).
BUILD_ARGS=(-O -a -s none)

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "make fuzz: skipped, no nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz || exit 1
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "== build (${targets[*]})"
cargo +nightly fuzz build "${BUILD_ARGS[@]}" || exit 1

mkdir -p logs
summary=()
failed=0
start=$(date +%s)
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${SECONDS_EACH}s"
    mkdir -p "corpus-local/$t"
    log="logs/$t.log"
    cargo +nightly fuzz run "${BUILD_ARGS[@]}" "$t" "corpus-local/$t" "corpus/$t" -- \
        "${LIBFUZZER_ARGS[@]}" >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    if [[ $rc -eq 0 ]]; then
        result="ok"
    else
        failed=1
        artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //')
        result="FAILED (exit $rc) ${artifact:-see fuzz/$log}"
        grep -m1 -A3 "panicked at" "$log" || tail -5 "$log"
    fi
    line=$(printf '%-14s %12s execs %8s/s  %s' "$t" "${execs:-?}" "${rate:-?}" "$result")
    echo "$line"
    summary+=("$line")
done

echo "== fuzz summary (${SECONDS_EACH}s per target, $(( $(date +%s) - start ))s in all; logs in fuzz/logs/)"
printf '%s\n' "${summary[@]}"
exit $failed
