#!/usr/bin/env python3
"""bench/amqp_consume.py - AMQP consume-to-service throughput: an Oxbus AMQP channel beside a
Python consumer with pika and one with kombu (Zato's stack), all calling the same function
(bench/amqp_consume_svc.py `work`: parse a small JSON order, total its lines).

For each target and rep: N messages are pre-loaded into a queue of its own on the machine's
RabbitMQ (127.0.0.1:5672, guest/guest), then consumed with the same prefetch and acked one
by one after `work` returned; the figure is messages/s from the start of consuming to the
last ack (Oxbus: the channel is switched to active, the end is its `acked` figure reaching N,
polled every 5 ms through the admin API; pika / kombu: one process each, timed inside it).
Oxbus runs `oxbus quickstart --workers W` (W=1 by default: one Python process, as the
others) with the channel's `consumers` = 1.

pika and kombu come from a venv of their own (not the worker's interpreter):
    python3 -m venv /tmp/oxbus-amqp-bench && /tmp/oxbus-amqp-bench/bin/pip install pika kombu
(done by this script when AMQP_BENCH_VENV, default /tmp/oxbus-amqp-bench, has no python).

Usage: bench/amqp_consume.py [--n 20000] [--reps 3] [--prefetch 100] [--workers 1]
       OXBUS_BIN=target/debug/oxbus for a smoke run; the figures are a release build's
       (cargo build --release -j2 -p oxbus-supervisor).
"""
import argparse, http.client, json, os, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OXBUS = os.environ.get('OXBUS_BIN') or os.path.join(ROOT, 'target', 'release', 'oxbus')
VENV = os.environ.get('AMQP_BENCH_VENV', '/tmp/oxbus-amqp-bench')
VPY = os.path.join(VENV, 'bin', 'python')
SVC = os.path.join(ROOT, 'bench', 'amqp_consume_svc.py')

# Helpers run with the venv's python (pika, kombu): load a queue, count it, delete it, and
# the two consumers. Each prints one JSON line.
HELPER = r'''
import json, sys, time
cmd, queue = sys.argv[1], sys.argv[2]
if cmd in ('load', 'count', 'delete'):
    import pika
    conn = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', 5672))
    ch = conn.channel()
    if cmd == 'load':
        n = int(sys.argv[3])
        ch.queue_declare(queue, durable=True)
        body = json.dumps({'id': 1, 'customer': 'acme', 'lines': [
            {'sku': 'A-%d' % i, 'qty': i + 1, 'price': 9.99} for i in range(5)]}).encode()
        props = pika.BasicProperties(content_type='application/json')
        for _ in range(n):
            ch.basic_publish('', queue, body, props)
        while ch.queue_declare(queue, passive=True).method.message_count < n:
            time.sleep(0.05)
        print(json.dumps({'loaded': n}))
    elif cmd == 'count':
        print(json.dumps({'ready': ch.queue_declare(queue, passive=True).method.message_count}))
    else:
        ch.queue_delete(queue)
        print(json.dumps({'deleted': queue}))
    conn.close()
    sys.exit(0)

n, prefetch, svc_dir = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, svc_dir)
import types
sys.modules.setdefault('oxbus', types.SimpleNamespace(Service=object))  # the service file's import
from amqp_consume_svc import work
done = 0
if cmd == 'pika':
    import pika
    conn = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', 5672))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    def on_message(ch, method, props, body):
        global done
        work(body)
        ch.basic_ack(method.delivery_tag)
        done += 1
        if done == n:
            ch.stop_consuming()
    ch.basic_consume(queue, on_message)
    start = time.perf_counter()
    ch.start_consuming()
    took = time.perf_counter() - start
    conn.close()
elif cmd == 'kombu':
    from kombu import Connection, Consumer, Queue
    with Connection('amqp://guest:guest@127.0.0.1:5672//') as conn:
        def on_message(body, message):
            global done
            work(message.body)
            message.ack()
            done += 1
        q = Queue(queue, no_declare=True)
        with Consumer(conn, queues=[q], callbacks=[on_message], prefetch_count=prefetch,
                      accept=['json', 'application/json']):
            start = time.perf_counter()
            while done < n:
                conn.drain_events(timeout=30)
            took = time.perf_counter() - start
print(json.dumps({'n': n, 'seconds': took, 'msgs_per_s': n / took}))
'''


