#!/usr/bin/env bash
# bench/metrics.sh - what the Prometheus metrics cost (issue 18), two parts:
#
#   (a) echo throughput with metrics.enabled = true vs false: one release binary, two
#       `oxbus quickstart` environments (the second started with OXBUS_METRICS_ENABLED=false),
#       the servers pinned to CPU $SERVER_CPU and wrk to CPU $WRK_CPU as run.sh's pinned mode,
#       POST /echo with the harness's body (post.lua, body.json), runs alternating on/off
#       (the order flipped every rep). Reports the median req/s of each, the cost in %, and
#       the server process's CPU per request. Target: cost <= 2 %.
#   (b) /metrics scrape time with 1,000 services deployed (one module of 1,000 services),
#       a channel for each (named, so one set of per-channel series each) and each called
#       once through its channel, then $SCRAPES scrapes over one keep-alive connection:
#       median and p99 of the wall time of a full response, and the exposition's size.
#       Target: p99 <= 20 ms. (Per-service series, once merged, are in what it measures.)
#
# Usage:   bench/metrics.sh
#          SKIP_BUILD=1 REPS=5 DURATION=10 SCRAPES=200 bench/metrics.sh
#          PART=a bench/metrics.sh    (or PART=b: one part only)
#
# Knobs (defaults in brackets): REPS [4]  DURATION [10]  WARMUP [2]  CONNS [64]  THREADS [2]
#   WORKERS [2]  SERVER_CPU [1]  WRK_CPU [0]  SERVICES [1000]  SCRAPES [200]  SKIP_BUILD [0]
#   PEERS_HARNESS [<repo>/../shared/bench/peers]  OUTDIR [/tmp/oxbus-metrics-bench/<timestamp>]
# Output: the table and summary on stdout; results.csv, summary.txt, scrape.txt and the
# server logs in $OUTDIR.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OXBUS="$ROOT/target/release/oxbus"
REPS="${REPS:-4}" DURATION="${DURATION:-10}" WARMUP="${WARMUP:-2}" CONNS="${CONNS:-64}"
THREADS="${THREADS:-2}" WORKERS="${WORKERS:-2}" SERVER_CPU="${SERVER_CPU:-1}" WRK_CPU="${WRK_CPU:-0}"
SERVICES="${SERVICES:-1000}" SCRAPES="${SCRAPES:-200}" PART="${PART:-ab}"
OUTDIR="${OUTDIR:-/tmp/oxbus-metrics-bench/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUTDIR"
command -v wrk >/dev/null || { echo "bench/metrics.sh needs wrk (apt-get install wrk)" >&2; exit 1; }
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  echo "== building $OXBUS"
  (cd "$ROOT" && cargo build --release -j2 -p oxbus-supervisor)
