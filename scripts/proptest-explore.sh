#!/usr/bin/env bash
# Runs the workspace's property tests again and again, each round from a fresh random seed, to look
# for cases the fixed-seed run of scripts/test.sh never draws. Bounded: ROUNDS rounds or SECS
# seconds, whichever comes first (defaults 20 rounds, 600 s). A failing round prints its seed;
# replay it with PROPTEST_RNG_SEED=<seed> cargo test -p <crate> --test <file>, fix the code and add
# the case as a plain regression test.
#
# usage: scripts/proptest-explore.sh [ROUNDS] [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-20}"
secs="${2:-600}"
deadline=$(( $(date +%s) + secs ))
targets=(
  "-p cairn-engine --test model"
  "-p cairn-replication --test ring"
  "-p cairn-replication --test dvv_props"
  "-p cairn --test api_properties"
  "-p cairn-membership --lib phi"
)
cargo test --locked --no-run -p cairn-engine -p cairn-replication -p cairn-membership -q
cargo test --locked --no-run -p cairn --test api_properties -q
for round in $(seq 1 "$rounds"); do
  if (( $(date +%s) >= deadline )); then
    echo "time budget of ${secs}s used after $((round - 1)) rounds"
    break
  fi
  seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
  echo "== round $round/$rounds, PROPTEST_RNG_SEED=$seed"
  for t in "${targets[@]}"; do
    # shellcheck disable=SC2086
    if ! PROPTEST_RNG_SEED="$seed" cargo test --locked -q $t >/tmp/proptest-explore.$$.log 2>&1; then
      cat /tmp/proptest-explore.$$.log
      echo "FAILED: PROPTEST_RNG_SEED=$seed cargo test $t"
      rm -f /tmp/proptest-explore.$$.log
      exit 1
    fi
  done
done
rm -f /tmp/proptest-explore.$$.log
echo "no failures"