def helper(*args):
    out = subprocess.run([VPY, '-c', HELPER] + [str(a) for a in args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


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


def free_port():
    import socket
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def oxbus_rep(admin, queue, n, prefetch, rep):
    name = 'bench-%d-%d' % (os.getpid(), rep)
    base = {'address': 'amqp://127.0.0.1:5672/%2f', 'username': 'guest', 'password': 'guest',
            'queue': queue, 'service': 'bench.amqp-consume', 'prefetch': prefetch,
            'consumers': 1}
    admin.call('PUT', '/v1/inbound/amqp/' + name, dict(base, is_active=False))
    start = time.perf_counter()
    admin.call('PUT', '/v1/inbound/amqp/' + name, base)
    deadline = time.time() + 600
    while True:
        st = admin.call('GET', '/v1/inbound/amqp/%s/stats' % name)
        if st['acked'] >= n:
            break
        if time.time() > deadline:
            raise SystemExit('oxbus: only %s of %d acked: %s' % (st['acked'], n, st))
        time.sleep(0.005)
    took = time.perf_counter() - start
    admin.call('DELETE', '/v1/inbound/amqp/' + name)
    return {'n': n, 'seconds': took, 'msgs_per_s': n / took, 'stats': st}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=20000)
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--prefetch', type=int, default=100)
    ap.add_argument('--workers', type=int, default=1)
    args = ap.parse_args()
    if not os.access(OXBUS, os.X_OK):
        raise SystemExit('%s missing: cargo build --release -j2 -p oxbus-supervisor' % OXBUS)
    if not os.access(VPY, os.X_OK):
        subprocess.check_call([sys.executable, '-m', 'venv', VENV])
        subprocess.check_call([VPY, '-m', 'pip', 'install', '-q', 'pika', 'kombu'])
    tmp = tempfile.mkdtemp(prefix='oxbus-amqp-bench-')
    env = os.path.join(tmp, 'env')
    log = open(os.path.join(tmp, 'server.log'), 'w')
    server = subprocess.Popen([OXBUS, 'quickstart', env, '--port', str(free_port()),
                               '--workers', str(args.workers), '--no-proxy'],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(env, 'admin.token')) or \
                'ready' not in open(log.name).read():
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit('the server did not start:\n' + open(log.name).read()[-3000:])
            time.sleep(0.1)
        subprocess.check_call([OXBUS, 'deploy', '--env', env, SVC], stdout=subprocess.DEVNULL)
        admin = Admin(env)
        results = {}
        order = ['oxbus', 'pika', 'kombu']
        for rep in range(args.reps):
            for target in order[rep % 3:] + order[:rep % 3]:
                queue = 'oxbus-bench-%s-%d-%d' % (target, os.getpid(), rep)
                helper('load', queue, args.n)
                try:
                    if target == 'oxbus':
                        r = oxbus_rep(admin, queue, args.n, args.prefetch, rep)
                    else:
                        r = helper(target, queue, args.n, args.prefetch,
                                   os.path.dirname(SVC))
                    left = helper('count', queue)['ready']
                    if left:
                        raise SystemExit('%s left %d messages in %s' % (target, left, queue))
                finally:
                    helper('delete', queue)
                results.setdefault(target, []).append(r['msgs_per_s'])
                print('rep %d %-6s %9.0f msgs/s  (%d in %.2f s)'
                      % (rep + 1, target, r['msgs_per_s'], r['n'], r['seconds']), flush=True)
        med = {t: statistics.median(v) for t, v in results.items()}
        print('\nmedians over %d reps, %d messages, prefetch %d, %d worker(s):'
              % (args.reps, args.n, args.prefetch, args.workers))
        for t in order:
            print('  %-6s %9.0f msgs/s' % (t, med[t]))
        print('  oxbus / pika  = %.2fx' % (med['oxbus'] / med['pika']))
        print('  oxbus / kombu = %.2fx   (target: >= 3x each)' % (med['oxbus'] / med['kombu']))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == '__main__':
    main()
