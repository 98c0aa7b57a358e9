#!/usr/bin/env python3
"""Handoff benchmark (issue 13): add a 5th node to a 4-node cluster holding --gib GiB of 4 KiB
objects, while clients read, and measure:

- the time from the admin API's 202 to the change being complete (layout version + 2), and the
  bytes the new owners pulled, as MB/s against the throttle (--handoff-rate) and the disk;
- the p50/p99 of 4 KiB gets (closed loop, --concurrency clients over the four founders) during
  the handoff, in back-to-back runs of --slice seconds, against the same load just before it.

    scripts/bench-handoff.py --cairn target/release/cairn [--gib 1] [--handoff-rate 64]
                             [--sync never] [--out docs/bench-handoff.md]

Processes are stopped by the PID this script started; traffic stays on 127.0.0.1. Every load
loop is bounded in time. The report is markdown (--out) and JSON (workdir/results.json).
"""

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as b  # noqa: E402  (scripts/bench.py: processes, generator, machine facts)


def start(cairn, workdir, sync, rate, http_base, p2p_base):
    """Four founders (n1-n4, --members) and a spare n5 (no --members: a gateway until added)."""
    return b.start_cluster(cairn, "4+1 nodes", workdir, 4, 3, 2, 2, sync, http_base, p2p_base,
                           spares=1, extra=["--handoff-rate", str(rate)])


