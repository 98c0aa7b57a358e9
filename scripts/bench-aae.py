#!/usr/bin/env python3
"""Anti-entropy benchmark (issue 14): what a replaced disk costs, and what anti-entropy costs an
idle cluster.

1. Restore: a 4-node cluster (N=3, --anti-entropy-interval, default 60 s) holds --objects
   objects of 4 KiB; n4 is stopped, its data directory deleted, and started again with the same
   id. With no client traffic at all, the time until n4's trees hold as many replicas as before,
   and the bytes it took back per second (engine live bytes / time), against the target of two
   intervals.
2. Idle cost: a 4-node cluster holding --idle-objects small objects (by default 1.33 M, so that
   each node holds about 1 M replicas) sits idle; each node's CPU over --idle-seconds with
   anti-entropy at the default interval, then — the same data, every node restarted with
   --anti-entropy-interval 0 — over the same time without it. The difference is anti-entropy's
   cost, as % of one core per node. The restart also measures building the trees from 1 M
   replicas, and /cluster gives their memory (bytes per replica).
3. Collection: a 4-node cluster with --tombstone-grace --grace holds --objects objects of 4 KiB;
   half of them are deleted; after the grace every node's replica count (its trees) and engine
   key count must fall by exactly the replicas of deleted keys it held (no tombstone left: three
   replicas per remaining object in all), then each node is stopped and `cairn compact`ed, and
   the disk space before and after is reported.

    scripts/bench-aae.py --cairn target/release/cairn [--objects 100000] [--idle-objects 1333334]
                         [--out docs/bench-aae.md]

Processes are stopped by the PID this script started; traffic stays on 127.0.0.1; every wait is
bounded. The report is markdown (--out) and JSON (workdir/results.json).
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as b  # noqa: E402  (scripts/bench.py: processes, generator, machine facts)


def aae(url):
    return b.http_json(url + "/cluster", timeout=5.0)["anti_entropy"]


def metric(url, name):
    import urllib.request
    with urllib.request.urlopen(url + "/metrics", timeout=5.0) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def start(cairn, workdir, args, interval, http_base, p2p_base, grace="1h"):
    return b.start_cluster(cairn, "4 nodes", workdir, 4, 3, 2, 2, args.sync, http_base, p2p_base,
                           extra=["--anti-entropy-interval", interval,
                                  "--handoff-rate", str(args.handoff_rate),
                                  "--tombstone-grace", grace])


def restart(setup, i, replace=None):
    """Stops node i (SIGTERM) and starts it with the same command (with `replace` applied)."""
    p = setup.procs[i]
    cmd = list(p.popen.args)
    p.stop()
    if replace:
        cmd = replace(cmd)
    setup.procs[i] = b.Proc(p.name, cmd, p.log_path)


def prefill(cairn, setup, args, objects, size):
    b.bench(cairn, b.Setup("prefill", [], setup.endpoints, []), "get", size, 64, args,
            keys=objects, prefill=True, ops=1, duration=5, warmup=0)


def restore(cairn, args, facts):
    setup = start(cairn, os.path.join(args.workdir, "restore"), args, f"{args.interval:g}s",
                  args.http_base, args.p2p_base)
    try:
        t0 = time.monotonic()
        b.log(f"restore: prefilling {args.objects:,} x 4 KiB")
        prefill(cairn, setup, args, args.objects, "4KiB")
        prefill_s = time.monotonic() - t0
        n4 = setup.endpoints[3]
        # Every replica in place first (a W = 2 write may miss its third replica until an
        # exchange): the count n4 must get back is what it holds when the cluster agrees.
        b.wait_until(lambda: sum(aae(u)["tree"]["keys"] for u in setup.endpoints)
                     >= 3 * args.objects, "three replicas of every object",
                     timeout=3 * args.interval + 60)
        before = aae(n4)["tree"]["keys"]
        b.log(f"restore: prefilled in {prefill_s:.0f} s; n4 holds {before:,} replicas; wiping it")
        data = setup.data_dirs[3]
        restart(setup, 3, replace=lambda cmd: (shutil.rmtree(data), cmd)[1])
        t_start = time.monotonic()
        b.wait_until(lambda: aae(n4)["tree"]["build_keys"] == 0, "n4 restarted empty", 60)
        took = None
        samples = []
        bound = 2 * args.interval + 120
        while time.monotonic() - t_start < bound:
            held = aae(n4)["tree"]["keys"]
            samples.append((round(time.monotonic() - t_start, 1), held))
            if held >= before:
                took = time.monotonic() - t_start
                break
            time.sleep(1.0)
        if took is None:
            raise RuntimeError(f"n4 holds {held:,} of {before:,} replicas after {bound:.0f} s")
        live = metric(n4, "cairn_engine_live_bytes")
        repaired = sum(aae(u)["keys_repaired"] for u in setup.endpoints)
        b.log(f"restore: n4 back to {before:,} replicas in {took:.1f} s "
              f"({live / 1e6 / took:.1f} MB/s)")
        return {"prefill_s": prefill_s, "replicas": before, "took_s": took,
                "live_bytes": live, "mb_s": live / 1e6 / took, "keys_repaired": repaired,
                "samples": samples}
    finally:
        setup.stop()


def idle_cpu(setup, seconds):
    """Each node's CPU seconds over `seconds` of idleness, as % of one core."""
    start = [p.cpu_seconds() for p in setup.procs]
    time.sleep(seconds)
    return [(p.cpu_seconds() - s) / seconds * 100 for p, s in zip(setup.procs, start)]


