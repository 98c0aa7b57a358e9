#!/usr/bin/env bash
# A recorded large-object run (issue 18; docs/testing.md): one object of SIZE_MIB (default 6144,
# beyond 32-bit offsets) streamed into a 4-node local cluster (N=3, --sync always) through n1 with
# curl, read back whole through n3 and n4 (SHA-256 equal), and ranged reads past 4 GiB through n2
# compared with the file's own bytes; each node's peak RSS at the end.
#
#   scripts/large-object-run.sh [target/release/cairn] [SIZE_MIB]
#
# Needs about 4 x SIZE of free disk (the file and three replicas). Processes are stopped by the
# PID this script started; traffic stays on 127.0.0.1.
set -euo pipefail
CAIRN="${1:-target/release/cairn}"
SIZE_MIB="${2:-6144}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cairn-large-XXXXXX")"
BASE=9581
cleanup() {
    if [[ -n "${DC_PID:-}" ]] && kill -0 "$DC_PID" 2>/dev/null; then
        kill -INT "$DC_PID"
        wait "$DC_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# The default --max-object-size is 5 GiB (S3's single PUT); this run goes past it.
"$CAIRN" dev-cluster --data-dir "$WORK/cluster" --http-port-base $BASE --p2p-port-base $((BASE + 100)) \
    --node-arg=--max-object-size=$(((SIZE_MIB + 1) * 1048576)) >"$WORK/cluster.log" 2>&1 &
DC_PID=$!
for _ in $(seq 1 60); do
    if curl -sf "http://127.0.0.1:$BASE/health" >/dev/null 2>&1 \
        && curl -sf "http://127.0.0.1:$((BASE + 3))/health" >/dev/null 2>&1; then
        break
    fi
    sleep 1
done
sleep 3
curl -sf -X POST "http://127.0.0.1:$BASE/buckets/big" >/dev/null

echo "generating ${SIZE_MIB} MiB"
head -c "$((SIZE_MIB * 1048576))" /dev/urandom >"$WORK/object"
want=$(sha256sum "$WORK/object" | cut -d' ' -f1)
size=$(stat -c %s "$WORK/object")

t0=$(date +%s.%N)
curl -sS --fail-with-body -T "$WORK/object" "http://127.0.0.1:$BASE/buckets/big/huge.img" -o "$WORK/put.json"
t1=$(date +%s.%N)
echo "PUT through n1: $(python3 -c "print(f'{$size/($t1-$t0)/1e6:.0f} MB/s, {$t1-$t0:.1f} s')")"
python3 -c "import json; j=json.load(open('$WORK/put.json')); print('  size', j['size'], 'replicas', j['replicas_written'], 'etag', j['etag'])"

for n in 3 4; do
    t0=$(date +%s.%N)
    got=$(curl -sf "http://127.0.0.1:$((BASE + n - 1))/buckets/big/huge.img" | sha256sum | cut -d' ' -f1)
    t1=$(date +%s.%N)
    echo "GET through n$n: sha256 $([[ $got == "$want" ]] && echo equal || echo DIFFERENT) " \
        "($(python3 -c "print(f'{$size/($t1-$t0)/1e6:.0f} MB/s')"), including sha256sum)"
    [[ $got == "$want" ]]
done

fail=0
for start in 4294967290 4294967296 5000000000 $((size - 1000)); do
    end=$((start + 999))
    (( end >= size )) && end=$((size - 1))
    curl -sf -r "$start-$end" "http://127.0.0.1:$((BASE + 1))/buckets/big/huge.img" -o "$WORK/range"
    if cmp -s "$WORK/range" <(tail -c +"$((start + 1))" "$WORK/object" | head -c "$((end - start + 1))"); then
        echo "range $start-$end through n2: equal"
    else
        echo "range $start-$end through n2: DIFFERENT"
        fail=1
    fi
done

for i in 1 2 3 4; do
    pid=$(curl -sf "http://127.0.0.1:$((BASE + i - 1))/health" >/dev/null && pgrep -f -- "--data-dir $WORK/cluster/n$i " || true)
    if [[ -n "$pid" ]]; then
        echo "n$i: $(grep -E 'VmHWM|RssAnon|RssFile' "/proc/$pid/status" | tr -s ' \t\n' ' ')"
    fi
done
exit $fail
