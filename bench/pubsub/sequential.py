#!/usr/bin/env python3
"""bench/pubsub/sequential.py - one GD publish at a time: the publish-ack latency without
load, and the mean flush time the server measured (`oxbus_pubsub_publish_flush_seconds`).

Starts the same server as bench/pubsub.sh (`run.Oxbus`: a release `oxbus server`, its
definitions, a private PostgreSQL for `postgres`), then publishes 400 messages of 1 KiB one
after the other on one keep-alive connection to a GD topic, 400 to a non-GD one and 400 to
the GD one again, and prints p50 / p90 / min of each series and the flush histogram's sum
and count from the admin API's /metrics.

Usage: python3 bench/pubsub/sequential.py [sqlite|postgres]
       OXBUS_BIN=/path/to/oxbus to compare builds (run them alternately).
"""
import http.client
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault('OUTDIR', tempfile.mkdtemp(prefix='oxbus-sequential-'))
sys.path.insert(0, HERE)
import run  # noqa: E402  (reads OUTDIR at import)


def main():
    store = sys.argv[1] if len(sys.argv) > 1 else 'sqlite'
    if store not in ('sqlite', 'postgres'):
        raise SystemExit('usage: sequential.py [sqlite|postgres]')
    base = tempfile.mkdtemp(prefix='oxbus-sequential-')
    os.chmod(base, 0o755)  # the private PostgreSQL runs as another user
    ox = run.Oxbus(store, base)
    try:
        c = http.client.HTTPConnection('127.0.0.1', ox.port)
        body = json.dumps({'data': 'x' * 1000})
        headers = {'authorization': run.AUTH, 'content-type': 'application/json'}
        for topic in ['/bench/gd', '/bench/nongd', '/bench/gd']:
            lat = []
            for _ in range(400):
                t = time.perf_counter()
                c.request('POST', '/pubsub/topic' + topic, body, headers)
                r = c.getresponse()
                r.read()
                if r.status != 200:
                    raise SystemExit('publish to %s: %d' % (topic, r.status))
                lat.append((time.perf_counter() - t) * 1000)
            lat.sort()
            print('%s %-12s one at a time: publish-ack p50 %.3f ms  p90 %.3f  min %.3f'
                  % (store, topic, lat[len(lat) // 2], lat[int(len(lat) * .9)], lat[0]))
        a = http.client.HTTPConnection('127.0.0.1', ox.admin_port)
        a.request('GET', '/metrics', headers={'authorization': 'Bearer ' + ox.token})
        text = a.getresponse().read().decode()
        got = {}
        for line in text.splitlines():
            for k in ('sum', 'count'):
                if line.startswith('oxbus_pubsub_publish_flush_seconds_' + k + ' '):
                    got[k] = float(line.split()[-1])
        if got.get('count'):
            print('%s flushes: %d, mean %.3f ms' % (store, got['count'],
                                                    got['sum'] / got['count'] * 1000))
    finally:
        ox.stop()


if __name__ == '__main__':
    main()
