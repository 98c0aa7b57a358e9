#!/usr/bin/env bash
# Measures cairn-membership failure detection with 4 member processes on 127.0.0.1.
#
#   scripts/measure-membership.sh kill [RUNS]       kill -9 one member RUNS times (default 10):
#                                                   kill -> every other member marks it down,
#                                                   restart -> every other member marks it up
#   scripts/measure-membership.sh soak [SECONDS]    steady operation for SECONDS (default 600)
#                                                   with both cores saturated by 2 busy loops;
#                                                   counts suspect/down events (target: 0 down)
#
# Uses the `member` example (debug build, crypto crates optimised by the workspace profile;
# PROFILE=release for a release build). Default settings: 1 s heartbeats, phi threshold 8.
# NODE_NICE=19 runs the members at the lowest CPU priority (harsher than the busy loops).
# Output: JSON lines per member in $WORK/nN.out, a summary on stdout. Every process started
# here is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-kill}
ARG=${2:-}
BASE_PORT=${BASE_PORT:-47101}
PROFILE=${PROFILE:-dev}
NODE_NICE=${NODE_NICE:-0}
WORK=$(mktemp -d /tmp/cairn-membership-measure.XXXXXX)
SECRET="measurement cluster secret, not for production"
NODES=(n1 n2 n3 n4)
declare -A PID PORT
BURNERS=()

cleanup() {
  for n in "${NODES[@]}"; do
    if [[ -n "${PID[$n]:-}" ]]; then kill "${PID[$n]}" 2>/dev/null || true; fi
  done
  for p in "${BURNERS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "building the member example ($PROFILE)..." >&2
cargo build -q -p cairn-membership --example member --profile "$PROFILE"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
SUBDIR=$([[ "$PROFILE" == dev ]] && echo debug || echo "$PROFILE")
BIN="$TARGET_DIR/$SUBDIR/examples/member"

i=0
for n in "${NODES[@]}"; do PORT[$n]=$((BASE_PORT + i)); i=$((i + 1)); done

now_ms() { date +%s%3N; }

start_node() {
  local n=$1 args=()
  for m in "${NODES[@]}"; do
    [[ $m == "$n" ]] || args+=(--bootstrap "/ip4/127.0.0.1/tcp/${PORT[$m]}")
  done
  CAIRN_CLUSTER_SECRET="$SECRET" nice -n "$NODE_NICE" "$BIN" --node-id "$n" --data-dir "$WORK/$n" \
    --listen "/ip4/127.0.0.1/tcp/${PORT[$n]}" --http-addr "127.0.0.1:$((PORT[$n] + 1000))" \
    "${args[@]}" >>"$WORK/$n.out" 2>>"$WORK/$n.err" &
  PID[$n]=$!
}

# Latest t_ms at which observer $1 logged member $2 with status $3 after time $4 (empty if none).
seen_after() {
  jq -r --arg m "$2" --arg s "$3" --argjson t "$4" \
    'select(.member == $m and .status == $s and .t_ms >= $t) | .t_ms' "$WORK/$1.out" 2>/dev/null | head -1
}

# Waits (bounded by 60 s) until every member other than $1 logged $1 as $2 after time $3;
# prints the largest observation time.
wait_all_see() {
  local victim=$1 status=$2 since=$3 deadline=$(( $(date +%s) + 60 )) worst
  while (( $(date +%s) < deadline )); do
    worst=0
    for o in "${NODES[@]}"; do
      [[ $o == "$victim" ]] && continue
      local t; t=$(seen_after "$o" "$victim" "$status" "$since")
      if [[ -z $t ]]; then worst=""; break; fi
      (( t > worst )) && worst=$t
    done
    if [[ -n $worst ]]; then echo "$worst"; return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for all to see $victim $status" >&2
  return 1
}

wait_converged() {
  local since=$1
  for v in "${NODES[@]}"; do wait_all_see "$v" up "$since" >/dev/null; done
}

stats() { # prints "median max" of the numbers on stdin (ms)
  sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%d %d\n", m, a[NR]}'
}

T0=$(now_ms)
for n in "${NODES[@]}"; do start_node "$n"; done
wait_converged "$T0"
echo "4 members converged in $(( $(now_ms) - T0 )) ms (work dir $WORK)" >&2

case "$MODE" in
kill)
  RUNS=${ARG:-10}
  : >"$WORK/kill.tsv"
  for r in $(seq 1 "$RUNS"); do
    victim=${NODES[$(( (r - 1) % 4 ))]}
    sleep 10  # let the previous victim (now an observer) build a heartbeat history
    t_kill=$(now_ms)
    kill -9 "${PID[$victim]}"
    wait "${PID[$victim]}" 2>/dev/null || true
    t_down=$(wait_all_see "$victim" down "$t_kill")
    sleep 1
    t_start=$(now_ms)
    start_node "$victim"
    t_up=$(wait_all_see "$victim" up "$t_start")
    t_started=$(jq -r 'select(.status == "started") | .t_ms' "$WORK/$victim.out" | tail -1)
    printf "%s\t%s\t%s\t%s\n" "$victim" $((t_down - t_kill)) $((t_up - t_start)) $((t_up - t_started)) \
      | tee -a "$WORK/kill.tsv"
  done
  echo "runs: $RUNS (victim, kill->all down ms, restart->all up ms, listening->all up ms)"
  echo "kill -> marked down by all others (ms): median/max $(cut -f2 "$WORK/kill.tsv" | stats)"
  echo "process start -> marked up by all others (ms): median/max $(cut -f3 "$WORK/kill.tsv" | stats)"
  echo "listener bound -> marked up by all others (ms): median/max $(cut -f4 "$WORK/kill.tsv" | stats)"
  ;;
soak)
  SECS=${ARG:-600}
  for _ in 1 2; do
    timeout "$SECS" sh -c 'while :; do :; done' &
    BURNERS+=($!)
  done
  t_soak=$(now_ms)
  echo "soaking for $SECS s with 2 busy loops (pids ${BURNERS[*]})" >&2
  sleep "$SECS"
  for p in "${BURNERS[@]}"; do kill "$p" 2>/dev/null || true; done
  downs=0; suspects=0
  for o in "${NODES[@]}"; do
    d=$(jq -r --argjson t "$t_soak" 'select(.t_ms >= $t and .status == "down") | .member' "$WORK/$o.out" | wc -l)
    s=$(jq -r --argjson t "$t_soak" 'select(.t_ms >= $t and .status == "suspect") | .member' "$WORK/$o.out" | wc -l)
    downs=$((downs + d)); suspects=$((suspects + s))
  done
  echo "soak: $SECS s, 4 members (nice $NODE_NICE), 2 CPU burners: false down events $downs, suspect events $suspects"
  echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  ;;
*)
  echo "usage: $0 kill [RUNS] | soak [SECONDS]" >&2; exit 2 ;;
esac
