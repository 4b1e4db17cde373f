#!/usr/bin/env bash
# CI smoke run of every fuzz target: build them all, then run each for ~15 s (≤ 60 s in all).
# Uses a nightly toolchain when one is installed, else RUSTC_BOOTSTRAP on stable (-s none: no
# sanitizer, which needs nightly). Needs `cargo install cargo-fuzz`.
# A crash exits non-zero and leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

targets=(normalize_route credential config meter)
seconds=${FUZZ_SECONDS:-15}
# A dev build compiles in a fraction of a release build's time, which matters more than
# execution speed for a 15 s smoke; FUZZ_RELEASE=1 builds optimised, as for real fuzzing.
profile=(--dev)
if [ "${FUZZ_RELEASE:-0}" = 1 ]; then profile=(); fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
    sanitizer=()
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    sanitizer=(-s none)
fi

"${fuzz[@]}" build "${profile[@]}" "${sanitizer[@]}"
for target in "${targets[@]}"; do
    echo "== $target (${seconds}s)"
    mkdir -p "corpus/$target"
    log="$(mktemp)"
    status=0
    "${fuzz[@]}" run "${profile[@]}" "${sanitizer[@]}" "$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|SUMMARY)|panicked|ERROR' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log"
        echo "fuzz smoke: $target failed"
        exit "$status"
    fi
    rm -f "$log"
done
echo "fuzz smoke: ok"
