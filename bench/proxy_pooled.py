#!/usr/bin/env python3
"""Pools the reps of several bench/proxy.sh runs (their results.csv) into paired figures.

The machine is shared and noisy: one run's medians swing by ±10 % between runs of the same
code. Each rep measures direct, HAProxy and the oxbus proxy minutes apart, so a rep's own
ratio is a paired comparison; pooling the reps of several runs gives the steadier figure.

Usage: bench/proxy_pooled.py OUTDIR [OUTDIR ...]   (the directories bench/proxy.sh printed)
"""
import csv
import statistics
import sys


def main(dirs):
    ratios, ox_add, ha_add, cpu = [], [], [], []
    for d in dirs:
        rows = list(csv.DictReader(open(f"{d}/results.csv")))
        for rep in sorted({r["rep"] for r in rows}, key=int):
            by = {r["target"]: r for r in rows if r["rep"] == rep}
            if not all(t in by for t in ("direct", "haproxy", "oxbus_proxy")):
                continue
            ratios.append(float(by["oxbus_proxy"]["rps"]) / float(by["haproxy"]["rps"]))
            direct = float(by["direct"]["p99_ms"])
            ox_add.append(float(by["oxbus_proxy"]["p99_ms"]) - direct)
            ha_add.append(float(by["haproxy"]["p99_ms"]) - direct)
            cpu.append(float(by["oxbus_proxy"]["proxy_us_per_req"])
                       / float(by["haproxy"]["proxy_us_per_req"]))
    if not ratios:
        sys.exit("no complete reps in " + " ".join(dirs))
    n = len(ratios)
    print(f"{n} paired reps from {len(dirs)} runs")
    print(f"req/s oxbus / HAProxy: median {statistics.median(ratios):.2f}, "
          f"range {min(ratios):.2f}-{max(ratios):.2f}, >= 1.0 in {sum(r >= 1 for r in ratios)} of {n}")
    wins = sum(o <= h for o, h in zip(ox_add, ha_add))
    print(f"added p99: oxbus median {statistics.median(ox_add):+.2f} ms, "
          f"HAProxy median {statistics.median(ha_add):+.2f} ms, oxbus <= HAProxy in {wins} of {n}")
    print(f"proxy CPU per request oxbus / HAProxy: median {statistics.median(cpu):.2f}, "
          f"range {min(cpu):.2f}-{max(cpu):.2f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
