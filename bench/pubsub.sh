#!/usr/bin/env bash
# bench/pubsub.sh - the pub/sub broker (issue 20) beside the machine's RabbitMQ, in one run:
# 1 KiB messages, one publisher and one subscriber, end to end (published, delivered, acked).
#
#   RabbitMQ (127.0.0.1:5672, guest/guest; a queue of a unique name per run, deleted after):
#     quorum queue, classic durable queue (persistent messages, delivery_mode 2) and transient
#     (classic non-durable queue, delivery_mode 1); the publisher uses publisher confirms and
#     keeps up to 1,000 unconfirmed; the consumer has prefetch 1,000 and acks (multiple, every
#     64 deliveries).
#   Oxbus (a release build; SQLite and PostgreSQL stores, one server, WORKERS workers): GD
#     and non-GD topics; the publisher POSTs batches of BATCH messages ({"messages": [...]})
#     on CONNS keep-alive connections to the pub/sub REST API; one subscriber pulls (long
#     poll, up to 1,000 a time) and acks each batch. Reported separately: a service that
#     publishes (bench/pubsub/svc.py, invoked over HTTP): `loop` (one self.pubsub.publish per
#     message, WORKERS*4 concurrent invocations of 100) and `list` (data_list of BATCH).
#   Latency at a steady RATE msg/s (each message published alone; Oxbus on LAT_CONNS
#     connections): publish-ack p50/p99 (confirm / REST answer) and publish-to-delivery
#     p50/p99 (the message carries its send time).
#   Storage per 100k messages at rest: RabbitMQ's data directory growth ($RABBIT_DATA, read
#     as root); Oxbus on PostgreSQL: pg_total_relation_size of the pubsub_msg tables and the
#     WAL written (pg_current_wal_lsn before/after; PG_MODE=private, the default, runs a
#     PostgreSQL of the benchmark's own with the default durable settings so that the WAL is
#     Oxbus's alone); on SQLite: the growth of the pages in use (page_count - freelist_count, through the WAL).
#
# The client is Rust (bench/pubsub/, its own workspace with lapin, built into target/): a
# Python AMQP client could not publish 25k msg/s. Each result line has the client's own CPU
# seconds beside the run's seconds, to show that the client was not the bottleneck.
#
# Usage:   bench/pubsub.sh
#          SKIP_BUILD=1 REPS=5 bench/pubsub.sh
#          PART=rabbit bench/pubsub.sh        (rabbit, oxbus: comma-separated)
#          STORES=postgres bench/pubsub.sh    (sqlite, postgres)
#
# Knobs (defaults in brackets): REPS [3]  N [100000]  BATCH [250]  CONNS [4]  WORKERS [2]
#   RATE [5000]  LAT_SECS [10]  LAT_CONNS [64]  STORAGE_N [100000]  PART [rabbit,oxbus]
#   STORES [sqlite,postgres]  PG_MODE [private|shared]  PG_URL (shared mode: the admin
#   database, default postgres://postgres@127.0.0.1:5432/test)  PG_BIN
#   [/usr/lib/postgresql/15/bin]  RABBIT_DATA [/var/lib/rabbitmq/mnesia/rabbit@localhost]
#   OXBUS_BIN [target/release/oxbus: another build, e.g. a debug one for a smoke test]
#   SKIP_BUILD [0]  OUTDIR [/tmp/oxbus-pubsub-bench/<timestamp>]
# With both parts, each Oxbus rep (and its latency runs) has RabbitMQ's beside it, and each
# store's ratios use the RabbitMQ runs made beside it: a shared machine's load drifts over the
# run's minutes, and the two sides of a ratio should share it. The publishing-service `loop`
# runs publish N/10 messages (one commit wait each).
# Output: a line per run, then a summary with medians, the ratios to RabbitMQ and the
# targets (GD >= 1.5x quorum, non-GD >= 2x transient, p50s <= 1 ms); results.jsonl,
# summary.txt and the server logs in $OUTDIR. Exit status 3 when a run failed (named).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  echo "== building oxbus (release) and the benchmark client"
  (cd "$ROOT" && cargo build --release -j2 -p oxbus-supervisor --bin oxbus)
  CARGO_TARGET_DIR="$ROOT/target" cargo build --release -j2 \
    --manifest-path "$HERE/pubsub/Cargo.toml"
fi
need=("$ROOT/target/release/oxbus-pubsub-bench")
[[ ",${PART:-rabbit,oxbus}," == *,oxbus,* ]] && need+=("${OXBUS_BIN:-$ROOT/target/release/oxbus}")
for b in "${need[@]}"; do
  [[ -x "$b" ]] || { echo "no binary at $b" >&2; exit 1; }
done
command -v psql >/dev/null || { echo "bench/pubsub.sh needs psql" >&2; exit 1; }
exec python3 "$HERE/pubsub/run.py"