def idle(cairn, args, facts):
    # Tombstone collection off in both measurements: its scans and reclaim passes (a walk over
    # the keys every grace, the first right after a start) are not anti-entropy's cost.
    setup = start(cairn, os.path.join(args.workdir, "idle"), args, "60s",
                  args.http_base + 10, args.p2p_base + 10, grace="off")
    try:
        t0 = time.monotonic()
        b.log(f"idle: prefilling {args.idle_objects:,} x {args.idle_size}")
        prefill(cairn, setup, args, args.idle_objects, args.idle_size)
        b.log(f"idle: prefilled in {time.monotonic() - t0:.0f} s; one interval to settle")
        time.sleep(65)
        views = [aae(u) for u in setup.endpoints]
        on = idle_cpu(setup, args.idle_seconds)
        exchanges = sum(aae(u)["exchanges"] for u in setup.endpoints) - \
            sum(v["exchanges"] for v in views)
        b.log(f"idle: anti-entropy on: CPU {['%.2f' % c for c in on]} % of a core; "
              f"{exchanges} exchanges")
        # The same data without anti-entropy: every node restarted (trees are built anyway, so
        # the restart also times the build from ~1 M replicas).
        for i in range(4):
            restart(setup, i, replace=lambda cmd: [("0" if a == "60s" else a) for a in cmd])
        b.wait_until(lambda: all(aae(u)["enabled"] is False for u in setup.endpoints),
                     "restarted without anti-entropy", 300)
        trees = [aae(u)["tree"] for u in setup.endpoints]
        time.sleep(10)
        off = idle_cpu(setup, args.idle_seconds)
        b.log(f"idle: anti-entropy off: CPU {['%.2f' % c for c in off]} % of a core")
        return {"on": on, "off": off, "exchanges": exchanges, "trees": trees,
                "objects": args.idle_objects}
    finally:
        setup.stop()


