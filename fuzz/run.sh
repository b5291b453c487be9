#!/usr/bin/env bash
# Runs the fuzz targets: first each target's regression inputs (crashes
# found before, which must stay fixed), then the fuzzer for SECONDS per
# target, starting from the committed seeds.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 30 s, every target
#
# Environment:
#   FUZZ_SANITIZER  address (default) or none (faster, finds less)
#   FUZZ_JOBS       parallel fuzzing processes per target (default 1)
#   FUZZ_KEEP=1     add the inputs found to fuzz/corpus/<target>/ (they
#                   are git-ignored; only seed-* files are committed)
#
# A crash stops nothing: every target runs, and the script then lists the
# crashing inputs and exits 1. cargo-fuzz is installed when missing; it
# needs RUSTC_BOOTSTRAP=1 on a stable toolchain, which this script sets.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
shift || true
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-1}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing it (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

echo "building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
    regressions=(regressions/"$t"/*)
    if [ -e "${regressions[0]}" ]; then
        echo "== $t: ${#regressions[@]} regression input(s)"
        if ! cargo fuzz run --sanitizer "$sanitizer" "$t" "${regressions[@]}" -- -runs=1; then
            failed+=("$t (a regression input crashes again)")
            continue
        fi
    fi
    echo "== $t: fuzzing for ${secs}s"
    if [ "${FUZZ_KEEP:-0}" = 1 ]; then
        dirs=(corpus/"$t")
    else
        mkdir -p "$work/$t"
        dirs=("$work/$t" corpus/"$t")
    fi
    if ! cargo fuzz run --sanitizer "$sanitizer" --jobs "$jobs" "$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -timeout=60 -print_final_stats=1 2>&1 |
        grep -vE '^#[0-9]+\s+(NEW|REDUCE|pulse)|NEW_FUNC|^"|recommended dictionary|^\s*$'; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo
    echo "FUZZ FAILURES:"
    for f in "${failed[@]}"; do echo "  $f"; done
    echo "crashing inputs are in fuzz/artifacts/<target>/; replay one with"
    echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>"
    echo "then fix it, add a test in the crate, and copy the input to fuzz/regressions/<target>/."
    exit 1
fi
echo "fuzzing: no crash in ${#targets[@]} target(s), ${secs}s each"
