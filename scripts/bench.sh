#!/usr/bin/env bash
# Cluster benchmark (issue 7): builds the release binary, then scripts/bench.py measures, in one
# run, the machine's ceiling (`cairn bench` against the trivial `cairn bench-target`), one node
# (N=1) and a 4-node cluster (N=3, R=2, W=2) with --sync always and --sync never, and rewrites the
# cluster section of docs/benchmarks.md. About 10 minutes of measuring on 2 cores, plus the
# release build (6-10 minutes from a clean target/).
#
#   scripts/bench.sh                      # the whole run
#   scripts/bench.sh --repeats 5          # more repeats per point
#   scripts/bench.sh --setups ceiling,always --workloads 1 --objects 0   # a quick look
#
# Every flag goes to scripts/bench.py (see `python3 scripts/bench.py --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p cairn
exec python3 scripts/bench.py --cairn target/release/cairn "$@"
