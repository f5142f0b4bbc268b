#!/usr/bin/env python3
"""bench/cache.py - the cache from a service, beside Redis from the same service.

Starts `oxbus quickstart <tmp env> --workers 1 --no-proxy` (release build), deploys
bench/cache_svc.py and invokes its loop service: `self.cache.default.get` / `.set` of one
key N times in a row, timed inside the worker, and the same loop with redis-py GET / SET
against the machine's Redis (127.0.0.1:6379), in the same worker process. Targets and
order rotate every rep; the report gives medians and the ratio oxbus/redis per op
(issue 7's target: >= 2x redis-py ops/s).

Then the memory per cached entry: a cache `bench-mem` (max 1 000 000 entries) is filled with
COUNT distinct keys (`k0`…, 10-byte string values, as JSON) and the server's RSS grows by
X bytes: X / COUNT. Redis's own figure for the same keys (INFO used_memory) beside it.

Usage: bench/cache.py [--reps 5] [--n 20000] [--count 200000] [--size 10]
       (build first: cargo build --release -j2 -p oxbus-supervisor)
"""
import argparse, http.client, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OXBUS = os.environ.get('OXBUS_BIN') or os.path.join(ROOT, 'target', 'release', 'oxbus')


def free_port():
    import socket
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Admin:
    def __init__(self, env):
        toml = open(os.path.join(env, 'server.toml')).read()
        section = toml[toml.index('[admin]'):]
        self.addr = section.split('listen', 1)[1].split('"')[1]
        self.token = open(os.path.join(env, 'admin.token')).read().strip()

    def call(self, method, path, doc=None):
        host, port = self.addr.rsplit(':', 1)
        c = http.client.HTTPConnection(host, int(port), timeout=600)
        body = None if doc is None else json.dumps(doc)
        c.request(method, path, body, {'authorization': 'Bearer ' + self.token,
                                       'content-type': 'application/json'})
        r = c.getresponse()
        data = r.read()
        if r.status >= 300:
            raise SystemExit('admin %s %s: %d %s' % (method, path, r.status, data[:500]))
        return json.loads(data) if data else None

    def invoke(self, service, payload):
        return self.call('POST', '/v1/invoke/' + service, payload)


def rss(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    raise SystemExit('no VmRSS for %d' % pid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--reps', type=int, default=5)
    ap.add_argument('--n', type=int, default=20000, help='operations per measurement')
    ap.add_argument('--count', type=int, default=200000, help='entries for the memory figure')
    ap.add_argument('--size', type=int, default=10, help='value size, bytes')
    args = ap.parse_args()
    if not os.access(OXBUS, os.X_OK):
        raise SystemExit('%s missing: cargo build --release -j2 -p oxbus-supervisor' % OXBUS)
    try:
        import redis  # noqa: F401  (the worker runs the same python3)
    except ImportError:
        subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', 'redis'])
    tmp = tempfile.mkdtemp(prefix='oxbus-cache-bench-')
    env = os.path.join(tmp, 'env')
    port = free_port()
    log = open(os.path.join(tmp, 'server.log'), 'w')
    server = subprocess.Popen([OXBUS, 'quickstart', env, '--port', str(port), '--workers', '1',
                               '--no-proxy'], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(env, 'admin.token')) or \
                'ready' not in open(log.name).read():
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit('the server did not start:\n' + open(log.name).read()[-3000:])
            time.sleep(0.1)
        subprocess.check_call([OXBUS, 'deploy', '--env', env,
                               os.path.join(ROOT, 'bench', 'cache_svc.py')],
                              stdout=subprocess.DEVNULL)
        admin = Admin(env)
        # Warm-up: both paths once, untimed.
        for target in ('oxbus', 'redis'):
            for op in ('get', 'set'):
                admin.invoke('bench.cache-loop', {'target': target, 'op': op, 'n': 2000,
                                                  'size': args.size})
        results = {}
        order = [('oxbus', 'get'), ('redis', 'get'), ('oxbus', 'set'), ('redis', 'set')]
        for rep in range(args.reps):
            turn = order[rep % len(order):] + order[:rep % len(order)]
            for target, op in turn:
                r = admin.invoke('bench.cache-loop', {'target': target, 'op': op,
                                                      'n': args.n, 'size': args.size})
                results.setdefault((target, op), []).append(r)
                print('rep %d %-5s %s: %8.0f ops/s  %6.2f us/op  worker CPU %6.2f us/op'
                      % (rep + 1, target, op, r['ops_per_s'], r['us_per_op'],
                         r['worker_cpu_us_per_op']), flush=True)
        print('\nmedians over %d reps, %d ops each, %d-byte values, one worker:'
              % (args.reps, args.n, args.size))
        summary = {}
        for op in ('get', 'set'):
            ox = statistics.median(r['ops_per_s'] for r in results[('oxbus', op)])
            rd = statistics.median(r['ops_per_s'] for r in results[('redis', op)])
            per_rep = [a['ops_per_s'] / b['ops_per_s']
                       for a, b in zip(results[('oxbus', op)], results[('redis', op)])]
            summary[op] = {'oxbus': ox, 'redis': rd, 'ratio': ox / rd}
            print('  %s: oxbus %8.0f ops/s, redis-py %8.0f ops/s -> %.2fx (per rep %s)'
                  % (op, ox, rd, ox / rd, ', '.join('%.2f' % x for x in per_rep)))

        # Memory per entry.
        admin.call('PUT', '/v1/caches/bench-mem', {'max_entries': 1000000})
        time.sleep(0.5)
        before = rss(server.pid)
        done = 0
        while done < args.count:
            step = min(50000, args.count - done)
            admin.invoke('bench.cache-fill', {'cache': 'bench-mem', 'count': step,
                                              'prefix': 'k%d-' % done, 'size': args.size})
            done += step
        time.sleep(0.5)
        after = rss(server.pid)
        per_entry = (after - before) / args.count
        import redis as redis_py
        r = redis_py.Redis(host='127.0.0.1', port=6379)
        used0 = r.info('memory')['used_memory']
        prefix = 'oxbus-bench-mem-%d:' % os.getpid()
        pipe = r.pipeline(transaction=False)
        for i in range(args.count):
            pipe.set('%s%d' % (prefix, i), 'x' * args.size)
            if i % 10000 == 9999:
                pipe.execute()
        pipe.execute()
        used1 = r.info('memory')['used_memory']
        for start in range(0, args.count, 10000):
            r.delete(*['%s%d' % (prefix, i) for i in range(start, min(args.count, start + 10000))])
        redis_per_key = (used1 - used0) / args.count
        print('\nmemory: %d entries (keys ~8 bytes, %d-byte values): server RSS +%.1f MiB = %.0f '
              'bytes per entry; Redis used_memory +%.0f bytes per key'
              % (args.count, args.size, (after - before) / 2**20, per_entry, redis_per_key))
        summary['memory'] = {'entries': args.count, 'bytes_per_entry': per_entry,
                             'redis_bytes_per_key': redis_per_key}
        print(json.dumps(summary))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        if not os.environ.get('KEEP_ENV'):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
