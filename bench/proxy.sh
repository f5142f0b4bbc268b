#!/usr/bin/env bash
# bench/proxy.sh - `oxbus proxy` and HAProxy side by side, in front of the same Oxbus server.
#
# What it does:
#   1. builds the release binary (SKIP_BUILD=1 skips); needs wrk and haproxy (Debian packages)
#   2. starts one Oxbus server (`oxbus quickstart`, 2 workers; its POST /echo is the shared
#      harness's workload: ~200-byte JSON echoed with "ok": true)
#   3. starts HAProxy (one thread) and `oxbus proxy` (one thread) in front of it, configured
#      alike: round-robin, /readyz checks every second, X-Forwarded-For/-Proto/-Port set, a
#      request id added, keep-alive both sides, the same timeouts
#   4. per rep, interleaved: wrk straight to the server ("direct"), through HAProxy, through
#      oxbus proxy; each run records req/s, p50/p99 and the proxy process's CPU time
#   5. prints the medians and the issue's targets:
#        oxbus proxy req/s / HAProxy req/s            >= 1.0
#        added p99 (proxy p99 - direct p99), oxbus    <= HAProxy's
#      and, since the machine is shared and noisy, the paired figure too (each rep's own
#      ratio, the two proxies measured minutes apart; their median) and the CPU ratio
#
# Usage:   bench/proxy.sh
#          REPS=5 DURATION=15 CONNS=64 bench/proxy.sh
# Knobs: REPS [3] DURATION [10] CONNS [32] THREADS (wrk) [1] WARMUP [2] SKIP_BUILD [0]
#        WORKLOAD [post]: post = the harness's POST /echo; get = GET /hello/Ann (no body)
#        OUTDIR [/tmp/oxbus-proxy-bench/<timestamp>]
# Output: a table per run, the medians and ratios; results.csv and logs in $OUTDIR.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OXBUS="$ROOT/target/release/oxbus"
REPS="${REPS:-3}" DURATION="${DURATION:-10}" CONNS="${CONNS:-32}" THREADS="${THREADS:-1}"
WARMUP="${WARMUP:-2}"
OUTDIR="${OUTDIR:-/tmp/oxbus-proxy-bench/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUTDIR"

for tool in wrk haproxy curl; do
  command -v "$tool" >/dev/null || { echo "bench/proxy.sh needs $tool (apt-get install $tool)" >&2; exit 1; }
done
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$ROOT" && cargo build --release -j2 -p oxbus-supervisor)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SPORT=$(free_port); HPORT=$(free_port); PPORT=$(free_port); PSTATS=$(free_port)
TMP="$(mktemp -d /tmp/oxbus-proxy-bench.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

wait_http() { # url what
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null -X POST -H 'content-type: application/json' -d '{"a":1}' "$1" && return 0
    sleep 0.1
  done
  echo "$2 never answered at $1" >&2; exit 1
}

echo "== server on :$SPORT (oxbus quickstart, 2 workers)"
"$OXBUS" quickstart "$TMP/env" --port "$SPORT" --workers 2 --no-proxy >"$OUTDIR/server.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$SPORT/echo" server

cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 75s
  timeout server 60s
  timeout http-request 10s
  timeout http-keep-alive 75s
  option http-keep-alive
  option forwardfor
frontend fe
  bind 127.0.0.1:$HPORT
  unique-id-format %{+X}o%ci%cp%fp%Ts%rt%pid
  unique-id-header X-Request-Id
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Port %[dst_port]
  default_backend servers
backend servers
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  server s1 127.0.0.1:$SPORT check inter 1s
EOF
echo "== HAProxy $(haproxy -v | head -1 | awk '{print $3}') on :$HPORT"
haproxy -f "$TMP/haproxy.cfg" -db >"$OUTDIR/haproxy.log" 2>&1 &
HAPROXY_PID=$!
sleep 0.5
kill -0 "$HAPROXY_PID" 2>/dev/null || { echo "haproxy did not start:" >&2; cat "$OUTDIR/haproxy.log" >&2; exit 1; }
PIDS+=($HAPROXY_PID)

cat >"$TMP/proxy.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PPORT"
stats_listen = "127.0.0.1:$PSTATS"
state_dir = "$TMP/proxy-state"
threads = 1
[upstreams]
servers = ["127.0.0.1:$SPORT"]
[health]
interval_ms = 1000
EOF
echo "== oxbus proxy on :$PPORT"
OXBUS_LOG=warn "$OXBUS" proxy --config "$TMP/proxy.toml" >"$OUTDIR/proxy.log" 2>&1 &
OXPROXY_PID=$!
PIDS+=($OXPROXY_PID)
wait_http "http://127.0.0.1:$HPORT/echo" haproxy
wait_http "http://127.0.0.1:$PPORT/echo" "oxbus proxy"

