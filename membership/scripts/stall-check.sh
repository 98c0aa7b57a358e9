#!/usr/bin/env bash
# Stalled-observer check: 3 members on 127.0.0.1; n1 is stopped (SIGSTOP) for 5 s three times.
# Expected: n2/n3 mark n1 down each time (a stopped process is down), and n1 itself emits NO
# down events for n2/n3 when it resumes (their heartbeats are waiting unread in its sockets).
# Every process started here is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q -p cairn-membership --example member
BIN=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug/examples/member
BASE=${BASE_PORT:-47600}
W=$(mktemp -d /tmp/cairn-stall.XXXXXX)
P=()
cleanup() { for p in "${P[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for i in 1 2 3; do
  args=(); for j in 1 2 3; do [[ $j == "$i" ]] || args+=(--bootstrap "/ip4/127.0.0.1/tcp/$((BASE + j))"); done
  CAIRN_CLUSTER_SECRET="stall check cluster secret" "$BIN" --node-id "n$i" --data-dir "$W/n$i" \
    --listen "/ip4/127.0.0.1/tcp/$((BASE + i))" "${args[@]}" >"$W/n$i.out" 2>"$W/n$i.err" &
  P+=($!)
done
sleep 4
for _ in 1 2 3; do kill -STOP "${P[0]}"; sleep 5; kill -CONT "${P[0]}"; sleep 4; done
cleanup; P=()
echo "n1 (stalled observer) events about others: $(jq -r 'select(.member!="n1" and .status!="started") | .status' "$W/n1.out" | sort | uniq -c | tr '\n' ' ')"
echo "n2 events about n1: $(jq -r 'select(.member=="n1") | .status' "$W/n2.out" | sort | uniq -c | tr '\n' ' ')"
echo "n1 stall warnings: $(grep -c 'stalled' "$W/n1.err" || true)"
