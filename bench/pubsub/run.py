"""bench/pubsub/run.py: the pub/sub benchmark's runs and summary (bench/pubsub.sh starts it;
its header lists the knobs). Stdlib only: the measuring is done by the Rust client
(target/release/oxbus-pubsub-bench, src/main.rs beside this file), one run per process, one
JSON line each."""

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLIENT = os.path.join(ROOT, 'target', 'release', 'oxbus-pubsub-bench')
OXBUS = os.environ.get('OXBUS_BIN') or os.path.join(ROOT, 'target', 'release', 'oxbus')

REPS = int(os.environ.get('REPS', '3'))
N = int(os.environ.get('N', '100000'))
RATE = int(os.environ.get('RATE', '5000'))
LAT_SECS = int(os.environ.get('LAT_SECS', '10'))
STORAGE_N = int(os.environ.get('STORAGE_N', '100000'))
BATCH = int(os.environ.get('BATCH', '250'))
CONNS = int(os.environ.get('CONNS', '4'))
LAT_CONNS = int(os.environ.get('LAT_CONNS', '64'))
WORKERS = int(os.environ.get('WORKERS', '2'))
PARTS = os.environ.get('PART', 'rabbit,oxbus').split(',')
STORES = os.environ.get('STORES', 'sqlite,postgres').split(',')
PG_MODE = os.environ.get('PG_MODE', 'private')
PG_BIN = os.environ.get('PG_BIN', '/usr/lib/postgresql/15/bin')
RABBIT_DATA = os.environ.get('RABBIT_DATA', '/var/lib/rabbitmq/mnesia/rabbit@localhost')
OUTDIR = os.environ.get('OUTDIR') or os.path.join(
    tempfile.gettempdir(), 'oxbus-pubsub-bench', time.strftime('%Y%m%d-%H%M%S'))
USER, PASSWORD = 'bench', 'bench-pass-4b1d'
AUTH = 'Basic ' + base64.b64encode(('%s:%s' % (USER, PASSWORD)).encode()).decode()

os.makedirs(OUTDIR, exist_ok=True)
RESULTS = os.path.join(OUTDIR, 'results.jsonl')
failures = []


def client(*args, label):
    """One run of the client: its JSON result (tagged with `label`), or None when it failed."""
    cmd = [CLIENT] + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        msg = '%s: %s' % (label, (p.stderr or p.stdout).strip()[-400:])
        print('  FAILED ' + msg, flush=True)
        failures.append(msg)
        return None
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r['label'] = label
    with open(RESULTS, 'a') as f:
        f.write(json.dumps(r) + '\n')
    fmt = lambda v: '-' if v is None else '%.2f' % v
    print('  %-28s %9.0f msg/s  publish %9.0f/s  ack p50 %s p99 %s ms  delivery p50 %s p99 %s ms'
          '  client cpu %.1f s / %.1f s%s' % (
              label, r['msgs_per_s'], r['publish_per_s'], fmt(r['ack_p50_ms']),
              fmt(r['ack_p99_ms']), fmt(r['delivery_p50_ms']), fmt(r['delivery_p99_ms']),
              r.get('client_cpu_s') or 0, r['secs'],
              '  dir +%d B' % r['data_dir_growth_bytes']
              if r.get('data_dir_growth_bytes') is not None else ''), flush=True)
    return r


# ------------------------------------------------------------------------------ RabbitMQ

RABBIT_KINDS = ['quorum', 'classic', 'transient']


def rabbit_throughput(rep, beside=None):
    """One rep of RabbitMQ's throughput runs. With Oxbus in the run, each Oxbus rep has one
    of these right before it, so that the two sides of a ratio share the machine's load of
    the moment (a shared machine's load drifts over a run of many minutes)."""
    print('== RabbitMQ throughput, rep %d' % (rep + 1), flush=True)
    order = RABBIT_KINDS[rep % 3:] + RABBIT_KINDS[:rep % 3]
    # `beside`: the Oxbus store whose runs these go with (its ratios use these).
    tail = '~' + beside if beside else ''
    for k in order:
        client('rabbit', 'kind=' + k, 'n=%d' % N, label='rabbit-%s%s' % (k, tail))


def rabbit_latency(beside=None):
    print('== RabbitMQ latency at %d msg/s' % RATE, flush=True)
    tail = '~' + beside if beside else ''
    for k in RABBIT_KINDS:
        client('rabbit', 'kind=' + k, 'n=%d' % (RATE * LAT_SECS), 'rate=%d' % RATE,
               label='rabbit-%s@%d%s' % (k, RATE, tail))