def collect(cairn, args, facts):
    setup = start(cairn, os.path.join(args.workdir, "collect"), args, "60s",
                  args.http_base + 20, args.p2p_base + 20, grace=f"{args.grace:g}s")
    try:
        b.log(f"collect: prefilling {args.objects:,} x 4 KiB")
        prefill(cairn, setup, args, args.objects, "4KiB")
        b.wait_until(lambda: sum(aae(u)["tree"]["keys"] for u in setup.endpoints)
                     >= 3 * args.objects, "three replicas of every object", timeout=240)
        b.settle()
        before = [aae(u)["tree"]["keys"] for u in setup.endpoints]
        engine_before = [metric(u, "cairn_engine_keys") for u in setup.endpoints]
        disk_before = [b.dir_bytes(d) for d in setup.data_dirs]
        half = args.objects // 2
        t0 = time.monotonic()
        b.log(f"collect: deleting {half:,} objects")
        b.bench(cairn, b.Setup("delete", [], setup.endpoints, []), "delete", "4KiB", 32, args,
                keys=half, prefill=False, ops=half, duration=600, warmup=0)
        deleted_s = time.monotonic() - t0
        t1 = time.monotonic()
        b.wait_until(lambda: sum(aae(u)["tree"]["keys"] for u in setup.endpoints)
                     <= 3 * (args.objects - half), "every tombstone collected",
                     timeout=args.grace + 600)
        collected_s = time.monotonic() - t1
        after = [aae(u)["tree"]["keys"] for u in setup.endpoints]
        engine_after = [metric(u, "cairn_engine_keys") for u in setup.endpoints]
        collected = [b.http_json(u + "/cluster")["tombstones"]["collected"]
                     for u in setup.endpoints]
        disk_deleted = [b.dir_bytes(d) for d in setup.data_dirs]
        b.log(f"collect: collected in {collected_s:.0f} s after the deletes")
        for p in setup.procs:
            p.stop()
        compacted = []
        for d in setup.data_dirs:
            res = b.subprocess.run([cairn, "compact", "--data-dir", d], capture_output=True,
                                   text=True, timeout=600)
            if res.returncode != 0:
                raise RuntimeError(f"cairn compact {d}: {res.stderr.strip()[-400:]}")
            compacted.append(b.dir_bytes(d))
        return {"before": before, "after": after, "engine_before": engine_before,
                "engine_after": engine_after, "collected": collected, "deleted_s": deleted_s,
                "collected_s": collected_s, "disk_before": disk_before,
                "disk_deleted": disk_deleted, "disk_compacted": compacted, "half": half}
    finally:
        setup.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cairn", default="target/release/cairn")
    ap.add_argument("--objects", type=int, default=100_000, help="4 KiB objects (restore)")
    ap.add_argument("--interval", type=float, default=60.0, help="anti-entropy interval, s")
    ap.add_argument("--idle-objects", type=int, default=1_333_334)
    ap.add_argument("--idle-size", default="64B")
    ap.add_argument("--idle-seconds", type=float, default=120.0)
    ap.add_argument("--handoff-rate", type=float, default=64.0, help="MB/s per node")
    ap.add_argument("--sync", default="never", help="the nodes' --sync")
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--skip-restore", action="store_true")
    ap.add_argument("--skip-collect", action="store_true")
    ap.add_argument("--grace", type=float, default=15.0, help="tombstone grace, s (collection)")
    ap.add_argument("--workdir", default="target/bench-aae")
    ap.add_argument("--out", default=None)
    ap.add_argument("--http-base", type=int, default=18781)
    ap.add_argument("--p2p-base", type=int, default=18881)
    args = ap.parse_args()
    args.warmup = 0
    args.duration = 5
    cairn = os.path.abspath(args.cairn)
    facts = b.machine()
    os.makedirs(args.workdir, exist_ok=True)
    r = None if args.skip_restore else restore(cairn, args, facts)
    i = None if args.skip_idle else idle(cairn, args, facts)
    c = None if args.skip_collect else collect(cairn, args, facts)
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump({"machine": facts, "args": vars(args), "restore": r, "idle": i, "collect": c},
                  f, indent=1)
    lines = [
        "# Anti-entropy benchmark (scripts/bench-aae.py)",
        "",
        f"- date: {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}; {facts['cores']} cores, "
        f"{facts['cpu']}, {facts['memory_gib']} GiB; load at start {facts['load'][0]:.2f}",
        f"- clusters: 4 local nodes, N=3 R=2 W=2, --sync {args.sync}, --handoff-rate "
        f"{args.handoff_rate:g} MB/s (anti-entropy repairs share it)",
        "",
    ]
    if r:
        lines += [
        "## A replaced disk, no client traffic",
        "",
        f"{args.objects:,} objects of 4 KiB (prefilled in {r['prefill_s']:.0f} s); n4 stopped, "
        f"its data directory deleted, started again with the same id; --anti-entropy-interval "
        f"{args.interval:g} s.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| replicas n4 held before / after | {r['replicas']:,} / {r['replicas']:,} |",
        f"| time from restart to all of them back | {r['took_s']:.1f} s (target ≤ two intervals "
        f"= {2 * args.interval:g} s) |",
        f"| bytes back (engine live bytes) | {r['live_bytes'] / 1e6:.0f} MB, "
        f"{r['mb_s']:.1f} MB/s |",
        f"| keys repaired (all nodes' counters) | {r['keys_repaired']:,} |",
        "",
        ]
    if i:
        delta = [a - o for a, o in zip(i["on"], i["off"])]
        mem = [t["memory_bytes"] / max(t["keys"], 1) for t in i["trees"]]
        lines += [
            "## Idle cost",
            "",
            f"{i['objects']:,} objects of {args.idle_size} (about "
            f"{statistics.mean(t['keys'] for t in i['trees']):,.0f} replicas per node); each node's "
            f"CPU over {args.idle_seconds:g} s idle, anti-entropy at the default 60 s interval "
            f"({i['exchanges']} exchanges in that time), then every node restarted with "
            "--anti-entropy-interval 0 and measured again (tombstone collection off in both).",
            "",
            "| node | CPU with (% of a core) | without | anti-entropy's share | tree build at "
            "start | tree memory |",
            "|---|---|---|---|---|---|",
        ]
        for n in range(4):
            t = i["trees"][n]
            lines.append(
                f"| n{n + 1} | {i['on'][n]:.2f} | {i['off'][n]:.2f} | {delta[n]:+.2f} "
                f"(target < 2) | {t['build_ms'] / 1000:.1f} s for {t['build_keys']:,} replicas | "
                f"{t['memory_bytes'] / 2**20:.1f} MiB ({mem[n]:.1f} B per replica) |")
        lines.append("")
    if c:
        total_after = sum(c["after"])
        lines += [
            "## Collection: half of the objects deleted",
            "",
            f"{args.objects:,} objects of 4 KiB; {c['half']:,} deleted through the API in "
            f"{c['deleted_s']:.0f} s (`cairn bench --workload delete`), --tombstone-grace "
            f"{args.grace:g} s; every tombstone collected {c['collected_s']:.0f} s after the last "
            f"delete. Replicas in all after: {total_after:,} (exactly 3 per remaining object: "
            f"{3 * (args.objects - c['half']):,}).",
            "",
            "| node | replicas before → after | engine keys before → after (fall) | tombstones "
            "collected here | disk before → after deletes → after `cairn compact` |",
            "|---|---|---|---|---|",
        ]
        for n in range(4):
            fall = c["engine_before"][n] - c["engine_after"][n]
            lost = c["before"][n] - c["after"][n]
            lines.append(
                f"| n{n + 1} | {c['before'][n]:,} → {c['after'][n]:,} | "
                f"{c['engine_before'][n]:,.0f} → {c['engine_after'][n]:,.0f} ({fall:,.0f}; "
                f"{(fall - lost) / max(lost, 1) * 100:+.2f} % of the {lost:,} replicas of deleted "
                f"keys it held) | {c['collected'][n]:,} | "
                f"{c['disk_before'][n] / 1e6:.0f} → {c['disk_deleted'][n] / 1e6:.0f} → "
                f"{c['disk_compacted'][n] / 1e6:.0f} MB |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        b.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
