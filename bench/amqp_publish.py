#!/usr/bin/env python3
"""bench/amqp_publish.py - outgoing AMQP publishes with confirms: a service through the
server's connection vs pika from the same service.

Starts `oxbus quickstart <tmp env> --workers W --no-proxy` (release build unless OXBUS_BIN),
defines the outgoing AMQP connection `bench` (the machine's RabbitMQ, guest/guest,
pool_size 4), deploys bench/amqp_publish_svc.py, declares a queue of its own, and runs C
concurrent invocations of `bench.amqp-publish`, each publishing N messages of SIZE bytes
with publisher confirms, through the server (`self.out.amqp.send`) or with pika
(BlockingConnection + confirm_delivery, one connection per worker thread). Messages/s is
C x N over the wall time of the whole round, as the driver sees it; the queue is purged
between rounds and its message count checked (every confirmed message must be there).
Targets alternate every rep; the report gives medians and the ratio oxbus/pika
(issue 21's target: >= 2x). "worker CPU" is the invocations' own threads' CPU per message
(for oxbus the server's share of the work is not in it).

Usage: bench/amqp_publish.py [--reps 5] [--n 2000] [--concurrency 8] [--workers 2]
                             [--size 200]
       (build first: cargo build --release -j2 -p oxbus-supervisor; a smoke run:
        OXBUS_BIN=target/debug/oxbus bench/amqp_publish.py --reps 1 --n 200)
"""
import argparse, http.client, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OXBUS = os.environ.get('OXBUS_BIN') or os.path.join(ROOT, 'target', 'release', 'oxbus')
RABBIT = os.environ.get('OXBUS_BENCH_AMQP', 'amqp://guest:guest@127.0.0.1:5672/%2f')


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


def split_url(url):
    """amqp://user:pw@host:port/vhost -> (address without credentials, user, password)."""
    scheme, rest = url.split('://', 1)
    cred, hostpart = rest.rsplit('@', 1)
    user, pw = cred.split(':', 1)
    return '%s://%s' % (scheme, hostpart), user, pw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--reps', type=int, default=5)
    ap.add_argument('--n', type=int, default=2000, help='messages per invocation')
    ap.add_argument('--concurrency', type=int, default=8, help='concurrent invocations')
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--size', type=int, default=200, help='message body, bytes')
    args = ap.parse_args()
    if not os.access(OXBUS, os.X_OK):
        raise SystemExit('%s missing: cargo build --release -j2 -p oxbus-supervisor '
                         '(or set OXBUS_BIN)' % OXBUS)
    try:
        import pika  # noqa: F401  (the worker runs the same python3)
    except ImportError:
        subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', 'pika'])
    import pika
    queue = 'oxbus-bench-publish-%d' % os.getpid()
    mq = pika.BlockingConnection(pika.URLParameters(RABBIT))
    mch = mq.channel()
    mch.queue_declare(queue, arguments={'x-expires': 3600000})

    tmp = tempfile.mkdtemp(prefix='oxbus-amqp-bench-')
    env = os.path.join(tmp, 'env')
    port = free_port()
    log = open(os.path.join(tmp, 'server.log'), 'w')
    server = subprocess.Popen([OXBUS, 'quickstart', env, '--port', str(port), '--workers',
                               str(args.workers), '--no-proxy'], stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(env, 'admin.token')) or \
                'ready' not in open(log.name).read():
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit('the server did not start:\n' + open(log.name).read()[-3000:])
            time.sleep(0.1)
        subprocess.check_call([OXBUS, 'deploy', '--env', env,
                               os.path.join(ROOT, 'bench', 'amqp_publish_svc.py')],
                              stdout=subprocess.DEVNULL)
        admin = Admin(env)
        address, user, pw = split_url(RABBIT)
        admin.call('PUT', '/v1/outgoing/amqp/bench', {'address': address, 'username': user,
                                                      'password': pw, 'pool_size': 4})

        def round_(target, n):
            payload = {'target': target, 'n': n, 'size': args.size, 'queue': queue,
                       'conn': 'bench', 'url': RABBIT}
            mch.queue_purge(queue)
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                answers = list(pool.map(lambda _: admin.invoke('bench.amqp-publish', payload),
                                        range(args.concurrency)))
            wall = time.perf_counter() - started
            total = sum(a['n'] for a in answers)
            count = mch.queue_declare(queue, passive=True).method.message_count
            if count != total:
                raise SystemExit('%s: %d confirmed, %d in the queue' % (target, total, count))
            return {'msgs_per_s': total / wall, 'wall_s': wall,
                    'worker_cpu_us_per_msg': sum(a['worker_cpu_s'] for a in answers)
                    / total * 1e6}

        for target in ('oxbus', 'pika'):  # warm-up: connections opened, untimed
            round_(target, max(10, args.n // 10))
        results = {'oxbus': [], 'pika': []}
        for rep in range(args.reps):
            for target in (('oxbus', 'pika') if rep % 2 == 0 else ('pika', 'oxbus')):
                r = round_(target, args.n)
                results[target].append(r)
                print('rep %d %-5s: %8.0f msgs/s  (%d x %d in %.2f s, worker CPU %.1f us/msg)'
                      % (rep + 1, target, r['msgs_per_s'], args.concurrency, args.n,
                         r['wall_s'], r['worker_cpu_us_per_msg']), flush=True)
        ox = statistics.median(r['msgs_per_s'] for r in results['oxbus'])
        pk = statistics.median(r['msgs_per_s'] for r in results['pika'])
        per_rep = [a['msgs_per_s'] / b['msgs_per_s']
                   for a, b in zip(results['oxbus'], results['pika'])]
        print('\nmedians over %d reps, %d concurrent invocations x %d messages of %d bytes, '
              '%d workers, confirms on:' % (args.reps, args.concurrency, args.n, args.size,
                                            args.workers))
        print('  oxbus %8.0f msgs/s, pika %8.0f msgs/s -> %.2fx (per rep %s)'
              % (ox, pk, ox / pk, ', '.join('%.2f' % x for x in per_rep)))
        print(json.dumps({'oxbus': ox, 'pika': pk, 'ratio': ox / pk}))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        try:
            mch.queue_delete(queue)
            mq.close()
        except Exception:
            pass
        if not os.environ.get('KEEP_ENV'):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
