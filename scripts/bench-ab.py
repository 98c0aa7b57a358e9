#!/usr/bin/env python3
"""A/B comparison of two cairn binaries on the 4-node cluster, robust to a drifting machine.

scripts/bench.py --baseline runs one binary's setup, then the other's: on a machine whose disk
and CPU drift over minutes (these do: one shared disk's fdatasync rate was seen swinging from
244/s to 6.9k/s between runs), that order biases the ratio. This driver runs bench.py ROUNDS
times, swapping which binary goes first every round, and reports per point the median over the
rounds of the per-round ratio B/A (above 1: B is faster), with the per-round ratios, so a
reader can see the spread. Every bench.py round measures both binaries back to back.

    scripts/bench-ab.py --a OLD_CAIRN --b NEW_CAIRN [--rounds 6] [--out FILE]

Defaults measure 4 KiB put and get at c16 and c64 with --sync always and never (the points issue
12 asks about); other bench.py flags can be passed after `--`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def round_results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)["points"]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="the baseline cairn binary")
    ap.add_argument("--b", required=True, help="the cairn binary under test")
    ap.add_argument("--a-label", default="A")
    ap.add_argument("--b-label", default="B")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--setups", default="always,never")
    ap.add_argument("--workloads", default="0,1")
    ap.add_argument("--concurrency", default="16,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="target/bench-ab")
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    ap.add_argument("rest", nargs="*", help="more bench.py flags (after --)")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    a, b = os.path.abspath(args.a), os.path.abspath(args.b)
    ratios = {}  # (setup, workload, c) -> [b/a per round]
    medians = {}  # (setup, workload, c) -> {"A": [...], "B": [...]}
    started = time.monotonic()
    for r in range(args.rounds):
        first_is_b = r % 2 == 0
        main_bin, base_bin = (b, a) if first_is_b else (a, b)
        workdir = os.path.join(args.workdir, f"round{r}")
        cmd = [sys.executable, os.path.join(here, "bench.py"), "--cairn", main_bin,
               "--baseline", base_bin, "--baseline-label", "other", "--setups", args.setups,
               "--workloads", args.workloads, "--concurrency", args.concurrency,
               "--repeats", str(args.repeats), "--objects", "0", "--workdir", workdir,
               "--out", os.path.join(workdir, "bench.md")] + args.rest
        print(f"[bench-ab] round {r + 1}/{args.rounds}: {'B' if first_is_b else 'A'} first",
              flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        points = round_results(workdir)
        main_label, base_label = ("B", "A") if first_is_b else ("A", "B")
        by = {}
        for p in points:
            setup = p["setup"]
            who = base_label if setup.endswith("(other)") else main_label
            setup = setup.replace(" (other)", "")
            by[(setup, p["workload"], p["c"], who)] = p["s"]["median"]
        for (setup, wl, c, who), v in by.items():
            medians.setdefault((setup, wl, c), {"A": [], "B": []})[who].append(v)
            if who == "B" and (setup, wl, c, "A") in by:
                ratios.setdefault((setup, wl, c), []).append(v / by[(setup, wl, c, "A")])
    lines = [
        f"A = {args.a_label}, B = {args.b_label}; {args.rounds} rounds of scripts/bench.py "
        f"(each: both binaries back to back, {args.repeats} runs of 1.5 s per point), the "
        f"order swapped every round; {time.monotonic() - started:.0f} s in all.",
        "",
        "| setup | workload | c | A ops/s (median of rounds) | B ops/s (median of rounds) "
        "| B/A median of per-round ratios | per-round B/A |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in sorted(ratios):
        setup, wl, c = key
        rs = ratios[key]
        m = medians[key]
        lines.append(
            f"| {setup} | {wl} | {c} | {statistics.median(m['A']):,.0f} | "
            f"{statistics.median(m['B']):,.0f} | {statistics.median(rs):.2f} | "
            f"{', '.join(f'{x:.2f}' for x in rs)} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
