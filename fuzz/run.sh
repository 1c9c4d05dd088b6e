#!/usr/bin/env bash
# Runs the fuzz targets one after the other, SECONDS each; `make fuzz` and `make fuzz-smoke`
# call it (see docs/fuzzing.md).
#
#   fuzz/run.sh [--smoke] SECONDS [TARGET...]
#
# Every target starts from its committed seeds (fuzz/corpus/<target>) plus a working corpus:
# $FUZZ_DIR/corpus/<target>, kept between runs, or an empty one with --smoke. A crash stops
# that target, leaves the input in fuzz/artifacts/<target>/ and makes the script fail.
# FUZZ_DIR ($CARGO_TARGET_DIR/fuzz) may be shared by several checkouts (a CI clone, a working
# tree): each checkout builds into its own subfolder and each run logs into its own folder,
# so concurrent runs neither swap binaries nor mix logs.
# FUZZ_SANITIZER (none) picks the sanitizer: `address` finds more in the dependencies' unsafe
# code, at about half the speed (the protocol crate has none: #![forbid(unsafe_code)]).
set -euo pipefail
cd "$(dirname "$0")"

smoke=0
if [ "${1:-}" = --smoke ]; then
    smoke=1
    shift
fi
seconds=${1:?usage: fuzz/run.sh [--smoke] SECONDS [TARGET...]}
shift
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
dir=${FUZZ_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/fuzz}
checkout=$(printf '%s' "$PWD" | cksum | cut -d' ' -f1)
build=(-s "${FUZZ_SANITIZER:-none}" --target-dir "$dir/build-$checkout")
mkdir -p "$dir/runs"
run=$(mktemp -d "$dir/runs/$(date +%Y%m%d-%H%M%S)-XXXX")

cargo +nightly fuzz build "${build[@]}"
failed=()
for t in "${targets[@]}"; do
    if [ "$smoke" = 1 ]; then
        work="$run/corpus/$t"
    else
        work="$dir/corpus/$t"
    fi
    mkdir -p "$work"
    log="$run/$t.log"
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    if [ -f "dict/$t.dict" ]; then args+=(-dict="dict/$t.dict"); fi
    if cargo +nightly fuzz run "${build[@]}" "$t" "$work" "corpus/$t" -- "${args[@]}" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        printf '%-20s ok  %12s runs %9s exec/s' "$t" "$runs" "$rate"
        if [ "$smoke" = 1 ]; then echo; else echo "  ($log)"; fi
    else
        printf '%-20s FAILED (%s)\n' "$t" "$log"
        grep -E -A12 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -40 || tail -40 "$log"
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}; inputs in fuzz/artifacts/, logs in $run" >&2
    exit 1
fi
# A passing smoke run leaves nothing behind; a long run keeps its logs.
if [ "$smoke" = 1 ]; then rm -rf "$run"; fi