fi
[[ -x "$OXBUS" ]] || { echo "no binary at $OXBUS" >&2; exit 1; }
PEERS_HARNESS="${PEERS_HARNESS:-$ROOT/../shared/bench/peers}"
[[ -f "$PEERS_HARNESS/post.lua" ]] || PEERS_HARNESS=/work/shared/bench/peers
[[ -f "$PEERS_HARNESS/post.lua" ]] || { echo "no peer harness (post.lua, body.json) at $PEERS_HARNESS" >&2; exit 1; }
export WRK_BODY="$PEERS_HARNESS/body.json"
LUA="$PEERS_HARNESS/post.lua"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
TMP="$(mktemp -d /tmp/oxbus-metrics-bench.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# start NAME PORT [VAR=value...]: a quickstart environment in $TMP/NAME, pinned; sets PID_<NAME>.
start() {
  local name=$1 port=$2; shift 2
  env "$@" taskset -c "$SERVER_CPU" "$OXBUS" quickstart "$TMP/$name" --port "$port" \
    --workers "$WORKERS" --no-proxy >"$OUTDIR/$name.server.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  printf -v "PID_$name" '%s' "$pid"
  for _ in $(seq 1 600); do
    if curl -sf -o /dev/null "http://127.0.0.1:$port/readyz"; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { echo "server $name exited; see $OUTDIR/$name.server.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "server $name not ready in 60 s; see $OUTDIR/$name.server.log" >&2
  exit 1
}
admin_url() { echo "http://$(awk -F'"' '/^\[admin\]/{a=1} a && /^listen/{print $2; exit}' "$TMP/$1/server.toml")"; }
echo "== oxbus $("$OXBUS" --version 2>/dev/null | awk '{print $2}') ($(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo 'no commit')); results in $OUTDIR"

# ---------- (a) throughput, metrics on vs off ----------
if [[ "$PART" == *a* ]]; then
  PORT_ON=$(free_port); start on "$PORT_ON"
  PORT_OFF=$(free_port); start off "$PORT_OFF" OXBUS_METRICS_ENABLED=false
  code=$(curl -s -o /dev/null -w '%{http_code}' "$(admin_url off)/metrics")
  [[ "$code" == 404 ]] || { echo "the 'off' server's /metrics answered $code, not 404" >&2; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' "$(admin_url on)/metrics")
  [[ "$code" == 200 ]] || { echo "the 'on' server's /metrics answered $code, not 200" >&2; exit 1; }
  ticks() { # CPU ticks of the server process and its workers
    local t=0 p
    for p in "$1" $(pgrep -P "$1"); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$t"
  }
  srv_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  run() { # rep name port pid
    local out c0 c1 s0 s1
    taskset -c "$WRK_CPU" wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" -s "$LUA" "http://127.0.0.1:$3/echo" >/dev/null
    c0=$(ticks "$4"); s0=$(srv_ticks "$4")
    out=$(taskset -c "$WRK_CPU" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 5s -s "$LUA" "http://127.0.0.1:$3/echo" | grep RESULT)
    c1=$(ticks "$4"); s1=$(srv_ticks "$4")
    python3 - "$1" "$2" "$out" "$c0" "$c1" "$s0" "$s1" "$(getconf CLK_TCK)" <<'PY' | tee -a "$OUTDIR/results.csv"
import re, sys
rep, name, out, c0, c1, s0, s1, tck = sys.argv[1:9]
r = dict(kv.split("=") for kv in re.search(r"RESULT (.*?) \(", out).group(1).split())
n = int(r["requests"])
us = lambda a, b: (int(b) - int(a)) / int(tck) / n * 1e6
print(f"{rep},{name},{float(r['rps']):.0f},{r['p50_ms']},{r['p99_ms']},{r['errors']},{us(s0, s1):.1f},{us(c0, c1):.1f}")
PY
  }
  echo "rep,metrics,rps,p50_ms,p99_ms,errors,server_us_per_req,total_us_per_req" | tee "$OUTDIR/results.csv"
  for rep in $(seq 1 "$REPS"); do
    if (( rep % 2 )); then order="on off"; else order="off on"; fi
    for name in $order; do
      if [[ $name == on ]]; then run "$rep" on "$PORT_ON" "$PID_on"; else run "$rep" off "$PORT_OFF" "$PID_off"; fi
    done
  done
  python3 - "$OUTDIR/results.csv" <<'PY' | tee "$OUTDIR/summary.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
by = lambda t: [r for r in rows if r["metrics"] == t]
med = lambda t, k: statistics.median(float(r[k]) for r in by(t))
errors = sum(int(r["errors"]) for r in rows)
on, off = med("on", "rps"), med("off", "rps")
print(f"\n(a) echo, median of {len(by('on'))} runs each: metrics on {on:.0f} req/s, off {off:.0f} req/s "
      f"(errors: {errors})")
print(f"    cost {100 * (off - on) / off:+.2f} % of req/s (target <= 2 %); per rep: "
      + ", ".join(f"{100 * (float(b['rps']) - float(a['rps'])) / float(b['rps']):+.1f}" for a, b in zip(by("on"), by("off"))))
print(f"    server process CPU per request: on {med('on', 'server_us_per_req'):.1f} us, "
      f"off {med('off', 'server_us_per_req'):.1f} us; with workers: on {med('on', 'total_us_per_req'):.1f} us, "
      f"off {med('off', 'total_us_per_req'):.1f} us")
PY
  for p in "$PID_on" "$PID_off"; do kill "$p" 2>/dev/null || true; done
  wait "$PID_on" "$PID_off" 2>/dev/null || true
fi

# ---------- (b) scrape time with $SERVICES services ----------
if [[ "$PART" == *b* ]]; then
  PORT_B=$(free_port); start many "$PORT_B"
  python3 - "$PORT_B" "$(admin_url many)" "$(cat "$TMP/many/admin.token")" "$SERVICES" "$SCRAPES" <<'PY' | tee "$OUTDIR/scrape.txt"
import http.client, json, statistics, sys, time, urllib.parse
port, admin, token, n, scrapes = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
a = urllib.parse.urlsplit(admin)
conn = http.client.HTTPConnection(a.hostname, a.port, timeout=120)
def call(method, path, body=None, auth=True):
    h = {"Content-Type": "application/json"}
    if auth:
        h["Authorization"] = "Bearer " + token
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=h)
    r = conn.getresponse()
    data = r.read()
    if r.status >= 300:
        sys.exit(f"{method} {path}: {r.status} {data[:300]!r}")
    return data
src = ["from oxbus import Service\n"]
for i in range(n):
    src.append(f"\nclass S{i}(Service):\n    name = 'bench.s{i:04d}'\n\n    def handle(self):\n"
               f"        self.response.payload = {{'i': {i}}}\n")
t = time.perf_counter()
call("POST", "/v1/modules", {"modules": [{"name": "bench_many", "source": "".join(src)}]})
deploy_s = time.perf_counter() - t
t = time.perf_counter()
for i in range(n):
    call("POST", "/v1/channels", {"name": f"s{i:04d}", "url_path": f"/s/{i:04d}",
                                  "methods": ["GET"], "service": f"bench.s{i:04d}"})
channels_s = time.perf_counter() - t
# Each service called once, through its channel (HTTP listener).
h = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
for i in range(n):
    h.request("GET", f"/s/{i:04d}")
    r = h.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"GET /s/{i:04d}: {r.status}")
times, size = [], 0
for k in range(scrapes + 10):
    t = time.perf_counter()
    data = call("GET", "/metrics", auth=False)
    dt = (time.perf_counter() - t) * 1000
    if k >= 10:  # warm-up
        times.append(dt)
    size = len(data)
text = data.decode()
assert text.endswith("# EOF\n"), text[-200:]
samples = sum(1 for l in text.splitlines() if l and not l.startswith("#"))
channels = text.count('oxbus_http_request_duration_seconds_count{channel="s')
times.sort()
p99 = times[min(len(times) - 1, int(round(0.99 * len(times))) - 1)]
print(f"\n(b) {n} services deployed ({deploy_s:.1f} s), {n} channels ({channels_s:.1f} s), each called once")
print(f"    /metrics: {size / 1024:.0f} KiB, {samples} samples, {channels} channels with series")
print(f"    scrape time over {len(times)} scrapes: median {statistics.median(times):.2f} ms, "
      f"p99 {p99:.2f} ms, max {times[-1]:.2f} ms (target p99 <= 20 ms)")
PY
fi
echo "results: $OUTDIR"
