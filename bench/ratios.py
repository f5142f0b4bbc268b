#!/usr/bin/env python3
"""Oxbus against the issue's targets, from run_peers.sh results CSV(s).

Usage: bench/ratios.py results.csv [more.csv ...]

Per mode (pinned / unpinned), medians over the repetitions:
    Oxbus req/s / granian_wsgi req/s      target >= 1.0
    Oxbus req/s / gunicorn_gevent req/s   target >= 5
    Oxbus p99 vs granian_wsgi p99         target: Oxbus p99 <= Granian p99 (ratio <= 1.0)
plus the server CPU cost per request (server CPU-s / requests, median over runs) of Oxbus,
Granian and the Rust ceiling, which shows where the throughput goes, and the errors (wrk's
connect/read/write/timeout errors plus non-2xx answers) summed over the runs.
Env: OXBUS (peer name, default oxbus), GRANIAN (granian_wsgi), GEVENT (gunicorn_gevent).
Exit code 0 always: this reports, it does not gate.
"""
import csv
import os
import statistics as st
import sys
from collections import defaultdict

OX = os.environ.get("OXBUS", "oxbus")
GR = os.environ.get("GRANIAN", "granian_wsgi")
GE = os.environ.get("GEVENT", "gunicorn_gevent")
CEIL = os.environ.get("CEILING", "ceiling_rust")


def main(paths):
    rows = []
    for p in paths:
        with open(p) as f:
            rows += list(csv.DictReader(f))
    if not rows:
        sys.exit("no rows")
    g = defaultdict(list)
    for r in rows:
        g[(r["peer"], r["mode"])].append(r)

    def med(peer, mode, key):
        rs = g.get((peer, mode))
        return st.median(float(r[key]) for r in rs) if rs else None

    def us_per_req(peer, mode):
        rs = [r for r in g.get((peer, mode), []) if float(r["requests"]) > 0]
        return st.median(1e6 * float(r["srv_cpu_s"]) / float(r["requests"]) for r in rs) if rs else None

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    modes = sorted({m for _, m in g})
    print("targets (median over reps; PASS/MISS against the issue's target)")
    print(f"{'mode':9s} {'metric':38s} {'oxbus':>9s} {'peer':>9s} {'ratio':>7s} {'target':>7s} result")
    for mode in modes:
        ox_rps, gr_rps, ge_rps = (med(p, mode, "rps") for p in (OX, GR, GE))
        ox_p99, gr_p99 = med(OX, mode, "p99_ms"), med(GR, mode, "p99_ms")
        checks = [
            (f"req/s / {GR}", ox_rps, gr_rps, "ge", 1.0, ".0f"),
            (f"req/s / {GE}", ox_rps, ge_rps, "ge", 5.0, ".0f"),
            (f"p99 ms vs {GR} (lower=better)", ox_p99, gr_p99, "le", 1.0, ".2f"),
        ]
        for name, a, b, op, target, spec in checks:
            ratio = a / b if (a is not None and b) else None
            if ratio is None:
                res = "n/a"
            else:
                ok = ratio >= target if op == "ge" else ratio <= target
                res = "PASS" if ok else "MISS"
            tgt = (">=" if op == "ge" else "<=") + f"{target:g}"
            print(f"{mode:9s} {name:38s} {fmt(a, spec):>9s} {fmt(b, spec):>9s} {fmt(ratio, '.3f'):>7s} {tgt:>7s} {res}")
    print()
    print("server CPU per request (median over runs; all processes of the server's session)")
    print(f"{'mode':9s} {'peer':16s} {'us CPU/req':>10s} {'srv CPU-s':>9s} {'req/s':>9s} {'other CPU-s':>11s} {'errors':>7s}")
    for mode in modes:
        for p in (OX, GR, GE, CEIL):
            if (p, mode) not in g:
                continue
            errs = sum(int(float(r["errors"])) for r in g[(p, mode)])
            print(f"{mode:9s} {p:16s} {fmt(us_per_req(p, mode), '.1f'):>10s} "
                  f"{fmt(med(p, mode, 'srv_cpu_s'), '.2f'):>9s} {fmt(med(p, mode, 'rps'), '.0f'):>9s} "
                  f"{fmt(med(p, mode, 'other_cpu_s'), '.2f'):>11s} {errs:7d}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
