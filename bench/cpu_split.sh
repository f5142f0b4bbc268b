#!/usr/bin/env bash
# bench/cpu_split.sh - where Oxbus's CPU goes under the peer workload: the Rust server process
# vs its Python workers, in CPU µs per request, plus context switches per request.
#
# Starts `oxbus quickstart <tmp env> --port $PORT --workers $WORKERS` (pinned to CPU 1 with
# MODE=pinned, as run_peers.sh does; wrk then on CPU 0), checks POST /echo, warms up 2 s, runs
# wrk (64 connections, 2 threads, the harness's post.lua and body.json) for DURATION s and reads
# /proc/<pid>/stat and /status of the server and of each worker before and after.
#
# Usage:  bench/cpu_split.sh                     MODE=unpinned DURATION=15 bench/cpu_split.sh
# Knobs:  MODE [pinned]  DURATION [10]  WORKERS [2]  CONNS [64]  PORT [8118]  SKIP_BUILD [0]
#         PEERS_HARNESS [<repo>/../shared/bench/peers] (for post.lua and body.json)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PEERS_HARNESS="${PEERS_HARNESS:-$ROOT/../shared/bench/peers}"
[[ -d "$PEERS_HARNESS" ]] || PEERS_HARNESS=/work/shared/bench/peers
OXBUS="$ROOT/target/release/oxbus"
MODE="${MODE:-pinned}"; DURATION="${DURATION:-10}"; WORKERS="${WORKERS:-2}"
CONNS="${CONNS:-64}"; PORT="${PORT:-8118}"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then (cd "$ROOT" && cargo build --release -j2 -p oxbus-supervisor); fi

TMP="$(mktemp -d /tmp/oxbus-cpusplit.XXXXXX)"
SRV=""
cleanup() { [[ -n "$SRV" ]] && kill -TERM "$SRV" 2>/dev/null && wait "$SRV" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
srv_pre=(); wrk_pre=()
[[ "$MODE" == pinned ]] && srv_pre=(taskset -c 1) && wrk_pre=(taskset -c 0)
"${srv_pre[@]}" "$OXBUS" quickstart "$TMP/env" --port "$PORT" --workers "$WORKERS" --no-proxy >"$TMP/server.log" 2>&1 &
SRV=$!
for _ in $(seq 1 100); do
  [[ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$PORT/readyz")" == 200 ]] && break; sleep 0.1
done
curl -sf -X POST -H 'Content-Type: application/json' --data-binary @"$PEERS_HARNESS/body.json" \
  "127.0.0.1:$PORT/echo" >/dev/null || { echo "echo check failed; log:"; cat "$TMP/server.log"; exit 1; }
export WRK_BODY="$PEERS_HARNESS/body.json"
"${wrk_pre[@]}" wrk -t2 -c"$CONNS" -d2s -s "$PEERS_HARNESS/post.lua" "http://127.0.0.1:$PORT/echo" >/dev/null

snap() {  # pid role utime+stime(jiffies) voluntary nonvoluntary threads (server, then its children)
  # context switches summed over all threads (/proc/<pid>/status alone counts the main thread)
  local p role
  for p in "$SRV" $(ps -o pid= --ppid "$SRV"); do
    role=python_worker; [[ "$p" == "$SRV" ]] && role=rust_server
    printf '%s %s %s %s %s %s\n' "$p" "$role" \
      "$(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12+$13}')" \
      "$(cat /proc/"$p"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/{s+=$2} END{print s+0}')" \
      "$(cat /proc/"$p"/task/*/status 2>/dev/null | awk '/^nonvoluntary_ctxt/{s+=$2} END{print s+0}')" \
      "$(ls /proc/"$p"/task | wc -l)"
  done
}
snap > "$TMP/before"
res=$("${wrk_pre[@]}" wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$PEERS_HARNESS/post.lua" "http://127.0.0.1:$PORT/echo" | grep '^RESULT')
snap > "$TMP/after"
echo "# cpu_split: MODE=$MODE DURATION=$DURATION WORKERS=$WORKERS CONNS=$CONNS load1=$(cut -d' ' -f1 /proc/loadavg)"
echo "# $res"
python3 - "$TMP/before" "$TMP/after" "$res" "$(getconf CLK_TCK)" <<'EOF'
import re, sys
before = {l.split()[0]: l.split() for l in open(sys.argv[1])}
after = [l.split() for l in open(sys.argv[2])]
reqs = int(re.search(r"requests=(\d+)", sys.argv[3]).group(1))
tick = int(sys.argv[4])
tot = {}
print(f"{'process':14s} {'pid':>7s} {'threads':>7s} {'CPU-s':>6s} {'us/req':>7s} {'vol cs/req':>10s} {'invol cs/req':>12s}")
for pid, role, cpu, vol, inv, thr in after:
    b = before.get(pid)
    if not b:
        continue
    d = [int(cpu) - int(b[2]), int(vol) - int(b[3]), int(inv) - int(b[4])]
    t = tot.setdefault(role, [0, 0, 0])
    for i in range(3):
        t[i] += d[i]
    print(f"{role:14s} {pid:>7s} {thr:>7s} {d[0]/tick:6.2f} {1e6*d[0]/tick/reqs:7.1f} {d[1]/reqs:10.3f} {d[2]/reqs:12.3f}")
allc = sum(t[0] for t in tot.values())
for role, t in tot.items():
    print(f"total {role:14s} {t[0]/tick:6.2f} CPU-s  {1e6*t[0]/tick/reqs:6.1f} us/req  ({100*t[0]/allc:.0f}% of the server's CPU)  "
          f"{t[1]/reqs:.2f} vol + {t[2]/reqs:.2f} invol context switches/req")
print(f"total server+workers   {allc/tick:6.2f} CPU-s  {1e6*allc/tick/reqs:6.1f} us/req  requests={reqs}")
EOF
