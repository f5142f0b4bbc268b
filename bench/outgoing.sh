#!/usr/bin/env bash
# bench/outgoing.sh - outgoing connections from services (issue 19), side by side in one run:
#
#   REST: a service making one GET per request to a local upstream (echo_upstream, a small
#     hyper server of the integration crate answering a 43-byte JSON object), three ways on the
#     same server and the same workers: Oxbus `self.out.rest` (the server's pool), a
#     `requests.Session` per worker thread (Zato's stack), one `httpx.Client` per worker; and
#     `rest.oxbus_async`, the same call from an async service (`await ....conn.aget(self.cid)`).
#     Targets: out.rest >= 8x requests' calls/s and >= 5x httpx's, p99 lower than both.
#   SQL: a primary-key SELECT of one of 10 000 rows (random id per request) from the machine's
#     PostgreSQL: Oxbus `self.out.sql` (one pool of PG_POOL_MAX in the server) vs psycopg 3
#     with its C extension (psycopg[binary]) and a psycopg_pool.ConnectionPool in each worker
#     (max_size PSYCOPG_POOL_MAX: with 8 threads per worker a psycopg user configures a few
#     connections per process; 8 workers x 4 = up to 32 backends). PostgreSQL's backends are
#     counted by application_name during each run ('oxbus:bench-pg' for out.sql,
#     'bench-psycopg-<pid>' for psycopg). Targets: out.sql >= 1.0x psycopg's calls/s; the
#     backends held by out.sql for 8 workers <= its pool_max.
#   loop: the pure overhead, a service making LOOP_N calls in a loop inside one invocation
#     (wall and CPU per call: the worker's, and the Rust server's).
#
# wrk: GET of each variant's channel, same duration, REPS reps, the order rotated per rep;
# calls/s, p50, p99, errors, and the CPU of server + workers per call (from /proc/PID/stat).
# MODE=pinned (default): the server and its workers on CPU $SERVER_CPU, wrk and the upstream
# on CPU $WRK_CPU (PostgreSQL is the machine's service: not pinned). MODE=unpinned: nothing.
#
# Installs from PyPI with pip, into a venv under $VENV (default $TMPDIR/oxbus-outgoing-venv,
# kept between runs): requests, httpx, psycopg[binary], psycopg_pool. The workers run that
# venv's python (OXBUS_SERVER_PYTHON), so the libraries are importable by the services.
# Needs: wrk, taskset, PostgreSQL at $PG_DSN (default 127.0.0.1:5432, user postgres, db test;
# a table bench_out_sql_<pid> is created and dropped).
#
# Usage:   bench/outgoing.sh
#          SKIP_BUILD=1 REPS=5 DURATION=10 bench/outgoing.sh
#          PART=rest bench/outgoing.sh          (rest, sql, loop: comma-separated)
#
# Knobs (defaults in brackets): REPS [3]  DURATION [10]  WARMUP [2]  CONNS [64]  THREADS [2]
#   WORKERS [8]  MODE [pinned]  SERVER_CPU [1]  WRK_CPU [0]  REST_POOL [32]  PG_POOL_MAX [8]
#   PSYCOPG_POOL_MAX [4]  ROWS [10000]  LOOP_N [100]  LOOP_INVOKES [20]  PART [rest,sql,loop]
#   PG_DSN [host=127.0.0.1 port=5432 user=postgres dbname=test]
#   PG_URL [postgres://postgres@127.0.0.1:5432/test]  VENV  SKIP_BUILD [0]  KEEP_ENV
#   OUTDIR [/tmp/oxbus-outgoing-bench/<timestamp>]
# Output: per-run lines, a summary with medians, ratios and the targets on stdout;
# results.csv, loop.csv, summary.txt and server.log in $OUTDIR. Exit status 3 when a variant
# could not run (e.g. a build without the outgoing clients), with the reason printed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
command -v wrk >/dev/null || { echo "bench/outgoing.sh needs wrk (apt-get install wrk)" >&2; exit 1; }
if [[ "${MODE:-pinned}" == pinned ]]; then
  command -v taskset >/dev/null || { echo "MODE=pinned needs taskset (util-linux)" >&2; exit 1; }
fi
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  echo "== building oxbus and echo_upstream (release)"
  (cd "$ROOT" && cargo build --release -j2 -p oxbus-supervisor --bin oxbus \
     && cargo build --release -j2 -p oxbus-integration --bin echo_upstream)
fi
for b in oxbus echo_upstream; do
  [[ -x "$ROOT/target/release/$b" ]] || { echo "no binary at $ROOT/target/release/$b" >&2; exit 1; }
done

VENV="${VENV:-${TMPDIR:-/tmp}/oxbus-outgoing-venv}"
if ! "$VENV/bin/python" -c 'import requests, httpx, psycopg, psycopg_pool' 2>/dev/null; then
  echo "== making the venv $VENV (pip: requests httpx psycopg[binary] psycopg_pool)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q requests httpx 'psycopg[binary]' psycopg_pool
fi
impl=$("$VENV/bin/python" -c 'import psycopg; print(psycopg.pq.__impl__)')
[[ "$impl" == binary || "$impl" == c ]] || {
  echo "psycopg runs its '$impl' implementation, not the C extension: pip install 'psycopg[binary]'" >&2; exit 1; }

exec "$VENV/bin/python" "$HERE/outgoing/run.py"
