#!/usr/bin/env bash
# Checks mDNS discovery between two members in two network namespaces joined by a veth pair
# (needs root). Nothing leaves the machine: the namespaces have only `lo` and the veth ends.
# Each member gets NO bootstrap address; they must find each other through mDNS alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q -p cairn-membership --example member
BIN=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug/examples/member
WORK=$(mktemp -d /tmp/cairn-mdns.XXXXXX)
A=cairn-mdns-a B=cairn-mdns-b
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$A"; ip netns add "$B"
ip link add cairn-va type veth peer name cairn-vb
ip link set cairn-va netns "$A"; ip link set cairn-vb netns "$B"
ip -n "$A" addr add 10.231.0.1/24 dev cairn-va; ip -n "$B" addr add 10.231.0.2/24 dev cairn-vb
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set cairn-va up; ip -n "$B" link set cairn-vb up
start=$(date +%s%3N)
for pair in "$A n1" "$B n2"; do
  set -- $pair
  ip netns exec "$1" env RUST_LOG="${RUST_LOG:-warn}" CAIRN_CLUSTER_SECRET="mdns check cluster secret" \
    "$BIN" --node-id "$2" --data-dir "$WORK/$2" --listen /ip4/0.0.0.0/tcp/47501 --mdns \
    >"$WORK/$2.out" 2>"$WORK/$2.err" &
  PIDS+=($!)
done
for _ in $(seq 1 200); do
  t1=$(jq -r 'select(.member=="n2" and .status=="up") | .t_ms' "$WORK/n1.out" | head -1)
  t2=$(jq -r 'select(.member=="n1" and .status=="up") | .t_ms' "$WORK/n2.out" | head -1)
  if [[ -n $t1 && -n $t2 ]]; then
    echo "mDNS: n1 saw n2 up after $((t1 - start)) ms, n2 saw n1 up after $((t2 - start)) ms (from launch)"
    exit 0
  fi
  sleep 0.1
done
echo "mDNS discovery FAILED within 20 s; logs in $WORK" >&2
cat "$WORK"/*.err >&2
exit 1
