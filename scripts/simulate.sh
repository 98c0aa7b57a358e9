#!/usr/bin/env bash
# The whole-cluster simulation (tools/sim, docs/testing.md "Whole-cluster simulation"): the
# nodes' real protocol code over simulated stores, network, faults and time, all from one seed.
#
#   scripts/simulate.sh                          # the default seed count (about a minute)
#   scripts/simulate.sh --seed S [--nodes K]     # replay one seed exactly
#   scripts/simulate.sh --membership             # with membership changes (add, then
#                                                # decommission or force-remove) during the faults
#   scripts/simulate.sh --mutant NAME            # a planted bug: must fail (exit 1)
#   scripts/simulate.sh --list-mutants
#   scripts/simulate.sh --release --seeds 100000 # the long soak (about 2.5 hours on 2 cores)
#
# Other options: --first S (first seed), --jobs J (seeds run in parallel; default: every core),
# --verbose (a line per seed), --lww-control (last-writer-wins everywhere: must fail).
# `--release` (this script's own option, first) builds optimised: about 9 times faster, same
# results. The binary is built with the `mutants` feature in its own target directory
# (target/sim), so it never shares artifacts with the normal builds, which must not contain
# mutant code. The exit code is the simulator's: 0 every seed passed, 1 some failed, 2 usage.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
flags=()
if [[ "${1:-}" == "--release" ]]; then
    profile=release
    flags=(--release)
    shift
fi
target="${CARGO_TARGET_DIR:-target}/sim"
cargo build --quiet --locked -p cairn-sim --features mutants --target-dir "$target" "${flags[@]}"
exec "$target/$profile/cairn-sim" "$@"