def gets(cairn, endpoints, args, seconds):
    setup = b.Setup("gets", [], endpoints, [])
    return b.bench(cairn, setup, "get", "4KiB", args.concurrency, args, keys=args.keys,
                   duration=seconds, warmup=0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cairn", default="target/release/cairn")
    ap.add_argument("--gib", type=float, default=1.0, help="data held before the add")
    ap.add_argument("--handoff-rate", type=float, default=64.0, help="MB/s per node")
    ap.add_argument("--sync", default="never", help="the nodes' --sync")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--slice", type=float, default=5.0, help="seconds per load run")
    ap.add_argument("--before", type=int, default=3, help="load runs before the add")
    ap.add_argument("--limit", type=float, default=1800.0, help="longest wait for the change, s")
    ap.add_argument("--workdir", default="target/bench-handoff")
    ap.add_argument("--out", default=None)
    ap.add_argument("--http-base", type=int, default=18581)
    ap.add_argument("--p2p-base", type=int, default=18681)
    args = ap.parse_args()
    args.warmup = 0.5
    args.duration = args.slice
    args.keys = int(args.gib * (1 << 30) / 4096)
    cairn = os.path.abspath(args.cairn)
    facts = b.machine()
    os.makedirs(args.workdir, exist_ok=True)
    disk = b.disk_bandwidth(args.workdir)
    b.log(f"disk: write {disk['write_mb_s']:.0f} MB/s, read {disk['read_mb_s']:.0f} MB/s")
    setup = start(cairn, os.path.join(args.workdir, "cluster"), args.sync, args.handoff_rate,
                  args.http_base, args.p2p_base)
    founders = setup.endpoints[:4]
    try:
        t0 = time.monotonic()
        b.log(f"prefilling {args.keys} x 4 KiB ({args.gib} GiB) through the founders")
        b.bench(cairn, b.Setup("prefill", [], founders, []), "get", "4KiB", 64, args,
                keys=args.keys, prefill=True, ops=1, duration=5, warmup=0)
        prefill_s = time.monotonic() - t0
        b.log(f"prefilled in {prefill_s:.0f} s; settling")
        b.settle()
        before = [gets(cairn, founders, args, args.slice) for _ in range(args.before)]
        for r in before:
            b.log(f"before: {r['ops_per_s']:.0f} ops/s p99 {r['latency_ms']['p99']:.2f} ms")
        req = urllib.request.Request(setup.endpoints[0] + "/cluster/members/n5", method="POST")
        t_add = time.monotonic()
        with urllib.request.urlopen(req, timeout=60) as resp:
            added = json.loads(resp.read())
        version = added["layout_version"]
        b.log(f"add n5: committed at v{version}, {added['partitions_to_move']} partition "
              f"replicas to move (minimum {added['minimum_moves']})")
        during = []
        done_at = None
        while time.monotonic() - t_add < args.limit:
            r = gets(cairn, founders, args, args.slice)
            during.append(r)
            views = [b.http_json(u + "/cluster") for u in setup.endpoints]
            complete = all(v["layout"]["version"] >= version + 2
                           and v["layout"]["transition"] is None for v in views)
            moved = sum((v["handoff"]["per_node"][0].get("sync") or {}).get("bytes_moved", 0)
                        for v in views)
            b.log(f"during: {r['ops_per_s']:.0f} ops/s p99 {r['latency_ms']['p99']:.2f} ms; "
                  f"{moved / 1e6:.0f} MB moved")
            if complete:
                done_at = time.monotonic()
                break
        if done_at is None:
            raise RuntimeError(f"the add did not complete within {args.limit} s")
        views = [b.http_json(u + "/cluster") for u in setup.endpoints]
        own = [v["handoff"]["per_node"][0].get("sync") or {} for v in views]
        bytes_moved = sum(s.get("bytes_moved", 0) for s in own)
        keys_moved = sum(s.get("keys_moved", 0) for s in own)
        took = done_at - t_add
        # The last load slice may end after the change did: `took` is bounded by the slices.
        mb_s = bytes_moved / 1e6 / took
        limit = min(args.handoff_rate, disk["write_mb_s"]) if args.handoff_rate > 0 \
            else disk["write_mb_s"]
        p99_before = statistics.median(r["latency_ms"]["p99"] for r in before)
        p99_during = statistics.median(r["latency_ms"]["p99"] for r in during)
        p50_before = statistics.median(r["latency_ms"]["p50"] for r in before)
        p50_during = statistics.median(r["latency_ms"]["p50"] for r in during)
        ops_before = statistics.median(r["ops_per_s"] for r in before)
        ops_during = statistics.median(r["ops_per_s"] for r in during)
        result = {
            "machine": facts, "disk": disk, "args": vars(args), "added": added,
            "prefill_s": prefill_s, "took_s": took, "bytes_moved": bytes_moved,
            "keys_moved": keys_moved, "mb_s": mb_s, "limit_mb_s": limit,
            "before": before, "during": during,
        }
        with open(os.path.join(args.workdir, "results.json"), "w") as f:
            json.dump(result, f, indent=1)
        lines = [
            "# Handoff benchmark: adding a 5th node (scripts/bench-handoff.py)",
            "",
            f"- date: {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}; "
            f"{facts['cores']} cores, {facts['cpu']}, {facts['memory_gib']} GiB; load at start "
            f"{facts['load'][0]:.2f}",
            f"- disk (same run, 256 MiB sequential): write+fdatasync {disk['write_mb_s']:.0f} MB/s,"
            f" read {disk['read_mb_s']:.0f} MB/s",
            f"- cluster: n1-n4 founders, N=3 R=2 W=2, --sync {args.sync}, --handoff-rate "
            f"{args.handoff_rate:g} MB/s; {args.keys:,} objects of 4 KiB ({args.gib:g} GiB, "
            f"prefilled in {prefill_s:.0f} s); n5 started without --members",
            f"- load: 4 KiB gets, closed loop, {args.concurrency} clients over n1-n4, runs of "
            f"{args.slice:g} s: {len(before)} before the add, {len(during)} during it",
            "",
            "| measure | value |",
            "|---|---|",
            f"| partition replicas moved (minimum) | {added['partitions_to_move']} "
            f"({added['minimum_moves']}) |",
            f"| time from 202 to complete (v{version} → v{version + 2}) | {took:.1f} s |",
            f"| objects / bytes pulled | {keys_moved:,} / {bytes_moved / 1e6:.0f} MB |",
            f"| handoff rate | {mb_s:.1f} MB/s = {mb_s / limit * 100:.0f} % of min(throttle, "
            f"disk) = {limit:.0f} MB/s (target ≥ 50 %) |",
            f"| gets before: ops/s, p50, p99 (medians) | {ops_before:,.0f}, {p50_before:.2f} ms, "
            f"{p99_before:.2f} ms |",
            f"| gets during: ops/s, p50, p99 (medians) | {ops_during:,.0f}, {p50_during:.2f} ms, "
            f"{p99_during:.2f} ms |",
            f"| p99 during / before | {p99_during / p99_before:.2f}× (target ≤ 2×) |",
            "",
        ]
        text = "\n".join(lines)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
            b.log(f"wrote {args.out}")
    finally:
        setup.stop()


if __name__ == "__main__":
    main()