def rabbit(throughput=True):
    kinds = RABBIT_KINDS
    if throughput:
        for rep in range(REPS):
            rabbit_throughput(rep)
        rabbit_latency()
    if os.access(RABBIT_DATA, os.R_OK):
        print('== RabbitMQ storage: %d messages at rest, data dir growth' % STORAGE_N, flush=True)
        for k in kinds:
            client('rabbit', 'kind=' + k, 'n=%d' % STORAGE_N, 'consume=0',
                   'data_dir=' + RABBIT_DATA, label='rabbit-%s-storage' % k)
    else:
        print('== RabbitMQ storage: %s is not readable: skipped' % RABBIT_DATA)


# ------------------------------------------------------------------------------ Oxbus

def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def as_postgres(*cmd):
    pre = ['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 else []
    return subprocess.run(pre + list(cmd), capture_output=True, text=True)


class PrivatePg:
    """A PostgreSQL of the benchmark's own, with the default (durable: fsync on) settings,
    so that its WAL counts only Oxbus's writes."""

    def __init__(self, base):
        self.dir = os.path.join(base, 'pg')
        os.makedirs(self.dir)
        if os.geteuid() == 0:
            shutil.chown(self.dir, 'postgres', 'postgres')
        self.data = os.path.join(self.dir, 'data')
        p = as_postgres(PG_BIN + '/initdb', '-D', self.data, '-U', 'postgres',
                        '--auth=trust', '-E', 'UTF8')
        if p.returncode:
            raise SystemExit('initdb: ' + p.stderr)
        self.port = free_port()
        p = as_postgres(PG_BIN + '/pg_ctl', '-D', self.data, '-l', os.path.join(self.dir, 'log'),
                        '-o', '-p %d -k %s -c listen_addresses=127.0.0.1' % (self.port, self.dir),
                        '-w', 'start')
        if p.returncode:
            raise SystemExit('pg_ctl start: ' + p.stdout + p.stderr)
        self.admin_url = 'postgres://postgres@127.0.0.1:%d/postgres' % self.port
        psql(self.admin_url, 'CREATE DATABASE oxbus')
        self.url = 'postgres://postgres@127.0.0.1:%d/oxbus' % self.port

    def stop(self):
        as_postgres(PG_BIN + '/pg_ctl', '-D', self.data, '-m', 'fast', '-w', 'stop')


class SharedPg:
    """A database of its own on the machine's PostgreSQL (PG_MODE=shared: its WAL figures
    include whatever else the machine writes meanwhile)."""

    def __init__(self, _base):
        self.admin_url = os.environ.get('PG_URL', 'postgres://postgres@127.0.0.1:5432/test')
        self.name = 'oxbus_bench_%d' % os.getpid()
        psql(self.admin_url, 'CREATE DATABASE %s' % self.name)
        self.url = self.admin_url.rsplit('/', 1)[0] + '/' + self.name

    def stop(self):
        psql(self.admin_url, 'DROP DATABASE IF EXISTS %s WITH (FORCE)' % self.name)


def psql(url, sql):
    p = subprocess.run(['psql', url, '-v', 'ON_ERROR_STOP=1', '-qAt', '-c', sql],
                       capture_output=True, text=True)
    if p.returncode:
        raise SystemExit('psql %r: %s' % (sql, p.stderr))
    return p.stdout.strip()


def request(port, method, path, doc=None, headers=None, timeout=60):
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    h = {'content-type': 'application/json'}
    h.update(headers or {})
    c.request(method, path, None if doc is None else json.dumps(doc), h)
    r = c.getresponse()
    body = r.read()
    c.close()
    try:
        return r.status, json.loads(body) if body else None
    except ValueError:
        return r.status, body.decode('utf-8', 'replace')


class Oxbus:
    """A release `oxbus server` with the benchmark's definitions: a basic-auth endpoint
    allowed on /bench/*, the topics, the pub/sub REST channel, one pull subscription per
    topic, and the publishing service."""

    TOPICS = {
        '/bench/gd': {'has_gd': True},
        '/bench/nongd': {'has_gd': False, 'max_depth_non_gd': 10000000},
        '/bench/svc': {'has_gd': True},
        '/bench/svc-nongd': {'has_gd': False, 'max_depth_non_gd': 10000000},
        '/bench/storage': {'has_gd': True},
    }

    def __init__(self, store, base):
        self.pg = self.proc = self.log = None
        try:
            self.start(store, base)
        except BaseException:
            # What was started so far stops here: the caller never gets the object.
            self.stop()
            raise

    def start(self, store, base):
        self.dir = os.path.join(base, 'oxbus-' + store)
        os.makedirs(os.path.join(self.dir, 'services'))
        shutil.copy(os.path.join(HERE, 'svc.py'), os.path.join(self.dir, 'services'))
        if store == 'postgres':
            self.pg = (PrivatePg if PG_MODE == 'private' else SharedPg)(self.dir)
            url = self.pg.url
        else:
            url = 'sqlite:' + os.path.join(self.dir, 'oxbus.db')
        self.port, self.admin_port = free_port(), free_port()
        with open(os.path.join(self.dir, 'server.toml'), 'w') as f:
            f.write('[server]\nlisten = "127.0.0.1:%d"\nworkers = %d\npython = "python3"\n'
                    'log_level = "warn"\n\n[admin]\nlisten = "127.0.0.1:%d"\n\n'
                    '[store]\nurl = "%s"\n\n[[channels]]\nurl_path = "/bench/publish"\n'
                    'methods = ["POST"]\nservice = "bench.publish"\n'
                    % (self.port, WORKERS, self.admin_port, url))
        self.log = open(os.path.join(OUTDIR, 'oxbus-%s.log' % store), 'w')
        self.proc = subprocess.Popen([OXBUS, 'server', '--config',
                                      os.path.join(self.dir, 'server.toml')],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        end = time.time() + 60
        while True:
            try:
                if request(self.port, 'GET', '/readyz', timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > end:
                raise SystemExit('oxbus (%s store) did not get ready: see %s' % (store, self.log.name))
            time.sleep(0.1)
        with open(os.path.join(self.dir, 'admin.token')) as f:
            self.token = f.read().strip()
        self.define()

    def admin(self, method, path, doc):
        status, body = request(self.admin_port, method, path, doc,
                               {'authorization': 'Bearer ' + self.token})
        if status not in (200, 201):
            raise RuntimeError('admin %s %s: %s %s' % (method, path, status, body))
        return body

    def define(self):
        self.admin('POST', '/v1/security',
                   {'name': 'bench', 'type': 'basic', 'username': USER, 'password': PASSWORD})
        self.admin('PUT', '/v1/pubsub/endpoints/bench',
                   {'name': 'bench', 'security': 'bench',
                    'topic_patterns': ['pub=/bench/*', 'sub=/bench/*']})
        for name, t in self.TOPICS.items():
            doc = {'name': name, 'max_depth_gd': 10000000}
            doc.update(t)
            self.admin('PUT', '/v1/pubsub/topics' + name, doc)
        self.admin('POST', '/v1/channels', {'name': 'pubsub', 'type': 'pubsub',
                                            'url_path': '/pubsub', 'security': 'bench'})
        self.subs = {}
        for name in self.TOPICS:
            status, body = request(self.port, 'POST', '/pubsub/subscribe/topic' + name,
                                   {'delivery': {'type': 'pull'}}, {'authorization': AUTH})
            if status != 200:
                raise RuntimeError('subscribe to %s: %s %s' % (name, status, body))
            self.subs[name] = body['sub_key']

    def run(self, label, topic, *args):
        return client('oxbus', 'port=%d' % self.port, 'topic=' + topic,
                      'sub_key=' + self.subs[topic], 'auth=' + AUTH, *args, label=label)

    def storage(self, store):
        """Publishes STORAGE_N GD messages nobody pulls: what the store grew by."""
        if self.pg:
            def figures():
                size = psql(self.pg.url, "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) "
                            "FROM pg_class c WHERE c.relname LIKE 'pubsub_msg%' "
                            "AND c.relkind = 'r'")
                return int(size), psql(self.pg.url, 'SELECT pg_current_wal_lsn()')
            size0, lsn0 = figures()
        else:
            db = os.path.join(self.dir, 'oxbus.db')

            def used():
                # The pages in use (the file keeps the free pages earlier runs left, so its
                # size need not grow); read through the WAL.
                out = subprocess.run(['sqlite3', db, 'PRAGMA page_count;',
                                      'PRAGMA freelist_count;', 'PRAGMA page_size;'],
                                     capture_output=True, text=True, check=True).stdout.split()
                pages, free, size = (int(x) for x in out[:3])
                return (pages - free) * size
            size0 = used()
        r = client('oxbus', 'port=%d' % self.port, 'topic=/bench/storage', 'auth=' + AUTH,
                   'n=%d' % STORAGE_N, 'batch=%d' % BATCH, 'conns=%d' % CONNS, 'consume=0',
                   label='oxbus-%s-storage' % store)
        if r is None:
            return
        if self.pg:
            size1, lsn1 = figures()
            wal = int(psql(self.pg.url, "SELECT pg_wal_lsn_diff('%s', '%s')" % (lsn1, lsn0)))
            line = {'label': 'oxbus-%s-storage-figures' % store, 'messages': STORAGE_N,
                    'table_bytes': size1 - size0, 'wal_bytes': wal,
                    'pg_mode': PG_MODE}
        else:
            line = {'label': 'oxbus-%s-storage-figures' % store, 'messages': STORAGE_N,
                    'db_pages_in_use_growth_bytes': used() - size0}
        print('  %s' % json.dumps(line), flush=True)
        with open(RESULTS, 'a') as f:
            f.write(json.dumps(line) + '\n')

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.log:
            self.log.close()
        if self.pg:
            self.pg.stop()
            self.pg = None


def oxbus():
    for store in STORES:
        print('== Oxbus, %s store' % store, flush=True)
        base = tempfile.mkdtemp(prefix='oxbus-pubsub-bench-')
        # The private PostgreSQL runs as the postgres user: it must reach its directory.
        os.chmod(base, 0o755)
        srv = None
        try:
            srv = Oxbus(store, base)
            thr = ['n=%d' % N, 'batch=%d' % BATCH, 'conns=%d' % CONNS]
            for rep in range(REPS):
                if 'rabbit' in PARTS:
                    rabbit_throughput(rep, beside=store)
                print('-- throughput, rep %d' % (rep + 1), flush=True)
                srv.run('oxbus-%s-rest-gd' % store, '/bench/gd', *thr)
                srv.run('oxbus-%s-rest-non-gd' % store, '/bench/nongd', 'gd=0', *thr)
                # One publish per message, each waiting for its commit: a tenth of N is
                # enough for its rate (at ~1-3k/s, N would take minutes).
                srv.run('oxbus-%s-service-gd-loop' % store, '/bench/svc',
                        'service_path=/bench/publish', 'service_mode=loop',
                        'n=%d' % max(N // 10, 1000),
                        'batch=100', 'conns=%d' % (WORKERS * 4))
                srv.run('oxbus-%s-service-gd-list' % store, '/bench/svc',
                        'service_path=/bench/publish', 'service_mode=list', *thr)
                srv.run('oxbus-%s-service-non-gd-list' % store, '/bench/svc-nongd', 'gd=0',
                        'service_path=/bench/publish', 'service_mode=list', *thr)
            if 'rabbit' in PARTS:
                rabbit_latency(beside=store)
            print('-- latency at %d msg/s (one message per publish)' % RATE, flush=True)
            lat = ['n=%d' % (RATE * LAT_SECS), 'rate=%d' % RATE, 'conns=%d' % LAT_CONNS]
            srv.run('oxbus-%s-rest-gd@%d' % (store, RATE), '/bench/gd', *lat)
            srv.run('oxbus-%s-rest-non-gd@%d' % (store, RATE), '/bench/nongd', 'gd=0', *lat)
            print('-- storage: %d GD messages at rest' % STORAGE_N, flush=True)
            srv.storage(store)
        except (RuntimeError, SystemExit) as e:
            print('  FAILED oxbus %s: %s' % (store, e), flush=True)
            failures.append('oxbus %s: %s' % (store, e))
        finally:
            if srv:
                srv.stop()
            shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------ summary

def summary():
    rows = [json.loads(l) for l in open(RESULTS)] if os.path.exists(RESULTS) else []
    by = {}
    for r in rows:
        by.setdefault(r['label'], []).append(r)

    def med(label, key):
        vals = [r[key] for r in by.get(label, []) if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    out = ['pub/sub benchmark: N=%d messages of 1 KiB, REPS=%d, medians' % (N, REPS), '']
    out.append('%-34s %10s %10s %9s %9s %9s %9s' % (
        'run', 'msg/s', 'publish/s', 'ack p50', 'ack p99', 'dlv p50', 'dlv p99'))
    f = lambda v, p='%.2f': '-' if v is None else p % v
    for label in by:
        if 'msgs_per_s' not in by[label][0]:
            continue
        out.append('%-34s %10s %10s %9s %9s %9s %9s' % (
            label, f(med(label, 'msgs_per_s'), '%.0f'), f(med(label, 'publish_per_s'), '%.0f'),
            f(med(label, 'ack_p50_ms')), f(med(label, 'ack_p99_ms')),
            f(med(label, 'delivery_p50_ms')), f(med(label, 'delivery_p99_ms'))))
    out.append('')
    def peer(label, store, key):
        """RabbitMQ's figure measured beside this store's runs, else the run's own."""
        v = med('%s~%s' % (label, store), key)
        return v if v is not None else med(label, key)

    for store in STORES:
        q, c, t = (peer('rabbit-%s' % k, store, 'msgs_per_s')
                   for k in ('quorum', 'classic', 'transient'))
        gd = med('oxbus-%s-rest-gd' % store, 'msgs_per_s')
        ngd = med('oxbus-%s-rest-non-gd' % store, 'msgs_per_s')
        if gd and q:
            out.append('ratio %s GD REST / RabbitMQ quorum: %.2fx (target >= 1.5); / classic: %s'
                       % (store, gd / q, f(gd / c if c else None)))
        if ngd and t:
            out.append('ratio %s non-GD REST / RabbitMQ transient: %.2fx (target >= 2)'
                       % (store, ngd / t))
        for v in ('loop', 'list'):
            s = med('oxbus-%s-service-gd-%s' % (store, v), 'msgs_per_s')
            if s and q:
                out.append('ratio %s GD service (%s) / RabbitMQ quorum: %.2fx' % (store, v, s / q))
        for kind, other in (('gd', 'quorum'), ('non-gd', 'transient')):
            label = 'oxbus-%s-rest-%s@%d' % (store, kind, RATE)
            a = med(label, 'ack_p50_ms')
            d = med(label, 'delivery_p50_ms')
            if a is not None:
                out.append('%s %s at %d msg/s (reached %s/s): publish-ack p50 %.2f ms, delivery '
                           'p50 %s ms (targets <= 1 ms); RabbitMQ %s: %s / %s ms'
                           % (store, kind, RATE, f(med(label, 'msgs_per_s'), '%.0f'), a, f(d),
                              other, f(peer('rabbit-%s@%d' % (other, RATE), store, 'ack_p50_ms')),
                              f(peer('rabbit-%s@%d' % (other, RATE), store,
                                     'delivery_p50_ms'))))
    floor = med('fsync-floor', 'fdatasync_ms')
    if floor is not None:
        out.append('the disk: fdatasync %.2f ms (pg_test_fsync): the floor of a durable '
                   "publish-ack (a GD publish is acknowledged after its commit's sync)" % floor)
    for label, rs in by.items():
        if label.endswith('storage') or label.endswith('storage-figures'):
            r = rs[-1]
            per = 100000.0 / (r.get('n') or r.get('messages') or 100000)
            keys = [k for k in ('data_dir_growth_bytes', 'table_bytes', 'wal_bytes',
                                'db_pages_in_use_growth_bytes') if r.get(k) is not None]
            if keys:
                out.append('storage %s per 100k messages: %s' % (label, ', '.join(
                    '%s %.1f MB' % (k, r[k] * per / 1e6) for k in keys)))
    if failures:
        out += ['', 'FAILED runs:'] + failures
    text = '\n'.join(out)
    print('\n' + text)
    with open(os.path.join(OUTDIR, 'summary.txt'), 'w') as fh:
        fh.write(text + '\n')


def fsync_floor():
    """The disk's fdatasync of one 8 kB write (pg_test_fsync, in this run): no durable
    publish is acknowledged faster than its commit's sync."""
    tool = os.path.join(PG_BIN, 'pg_test_fsync')
    if not os.access(tool, os.X_OK):
        return None
    d = tempfile.mkdtemp(prefix='oxbus-fsync-')
    try:
        out = subprocess.run([tool, '-s', '2', '-f', os.path.join(d, 'f')], capture_output=True,
                             text=True, timeout=120).stdout
    finally:
        shutil.rmtree(d, ignore_errors=True)
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ['fdatasync'] and 'usecs/op' in parts:
            us = float(parts[parts.index('usecs/op') - 1])
            rec = {'label': 'fsync-floor', 'fdatasync_ms': us / 1000}
            print('  %s' % json.dumps(rec), flush=True)
            with open(RESULTS, 'a') as f:
                f.write(json.dumps(rec) + '\n')
            return us / 1000
    return None


def main():
    print('results in %s' % OUTDIR, flush=True)
    print('== the disk: fdatasync of one 8 kB write', flush=True)
    fsync_floor()
    if 'rabbit' in PARTS:
        # With Oxbus in the run, the throughput and latency runs go beside Oxbus's (see
        # rabbit_throughput); the storage runs once, here.
        rabbit(throughput='oxbus' not in PARTS)
    if 'oxbus' in PARTS:
        oxbus()
    summary()
    return 3 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
