#!/usr/bin/env python3
"""Large-object benchmark (issue 18), with the disk's own figures and the baseline in one run.

On this machine, in one run:

1. the disk: sequential write (1 MiB blocks, timed to fdatasync) and read (after
   posix_fadvise(DONTNEED)) of --disk-mib MiB in the work directory (scripts/bench.py);
2. a 4-node local cluster, N=3, R=W=2, --sync always, of the binary under test:
   - 1 GiB PUTs (fresh keys) at concurrency 1 and 4, and 1 GiB GETs of prefilled keys at
     concurrency 1 and 4, in MB/s of object bytes, against the targets: PUT >= 1/3 of (disk
     write / 3) (three replicas share one disk here), GET >= 1/2 of the disk's read bandwidth;
   - memory: 8 clients uploading 1 GiB objects and 8 clients downloading 1 GiB objects at the
     same time; each node's RSS (anonymous and file-mapped) sampled every 0.2 s, and its VmHWM
     (the peak since it started, which covers every phase before), against 256 MiB;
3. 1 MiB PUTs at concurrency 16 (fresh keys), --repeats times, alternating between the binary
   under test and --baseline (the commit before this issue: objects inline, no chunks), each on a
   fresh cluster; the ratio of the medians against the target of 2x.

    scripts/bench-large.py --cairn target/release/cairn --baseline /tmp/base/cairn \
        [--repeats 3] [--duration 20] [--out docs/bench-large.md]

Processes are stopped by the PID this script started; traffic stays on 127.0.0.1; every wait and
load loop is bounded. The report is markdown (--out) and JSON (workdir/results.json).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as b  # noqa: E402  (scripts/bench.py: processes, generator, machine facts)

GIB = "1GiB"


def start(cairn, workdir, args, label):
    b.settle()
    return b.start_cluster(cairn, label, workdir, 4, 3, 2, 2, "always",
                           args.http_base, args.p2p_base)


def run(cairn, setup, workload, size, conc, ops=None, duration=None, keys=None, prefill=False,
        bucket="large", warmup=0):
    cmd = [cairn, "bench", "--format", "json", "--quiet", "--bucket", bucket,
           "--workload", workload, "--size", size, "--concurrency", str(conc),
           "--warmup", f"{warmup}s", f"--prefill={'true' if prefill else 'false'}"]
    cmd += ["--duration", f"{duration}s"] if duration else ["--duration", "3600s"]
    if ops is not None:
        cmd += ["--ops", str(ops)]
    if keys is not None:
        cmd += ["--keys", str(keys)]
    for e in setup.endpoints:
        cmd += ["--endpoint", e]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"cairn bench failed ({res.returncode}): {res.stderr.strip()[-600:]}")
    out = json.loads(res.stdout)
    errors = sum(out["errors"].values())
    b.log(f"  {workload} {size} c{conc}: {out['mb_per_s']:.1f} MB/s, {out['ops_ok']} ok, "
          f"{errors} errors")
    return out


class Sampler:
    """Samples every node's RSS (anonymous and file) every 0.2 s until stopped; bounded by the
    phase it watches."""

    def __init__(self, setup):
        self.setup = setup
        self.peak = {p.name: {"rss_kb": 0, "anon_kb": 0, "file_kb": 0} for p in setup.procs}
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop_flag.is_set():
            for p in self.setup.procs:
                pk = self.peak[p.name]
                pk["rss_kb"] = max(pk["rss_kb"], p.status_kb("VmRSS"))
                pk["anon_kb"] = max(pk["anon_kb"], p.status_kb("RssAnon"))
                pk["file_kb"] = max(pk["file_kb"], p.status_kb("RssFile"))
            time.sleep(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(timeout=5)


def large_phase(args, workdir):
    out = {"put_c1_runs": [], "put_c4_runs": []}
    # Repeated: this machine's disk and CPU vary a lot from minute to minute; the median of the
    # runs, each of 2 GiB (c1) or 4 GiB (c4), is reported with its spread. A fresh cluster per
    # repeat: 1 GiB objects are 3 GiB each on this one disk.
    for i in range(args.repeats):
        where = os.path.join(workdir, f"put-{i}")
        setup = start(args.cairn, where, args, "4 nodes, 1 GiB puts")
        try:
            out["put_c1_runs"].append(run(args.cairn, setup, "put", GIB, 1, ops=2))
            out["put_c4_runs"].append(run(args.cairn, setup, "put", GIB, 4, ops=4))
        finally:
            setup.stop()
            shutil.rmtree(where, ignore_errors=True)
    for k in ("put_c1", "put_c4"):
        runs = sorted(out[k + "_runs"], key=lambda x: x["mb_per_s"])
        out[k] = runs[len(runs) // 2]
    out["disk_after_puts"] = b.disk_bandwidth(workdir, mib=args.disk_mib)
    setup = start(args.cairn, os.path.join(workdir, "large"), args, "4 nodes, 1 GiB gets")
    try:
        # 4 keys of 1 GiB, prefilled once (bucket "large-get"), then read.
        out["get_c1"] = run(args.cairn, setup, "get", GIB, 1, ops=4, keys=4, prefill=True,
                            bucket="large-get")
        out["get_c4"] = run(args.cairn, setup, "get", GIB, 4, ops=8, keys=4, bucket="large-get")
    finally:
        setup.stop()
    # Memory, on a fresh cluster (disk space: 1 GiB objects are 3 GiB each on this one disk).
    shutil.rmtree(os.path.join(workdir, "large"), ignore_errors=True)
    setup = start(args.cairn, os.path.join(workdir, "memory"), args, "4 nodes, memory")
    try:
        run(args.cairn, setup, "get", GIB, 1, ops=1, keys=4, prefill=True, bucket="large-get")
        # 8 uploaders and 8 downloaders at once.
        with Sampler(setup) as s:
            results = {}

            def go(name, *a, **kw):
                results[name] = run(args.cairn, setup, *a, **kw)

            t1 = threading.Thread(target=go, args=("put", "put", GIB, 8), kwargs={"ops": 8})
            t2 = threading.Thread(target=go, args=("get", "get", GIB, 8),
                                  kwargs={"ops": 16, "keys": 4, "bucket": "large-get"})
            t1.start()
            t2.start()
            t1.join()
            t2.join()
        out["mixed_8_8"] = results
        out["rss_sampled"] = s.peak
        out["vm_hwm_kb"] = {p.name: p.status_kb("VmHWM") for p in setup.procs}
        out["slow_downs"] = {
            u: b.http_json(u + "/cluster")["chunks"]["slow_downs"] for u in setup.endpoints}
    finally:
        setup.stop()
        shutil.rmtree(os.path.join(workdir, "memory"), ignore_errors=True)
    return out


def small_phase(args, workdir):
    runs = {"test": [], "baseline": []}
    for i in range(args.repeats):
        for which, binary in (("test", args.cairn), ("baseline", args.baseline)):
            setup = start(binary, os.path.join(workdir, f"small-{which}-{i}"), args,
                          f"4 nodes ({which})")
            try:
                runs[which].append(run(args.cairn, setup, "put", "1MiB", 16,
                                       duration=args.duration, warmup=2, bucket="small"))
            finally:
                setup.stop()
                shutil.rmtree(os.path.join(workdir, f"small-{which}-{i}"), ignore_errors=True)
    return runs


def render(results, facts, disk, args):
    L = results["large"]
    w, r = disk["write_mb_s"], disk["read_mb_s"]
    put_target, get_target = w / 3 / 3, r / 2
    hwm = max(L["vm_hwm_kb"].values()) / 1024
    sampled = max(v["rss_kb"] for v in L["rss_sampled"].values()) / 1024
    med = {k: statistics.median(x["mb_per_s"] for x in v) for k, v in results["small"].items()}
    ratio = med["test"] / med["baseline"] if med["baseline"] else float("nan")

    def ok(c):
        return "**met**" if c else "**not met**"

    lines = [
        "# Large objects: benchmark (issue 18)",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `scripts/bench-large.py` "
        f"on {facts['cores']} cores ({facts['cpu']}), {facts['memory_gib']} GiB RAM, kernel "
        f"{facts['kernel']}. 4-node local cluster, N=3, R=W=2, `--sync always`; every node, "
        "every client and the disk are on this one machine (three replicas share one disk).",
        "",
        "## The disk (same run)",
        "",
        f"Sequential write, 1 MiB blocks, timed to fdatasync: **{w:.0f} MB/s**; sequential read "
        f"after dropping the file's cache: **{r:.0f} MB/s** ({args.disk_mib} MiB).",
        "",
        "## 1 GiB objects",
        "",
        "| operation | concurrency | MB/s (object bytes) | target | |",
        "|---|---|---|---|---|",
    ]
    for key, label, tgt in (("put_c1", "PUT", put_target), ("put_c4", "PUT", put_target),
                            ("get_c1", "GET", get_target), ("get_c4", "GET", get_target)):
        x = L[key]
        conc = key.split("_c")[1]
        spread = ""
        if key + "_runs" in L:
            xs = sorted(r["mb_per_s"] for r in L[key + "_runs"])
            spread = f" (median of {len(xs)}: {', '.join(f'{v:.0f}' for v in xs)})"
        lines.append(f"| {label} | {conc} | {x['mb_per_s']:.0f}{spread} | >= {tgt:.0f} | "
                     f"{ok(x['mb_per_s'] >= tgt)} |")
    da = L.get("disk_after_puts")
    if da:
        lines += ["", f"The disk measured again right after the PUTs: write "
                      f"{da['write_mb_s']:.0f} MB/s, read {da['read_mb_s']:.0f} MB/s (the PUT "
                      f"target against it: >= {da['write_mb_s'] / 9:.0f})."]
    lines += [
        "",
        "Targets: PUT >= 1/3 of (disk write / 3), GET >= 1/2 of the disk's read bandwidth. GETs "
        "read objects written moments before, so most chunks come from the page cache; the "
        "coordinator of a GET holds the object itself in 3 of 4 cases and fetches the chunks from "
        "a replica otherwise.",
        "",
        "## Memory: 8 clients uploading and 8 downloading 1 GiB objects at once",
        "",
        f"Uploads: {L['mixed_8_8']['put']['mb_per_s']:.0f} MB/s, downloads: "
        f"{L['mixed_8_8']['get']['mb_per_s']:.0f} MB/s; `503 SlowDown` answers per node: "
        f"{L['slow_downs']}.",
        "",
        "| node | peak RSS sampled (MiB) | of which anonymous | file-mapped | VmHWM over the whole run (MiB) |",
        "|---|---|---|---|---|",
    ]
    for name, v in L["rss_sampled"].items():
        lines.append(f"| {name} | {v['rss_kb'] / 1024:.0f} | {v['anon_kb'] / 1024:.0f} | "
                     f"{v['file_kb'] / 1024:.0f} | {L['vm_hwm_kb'][name] / 1024:.0f} |")
    lines += [
        "",
        f"Largest peak: {sampled:.0f} MiB sampled, {hwm:.0f} MiB VmHWM (every phase above "
        f"included); target <= 256 MiB: {ok(hwm <= 256)}.",
        "",
        "## 1 MiB PUTs at concurrency 16, against the baseline",
        "",
        f"Baseline: `{args.baseline_label}` (objects inline in the sibling set). Each run on a "
        f"fresh cluster, {args.duration} s after a 2 s warm-up, alternating, {args.repeats} "
        "runs each.",
        "",
        "| binary | MB/s per run | median |",
        "|---|---|---|",
    ]
    for which in ("baseline", "test"):
        xs = ", ".join(f"{x['mb_per_s']:.0f}" for x in results["small"][which])
        lines.append(f"| {which} | {xs} | {med[which]:.0f} |")
    lines += ["", f"Ratio of medians: **{ratio:.2f}x** (target >= 2x: {ok(ratio >= 2)}).", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cairn", default="target/release/cairn")
    ap.add_argument("--baseline", required=True, help="cairn binary of the baseline commit")
    ap.add_argument("--baseline-label", default="fc2f80a")
    ap.add_argument("--workdir", default="target/bench-large")
    ap.add_argument("--out", default="docs/bench-large.md")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--disk-mib", type=int, default=1024)
    ap.add_argument("--http-base", type=int, default=9381)
    ap.add_argument("--p2p-base", type=int, default=9481)
    ap.add_argument("--skip-small", action="store_true", help="only the 1 GiB phases")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    facts = b.machine()
    b.settle()
    disk = b.disk_bandwidth(args.workdir, mib=args.disk_mib)
    b.log(f"disk: write {disk['write_mb_s']:.0f} MB/s, read {disk['read_mb_s']:.0f} MB/s")
    results = {"disk": disk, "machine": facts}
    results["large"] = large_phase(args, args.workdir)
    results["small"] = {"test": [], "baseline": []} if args.skip_small else small_phase(
        args, args.workdir)
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if not args.skip_small:
        report = render(results, facts, disk, args)
        with open(args.out, "w") as f:
            f.write(report + "\n")
        print(report)
    else:
        print(json.dumps(results["large"], indent=1)[:4000])


if __name__ == "__main__":
    main()
