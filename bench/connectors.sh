#!/usr/bin/env bash
# bench/connectors.sh - the messaging connectors' figures (issue 21), in one run, one after
# the other on the same release build and the same machine state:
#
#   1. bench/amqp_consume.py  AMQP channel consume-to-service vs pika and kombu consumers
#                             calling the same function            (target: >= 3x each)
#   2. bench/amqp_publish.py  self.out.amqp.send with publisher confirms vs pika with
#                             confirms                             (target: >= 2x)
#   3. bench/redis_get.py     self.out.redis GET vs redis-py       (target: >= 2x)
#
# Each script's own output goes to $OUTDIR/<name>.txt; the summary (each script's medians
# and ratio lines, the load average before and after each) to $OUTDIR/summary.txt and
# stdout. Uses the machine's RabbitMQ (127.0.0.1:5672, guest/guest; queues of unique names,
# deleted after) and Redis (127.0.0.1:6379; keys of unique names, deleted after).
#
# Usage:   bench/connectors.sh
#          SKIP_BUILD=1 REPS=5 bench/connectors.sh
#          ONLY=redis_get bench/connectors.sh       (amqp_consume, amqp_publish, redis_get)
# Knobs: REPS [3, passed to each script], ONLY [all three], SKIP_BUILD [0],
#        OXBUS_BIN [target/release/oxbus], OUTDIR [/tmp/oxbus-connectors-bench/<timestamp>].
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
ONLY=${ONLY:-amqp_consume,amqp_publish,redis_get}
export OXBUS_BIN=${OXBUS_BIN:-$PWD/target/release/oxbus}
for name in ${ONLY//,/ }; do
  case $name in
    amqp_consume | amqp_publish | redis_get) ;;
    *) echo "connectors.sh: ONLY names $name: not one of amqp_consume, amqp_publish, redis_get" >&2; exit 2 ;;
  esac
done
OUTDIR=${OUTDIR:-/tmp/oxbus-connectors-bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUTDIR"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release -j2 -p oxbus-supervisor
fi
[[ -x "$OXBUS_BIN" ]] || { echo "connectors.sh: no binary at $OXBUS_BIN" >&2; exit 2; }
port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_up 5672 || { echo "connectors.sh: RabbitMQ is not up at 127.0.0.1:5672" >&2; exit 2; }
port_up 6379 || { echo "connectors.sh: Redis is not up at 127.0.0.1:6379" >&2; exit 2; }

summary=$OUTDIR/summary.txt
{
  echo "# bench/connectors.sh at $(date -u +%FT%TZ) on $(hostname), $(nproc) CPUs"
  echo "# binary: $OXBUS_BIN ($(stat -c %y "$OXBUS_BIN" | cut -d. -f1)), REPS=$REPS"
  echo "# commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$([[ -z "$(git status --porcelain 2>/dev/null)" ]] || echo ' (with uncommitted changes)')"
} | tee "$summary"

status=0
run() { # name, command...
  local name=$1
  shift
  [[ ",$ONLY," == *",$name,"* ]] || return 0
  echo | tee -a "$summary"
  echo "## $name (load before: $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$summary"
  local rc=0
  "$@" >"$OUTDIR/$name.txt" 2>&1 || rc=$?
  # The medians block (each script prints it after its per-rep lines) and its ratio lines.
  sed -n '/^medians/,$p' "$OUTDIR/$name.txt" | tee -a "$summary"
  echo "(load after: $(cut -d' ' -f1-3 /proc/loadavg); exit $rc; full output $OUTDIR/$name.txt)" |
    tee -a "$summary"
  if ((rc)); then
    status=$rc
    echo "connectors.sh: $name failed; its last lines:" >&2
    tail -20 "$OUTDIR/$name.txt" >&2
  fi
}
run amqp_consume python3 bench/amqp_consume.py --reps "$REPS"
run amqp_publish python3 bench/amqp_publish.py --reps "$REPS"
REPS=$REPS run redis_get python3 bench/redis_get.py
echo
echo "summary: $summary"
exit $status
