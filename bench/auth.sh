#!/usr/bin/env bash
# What the API gateway's checks cost: echo req/s through a channel with no security, with
# HTTP Basic (argon2 verified once per credential, then a cached SHA-256 match) and with a
# JWT HS256 bearer token, one server, the three side by side in one run (order rotated per
# rep), reported as ratios to no auth. Target (issue 6): >= 0.9x each.
#
#   bench/auth.sh                 # REPS=3 DURATION=10 CONNS=32 (wrk -t1)
#   SKIP_BUILD=1 REPS=5 bench/auth.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OXBUS="$ROOT/target/release/oxbus"
REPS="${REPS:-3}" DURATION="${DURATION:-10}" CONNS="${CONNS:-32}" WORKERS="${WORKERS:-2}"
OUTDIR="${OUTDIR:-/tmp/oxbus-auth-bench/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUTDIR"
command -v wrk >/dev/null || { echo "bench/auth.sh needs wrk (apt-get install wrk)" >&2; exit 1; }
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$ROOT" && cargo build --release -j2 -p oxbus-supervisor)
fi
PEERS_HARNESS="${PEERS_HARNESS:-$ROOT/../shared/bench/peers}"
[[ -f "$PEERS_HARNESS/post.lua" ]] || PEERS_HARNESS=/work/shared/bench/peers
[[ -f "$PEERS_HARNESS/post.lua" ]] || { echo "no peer harness (post.lua, body.json) at $PEERS_HARNESS" >&2; exit 1; }
export WRK_BODY="$PEERS_HARNESS/body.json"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
TMP="$(mktemp -d /tmp/oxbus-auth-bench.XXXXXX)"
SERVER_PID=
cleanup() { [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

"$OXBUS" quickstart "$TMP/env" --port "$PORT" --workers "$WORKERS" --no-proxy >"$OUTDIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do
  curl -sf -o /dev/null -X POST -d '{}' "http://127.0.0.1:$PORT/echo" && break
  sleep 0.1
done
ADMIN="http://$(awk -F'"' '/^\[admin\]/{a=1} a && /^listen/{print $2; exit}' "$TMP/env/server.toml")"
TOKEN=$(cat "$TMP/env/admin.token")
admin() { # method path json
  local code
  code=$(curl -s -o "$TMP/admin.out" -w '%{http_code}' -X "$1" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "$3" "$ADMIN$2")
  [[ "$code" == 2* ]] || { echo "admin $1 $2: $code $(cat "$TMP/admin.out")" >&2; exit 1; }
}
SECRET=bench-hs256-secret-0123456789
admin POST /v1/security '{"name":"bench-basic","type":"basic","username":"bench","password":"bench-password"}'
admin POST /v1/security "{\"name\":\"bench-jwt\",\"type\":\"jwt\",\"algorithms\":[\"HS256\"],\"secret\":\"$SECRET\",\"audience\":\"bench\"}"
admin POST /v1/channels '{"name":"echo-basic","url_path":"/echo-basic","methods":["POST"],"service":"demo.echo","security":"bench-basic"}'
admin POST /v1/channels '{"name":"echo-jwt","url_path":"/echo-jwt","methods":["POST"],"service":"demo.echo","security":"bench-jwt"}'

BASIC="Basic $(printf 'bench:bench-password' | base64)"
JWT=$(python3 - "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b = lambda d: base64.urlsafe_b64encode(json.dumps(d, separators=(",", ":")).encode()).rstrip(b"=")
msg = b({"alg": "HS256", "typ": "JWT"}) + b"." + b({"sub": "bench", "aud": "bench", "exp": int(time.time()) + 3600})
sig = base64.urlsafe_b64encode(hmac.new(sys.argv[1].encode(), msg, hashlib.sha256).digest()).rstrip(b"=")
print((msg + b"." + sig).decode())
PY
)
lua() { # path auth-header-or-empty -> script file
  local f="$TMP/$(echo "$1" | tr -dc a-z).lua"
  sed -e "s#^wrk.path = .*#wrk.path = \"$1\"#" "$PEERS_HARNESS/post.lua" >"$f"
  [[ -n "$2" ]] && echo "wrk.headers[\"Authorization\"] = \"$2\"" >>"$f"
  echo "$f"
}
LUA_NONE=$(lua /echo "")
LUA_BASIC=$(lua /echo-basic "$BASIC")
LUA_JWT=$(lua /echo-jwt "Bearer $JWT")
for l in "$LUA_NONE:/echo" "$LUA_BASIC:/echo-basic" "$LUA_JWT:/echo-jwt"; do
  # Every variant must answer 200 before it is measured (a 401 would be fast and wrong).
  out=$(wrk -t1 -c1 -d1s -s "${l%%:*}" "http://127.0.0.1:$PORT${l#*:}" | grep RESULT)
  [[ "$out" == *"errors=0 "* ]] || { echo "warm-up of ${l#*:} had errors: $out" >&2; exit 1; }
done

echo "rep,target,rps,p50_ms,p99_ms,errors,server_us_per_req" | tee "$OUTDIR/results.csv"
ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
run() { # rep name lua path
  local out c0 c1
  c0=$(ticks)
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$3" "http://127.0.0.1:$PORT$4" | grep RESULT)
  c1=$(ticks)
  python3 - "$1" "$2" "$out" "$c0" "$c1" "$(getconf CLK_TCK)" <<'PY' | tee -a "$OUTDIR/results.csv"
import re, sys
rep, name, out, c0, c1, tck = sys.argv[1:7]
r = dict(kv.split("=") for kv in re.search(r"RESULT (.*?) \(", out).group(1).split())
us = (int(c1) - int(c0)) / int(tck) / int(r["requests"]) * 1e6
print(f"{rep},{name},{float(r['rps']):.0f},{r['p50_ms']},{r['p99_ms']},{r['errors']},{us:.1f}")
PY
}
targets=("none:$LUA_NONE:/echo" "basic:$LUA_BASIC:/echo-basic" "jwt:$LUA_JWT:/echo-jwt")
for rep in $(seq 1 "$REPS"); do
  for i in 0 1 2; do
    t=${targets[$(( (i + rep - 1) % 3 ))]}
    IFS=: read -r name script path <<<"$t"
    run "$rep" "$name" "$script" "$path"
  done
done
python3 - "$OUTDIR/results.csv" <<'PY' | tee "$OUTDIR/summary.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
by = lambda t: [r for r in rows if r["target"] == t]
errors = sum(int(r["errors"]) for r in rows)
med = {t: statistics.median(float(r["rps"]) for r in by(t)) for t in ("none", "basic", "jwt")}
cpu = {t: statistics.median(float(r["server_us_per_req"]) for r in by(t)) for t in med}
print(f"\nmedian req/s: none {med['none']:.0f}, basic {med['basic']:.0f}, jwt {med['jwt']:.0f} (errors: {errors})")
print("server process (Rust side, workers excluded) CPU per request: "
      + ", ".join(f"{t} {cpu[t]:.1f} us" for t in cpu))
for t in ("basic", "jwt"):
    per_rep = [float(a["rps"]) / float(b["rps"]) for a, b in zip(by(t), by("none"))]
    print(f"{t}: {med[t] / med['none']:.2f}x no auth (per rep: {', '.join(f'{x:.2f}' for x in per_rep)}) target >= 0.9")
PY
echo "results: $OUTDIR"