cpu_ticks() { # pid -> utime+stime in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
TCK=$(getconf CLK_TCK)

# The shared harness's workload: its post.lua (POST /echo, body.json, a RESULT line).
PEERS_HARNESS="${PEERS_HARNESS:-$ROOT/../shared/bench/peers}"
[[ -f "$PEERS_HARNESS/post.lua" ]] || PEERS_HARNESS=/work/shared/bench/peers
[[ -f "$PEERS_HARNESS/post.lua" ]] || { echo "no peer harness (post.lua, body.json) at $PEERS_HARNESS" >&2; exit 1; }
export WRK_BODY="$PEERS_HARNESS/body.json"
LUA="$PEERS_HARNESS/post.lua"
URLPATH=/echo
if [[ "${WORKLOAD:-post}" == get ]]; then
  # The same RESULT line, for GET /hello/Ann: the harness script minus its request.
  sed -e '/^local f = /,/^wrk.headers/d' "$PEERS_HARNESS/post.lua" >"$TMP/get.lua"
  LUA="$TMP/get.lua"
  URLPATH=/hello/Ann
fi

echo "rep,target,rps,p50_ms,p99_ms,errors,proxy_cpu_s,proxy_us_per_req,load1" >"$OUTDIR/results.csv"
run() { # rep target port pid-or-empty
  local rep=$1 target=$2 port=$3 pid=${4:-}
  wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" -s "$LUA" "http://127.0.0.1:$port$URLPATH" >/dev/null 2>&1
  local c0=0 c1=0
  [[ -n "$pid" ]] && c0=$(cpu_ticks "$pid")
  local out
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" -s "$LUA" "http://127.0.0.1:$port$URLPATH")
  [[ -n "$pid" ]] && c1=$(cpu_ticks "$pid")
  echo "$out" >>"$OUTDIR/wrk_raw.txt"
  python3 - "$rep" "$target" "$c0" "$c1" "$TCK" "$out" >>"$OUTDIR/results.csv" <<'PY'
import re, sys, os
rep, target, c0, c1, tck, out = sys.argv[1:7]
r = dict(kv.split("=") for kv in re.search(r"RESULT (.*?) \(", out).group(1).split())
rps, p50, p99 = float(r["rps"]), float(r["p50_ms"]), float(r["p99_ms"])
errs, n = int(r["errors"]), int(r["requests"])
cpu = (int(c1) - int(c0)) / int(tck)
us = cpu / n * 1e6 if n and target != "direct" else 0
load1 = os.getloadavg()[0]
print(f"{rep},{target},{rps:.0f},{p50:.3f},{p99:.3f},{errs},{cpu:.2f},{us:.1f},{load1:.2f}")
PY
  tail -1 "$OUTDIR/results.csv"
}

echo "== $REPS reps x (direct, haproxy, oxbus proxy), wrk -t$THREADS -c$CONNS -d${DURATION}s, ${WORKLOAD:-post} $URLPATH"
echo "rep,target,rps,p50_ms,p99_ms,errors,proxy_cpu_s,proxy_us_per_req,load1"
for rep in $(seq 1 "$REPS"); do
  run "$rep" direct "$SPORT"
  # The two proxies swap places every rep, so neither always runs right after the direct
  # run (or always last, when a noisy neighbour tends to wake up).
  if ((rep % 2)); then
    run "$rep" haproxy "$HPORT" "$HAPROXY_PID"
    run "$rep" oxbus_proxy "$PPORT" "$OXPROXY_PID"
  else
    run "$rep" oxbus_proxy "$PPORT" "$OXPROXY_PID"
    run "$rep" haproxy "$HPORT" "$HAPROXY_PID"
  fi
done

python3 - "$OUTDIR/results.csv" <<'PY' | tee "$OUTDIR/summary.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
med = {}
for t in ("direct", "haproxy", "oxbus_proxy"):
    rs = [r for r in rows if r["target"] == t]
    med[t] = {k: statistics.median(float(r[k]) for r in rs)
              for k in ("rps", "p50_ms", "p99_ms", "errors", "proxy_us_per_req")}
print()
print(f"{'median':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'proxy CPU µs/req':>17}")
for t, m in med.items():
    print(f"{t:<12} {m['rps']:>8.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['errors']:>7.0f} {m['proxy_us_per_req']:>17.1f}")
ratio = med["oxbus_proxy"]["rps"] / med["haproxy"]["rps"]
add_ox = med["oxbus_proxy"]["p99_ms"] - med["direct"]["p99_ms"]
add_ha = med["haproxy"]["p99_ms"] - med["direct"]["p99_ms"]
# Per rep too: the machine is shared, so a ratio within one rep is the fairer figure.
per_rep = []
for rep in sorted({r["rep"] for r in rows}, key=int):
    by = {r["target"]: r for r in rows if r["rep"] == rep}
    per_rep.append(float(by["oxbus_proxy"]["rps"]) / float(by["haproxy"]["rps"]))
paired = statistics.median(per_rep)
cpu = med["oxbus_proxy"]["proxy_us_per_req"] / med["haproxy"]["proxy_us_per_req"]
print()
print(f"req/s oxbus proxy / HAProxy: {ratio:.2f} (per rep: {', '.join(f'{x:.2f}' for x in per_rep)}; median of the per-rep ratios {paired:.2f})  target >= 1.0: {'PASS' if ratio >= 1.0 else 'MISS'}")
print(f"proxy CPU per request oxbus / HAProxy: {cpu:.2f}")
print(f"added p99: oxbus proxy {add_ox:+.2f} ms, HAProxy {add_ha:+.2f} ms  target oxbus <= HAProxy: {'PASS' if add_ox <= add_ha else 'MISS'}")
PY
echo "== files in $OUTDIR"
