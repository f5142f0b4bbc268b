#!/usr/bin/env bash
# bench/run.sh - Oxbus side by side with the shared peer harness (POST /echo, ~200-byte JSON).
#
# What it does:
#   1. builds the release binary (cargo build --release -j2 -p oxbus-supervisor; SKIP_BUILD=1 skips)
#   2. runs the harness's setup.sh when $PEERS_WORK has no venv yet (peers + Rust ceiling server)
#   3. makes a temp dir; `oxbus quickstart <tmp>/env --port $PORT --workers 2` creates a fresh
#      environment there on the first start (its demo.echo service on POST /echo is exactly the
#      harness workload) and reuses it on every later start
#   4. writes <tmp>/peers.conf = the shared peers.conf + one line
#        oxbus|8107|exec <abs>/target/release/oxbus quickstart <tmp>/env --port $PORT --workers 2
#   5. runs the shared run_peers.sh with it (every peer: start, check the echo, warm up, wrk,
#      CPU accounting, stop; reps interleaved), then its summarize.py
#   6. bench/ratios.py on the results CSV: the issue's targets, per mode, medians over reps
#        Oxbus req/s / granian_wsgi    >= 1.0
#        Oxbus req/s / gunicorn_gevent >= 5
#        Oxbus p99 <= granian_wsgi p99
#
# Usage:   bench/run.sh
#          ONLY=granian_wsgi,gunicorn_gevent,oxbus REPS=3 DURATION=15 MODES=pinned bench/run.sh
#
# Knobs passed through to run_peers.sh (defaults in brackets):
#   ONLY [all peers]  REPS [2]  DURATION [10]  MODES ["pinned unpinned"]
#   (any other run_peers.sh knob in the environment, e.g. CONNS or WARMUP, reaches it too)
# Knobs of this script:
#   PEERS_HARNESS [<repo>/../shared/bench/peers]  the read-only harness folder
#   PEERS_WORK    [/tmp/oxbus-peers]               venv, ceiling build and results
#   OUTDIR        [$PEERS_WORK/results/oxbus-<timestamp>]
#   OXBUS_PORT    [8107]   SKIP_BUILD [0]   KEEP_ENV [0] (keep the temp dir with the env)
#   OXBUS_BASE    [unset]  another oxbus binary run as the peer `oxbus_base` (port + 1)
#
# Output: the run_peers.sh table and summary, then the ratio table; all files in $OUTDIR
# (results.csv, summary.txt, ratios.txt, <peer>.server.log, wrk_raw.txt, peers.conf).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PEERS_HARNESS="${PEERS_HARNESS:-$ROOT/../shared/bench/peers}"
[[ -d "$PEERS_HARNESS" ]] || PEERS_HARNESS=/work/shared/bench/peers
PEERS_HARNESS="$(cd "$PEERS_HARNESS" && pwd)"
export PEERS_WORK="${PEERS_WORK:-/tmp/oxbus-peers}"
OXBUS_PORT="${OXBUS_PORT:-8107}"
OXBUS="$ROOT/target/release/oxbus"

# 1. binary
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  echo "== building $OXBUS"
  (cd "$ROOT" && cargo build --release -j2 -p oxbus-supervisor)
fi
[[ -x "$OXBUS" ]] || { echo "no binary at $OXBUS" >&2; exit 1; }

# 2. harness
if [[ ! -x "$PEERS_WORK/venv/bin/python" ]]; then
  echo "== $PEERS_WORK missing: running $PEERS_HARNESS/setup.sh"
  bash "$PEERS_HARNESS/setup.sh"
fi

# 3. + 4. fresh environment and peers file
TMP="$(mktemp -d /tmp/oxbus-bench.XXXXXX)"
cleanup() { [[ "${KEEP_ENV:-0}" == 1 ]] || rm -rf "$TMP"; }
trap cleanup EXIT
ENV_DIR="$TMP/env"
PEERS_FILE="$TMP/peers.conf"
{
  cat "$PEERS_HARNESS/peers.conf"
  echo "oxbus|$OXBUS_PORT|exec $OXBUS quickstart $ENV_DIR --port \$PORT --workers 2 --no-proxy"
  # Another oxbus binary (an earlier commit's release build) as one more peer, for a change's
  # cost measured in the same run: OXBUS_BASE=/path/to/oxbus, ONLY=...,oxbus,oxbus_base.
  if [[ -n "${OXBUS_BASE:-}" ]]; then
    echo "oxbus_base|$((OXBUS_PORT + 1))|exec $OXBUS_BASE quickstart $TMP/env-base --port \$PORT --workers 2 --no-proxy"
  fi
} > "$PEERS_FILE"

# 5. the harness
export OUTDIR="${OUTDIR:-$PEERS_WORK/results/oxbus-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUTDIR"
cp "$PEERS_FILE" "$OUTDIR/peers.conf"
echo "== oxbus $("$OXBUS" --version 2>/dev/null | awk '{print $2}') ($(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo 'no commit')), env $ENV_DIR"
echo "== results in $OUTDIR"
PEERS_FILE="$PEERS_FILE" ONLY="${ONLY:-}" REPS="${REPS:-2}" DURATION="${DURATION:-10}" \
  MODES="${MODES:-pinned unpinned}" bash "$PEERS_HARNESS/run_peers.sh"

# 6. targets
echo
python3 "$HERE/ratios.py" "$OUTDIR/results.csv" | tee "$OUTDIR/ratios.txt"

log="$OUTDIR/oxbus.server.log"
if [[ -f "$log" ]]; then
  n=$(grep -cE ' (WARN|ERROR) |^oxbus: error' "$log" || true)
  echo "# oxbus server log: $n WARN/ERROR lines ($log)"
  grep -E ' (WARN|ERROR) |^oxbus: error' "$log" | head -5 || true
fi
