#!/usr/bin/env python3
"""bench/outgoing/run.py - the driver of bench/outgoing.sh (issue 19); run it through that
script, which builds the binaries and makes the venv, and passes the knobs as environment
variables (see its header). Needs psycopg in the interpreter running it (the bench's venv):
it fills the PostgreSQL table and counts backends with it.

One server (`oxbus quickstart <tmp env> --workers W --no-proxy`, the venv's python for its
workers) runs every variant of bench/outgoing/svc.py, each behind a GET channel; wrk drives
each for the same time, REPS repetitions with the variants' order rotated every rep. Per
run: calls/s, p50, p99, errors, and the CPU of the server + its workers per call (from
/proc/PID/stat); during SQL runs, PostgreSQL's backends per application_name (the most seen,
sampled every 200 ms). Then the loop microbench (bench.loop: LOOP_N calls in one invocation,
LOOP_INVOKES times per variant), the pure overhead per call. Summary with medians, ratios and
issue 19's targets; results.csv, loop.csv, summary.txt in OUTDIR.

A variant that cannot run (e.g. a build without the outgoing clients: the PUT of its
connection or its first call fails) is reported as such with the reason, its targets show
"n/a", and the exit status is 3.
"""
import csv, http.client, json, os, random, re, shutil, signal, statistics, subprocess, sys
import tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
E = os.environ.get
OXBUS = E('OXBUS_BIN') or os.path.join(ROOT, 'target', 'release', 'oxbus')
UPSTREAM_BIN = E('UPSTREAM_BIN') or os.path.join(ROOT, 'target', 'release', 'echo_upstream')
REPS, DURATION, WARMUP = int(E('REPS', '3')), int(E('DURATION', '10')), int(E('WARMUP', '2'))
CONNS, THREADS, WORKERS = int(E('CONNS', '64')), int(E('THREADS', '2')), int(E('WORKERS', '8'))
MODE = E('MODE', 'pinned')
SERVER_CPU, WRK_CPU = E('SERVER_CPU', '1'), E('WRK_CPU', '0')
REST_POOL, PG_POOL_MAX = int(E('REST_POOL', '32')), int(E('PG_POOL_MAX', '8'))
PSYCOPG_POOL_MAX = int(E('PSYCOPG_POOL_MAX', '4'))
ROWS = int(E('ROWS', '10000'))
LOOP_N, LOOP_INVOKES = int(E('LOOP_N', '100')), int(E('LOOP_INVOKES', '20'))
PART = E('PART', 'rest,sql,loop').split(',')
PG_DSN = E('PG_DSN', 'host=127.0.0.1 port=5432 user=postgres dbname=test')
PG_URL = E('PG_URL', 'postgres://postgres@127.0.0.1:5432/test')
OUTDIR = E('OUTDIR') or '/tmp/oxbus-outgoing-bench/' + time.strftime('%Y%m%d-%H%M%S')
PSYCOPG_APP = 'bench-psycopg-%d' % os.getpid()
OXBUS_APP = 'oxbus:bench-pg'
TABLE = 'bench_out_sql_%d' % os.getpid()
REST = ['rest.oxbus', 'rest.oxbus_async', 'rest.requests', 'rest.httpx']
SQL = ['sql.oxbus', 'sql.psycopg']
TCK = os.sysconf('SC_CLK_TCK')


def pin(cpu):
    return ['taskset', '-c', cpu] if MODE == 'pinned' else []


def free_port_run(n):
    import socket
    for _ in range(200):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        p = s.getsockname()[1]
        s.close()
        ok = True
        for k in range(1, n):
            t = socket.socket()
            try:
                t.bind(('127.0.0.1', p + k))
            except OSError:
                ok = False
            t.close()
        if ok:
            return p
    raise SystemExit('no run of %d free ports' % n)


def ticks(pid):
    """CPU ticks (user + system) of one process, all its threads."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children(pid):
    out = []
    for d in os.listdir('/proc'):
        if d.isdigit():
            try:
                with open('/proc/%s/stat' % d) as f:
                    if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except OSError:
                pass
    return out


def tree_ticks(pid):
    t = 0
    for p in [pid] + children(pid):
        try:
            t += ticks(p)
        except OSError:
            pass
    return t


class Admin:
    def __init__(self, addr, token):
        self.addr, self.token = addr, token

    def call(self, method, path, doc=None):
        host, port = self.addr.rsplit(':', 1)
        c = http.client.HTTPConnection(host, int(port), timeout=600)
        c.request(method, path, None if doc is None else json.dumps(doc),
                  {'authorization': 'Bearer ' + self.token, 'content-type': 'application/json'})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data


def get(port, path):
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
    c.request('GET', path)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def wrk(port, path, seconds):
    cmd = pin(WRK_CPU) + ['wrk', '-t%d' % THREADS, '-c%d' % CONNS, '-d%ds' % seconds,
                          '--timeout', '10s', '-s', os.path.join(HERE, 'get.lua'),
                          'http://127.0.0.1:%d%s' % (port, path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r'RESULT (.*?) \(', out)
    if not m:
        raise SystemExit('wrk printed no RESULT line:\n' + out)
    return {k: float(v) for k, v in (kv.split('=') for kv in m.group(1).split())}


class Backends(threading.Thread):
    """Samples pg_stat_activity every 200 ms: the most backends seen per application name."""

    def __init__(self, psycopg):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(PG_DSN, autocommit=True, application_name='bench-counter')
        self.stop = threading.Event()
        self.most = {OXBUS_APP: 0, PSYCOPG_APP: 0}

    def run(self):
        while not self.stop.is_set():
            rows = self.conn.execute(
                'SELECT application_name, count(*) FROM pg_stat_activity '
                'WHERE application_name = ANY(%s) GROUP BY 1',
                ([OXBUS_APP, PSYCOPG_APP],)).fetchall()
            for name, n in rows:
                self.most[name] = max(self.most[name], n)
            self.stop.wait(0.2)

    def current(self):
        # The sampler thread owns the connection while it runs: read its figures only.
        return dict(self.most)


def main():
    import psycopg
    os.makedirs(OUTDIR, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='oxbus-outgoing-bench-')
    procs = []
    unavailable = {}
    pg = None
    try:
        # The upstream, on wrk's CPU (it is cheap; the server's CPU stays the server's).
        up = subprocess.Popen(pin(WRK_CPU) + [UPSTREAM_BIN, '--listen', '127.0.0.1:0'],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(up)
        line = up.stdout.readline()
        if not line.startswith('listening on '):
            raise SystemExit('echo_upstream did not start: %r' % line)
        up_addr = line.split()[-1]
        upstream = 'http://%s/echo' % up_addr

        # The table: ROWS rows, primary key id.
        pg = psycopg.connect(PG_DSN, autocommit=True, application_name='bench-setup')
        pg.execute('CREATE TABLE %s (id integer PRIMARY KEY, name text NOT NULL, '
                   'qty integer NOT NULL, created timestamptz NOT NULL DEFAULT now())' % TABLE)
        pg.execute("INSERT INTO %s (id, name, qty) SELECT i, 'customer ' || i, i %% 97 "
                   'FROM generate_series(1, %d) i' % (TABLE, ROWS))
        pg.execute('ANALYZE %s' % TABLE)

        # The server: every variant on the same workers.
        port = free_port_run(2)
        env = dict(os.environ, OXBUS_SERVER_PYTHON=sys.executable, BENCH_UPSTREAM=upstream,
                   BENCH_PG_DSN=PG_DSN, BENCH_PG_TABLE=TABLE, BENCH_PG_ROWS=str(ROWS),
                   BENCH_PSYCOPG_POOL_MAX=str(PSYCOPG_POOL_MAX), BENCH_PSYCOPG_APP=PSYCOPG_APP)
        log = open(os.path.join(OUTDIR, 'server.log'), 'w')
        envdir = os.path.join(tmp, 'env')
        server = subprocess.Popen(pin(SERVER_CPU) + [OXBUS, 'quickstart', envdir, '--port',
                                                     str(port), '--workers', str(WORKERS),
                                                     '--no-proxy'],
                                  stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
        procs.append(server)
        deadline = time.time() + 90
        while True:
            try:
                if get(port, '/readyz')[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit('the server did not start; see %s/server.log' % OUTDIR)
            time.sleep(0.1)
        admin = Admin('127.0.0.1:%d' % (port + 1),
                      open(os.path.join(envdir, 'admin.token')).read().strip())

        def ok(method, path, doc=None):
            st, data = admin.call(method, path, doc)
            if st >= 300:
                raise SystemExit('admin %s %s: %d %s' % (method, path, st, data[:500]))
            return data

        ok('POST', '/v1/modules', {'modules': [{'name': 'bench_outgoing',
                                                'source': open(os.path.join(HERE, 'svc.py')).read()}]})
        for v in REST + SQL:
            ok('POST', '/v1/channels', {'name': 'bench-' + v, 'url_path': '/bench/' + v.replace('.', '/'),
                                        'methods': ['GET'], 'service': 'bench.' + v})
        st, data = admin.call('PUT', '/v1/outgoing/rest/bench-up',
                              {'address': 'http://' + up_addr, 'url_path': '/echo',
                               'pool_size': REST_POOL})
        if st >= 300:
            unavailable['rest.oxbus'] = 'PUT /v1/outgoing/rest/bench-up: %d %s' % (st, data[:300].decode(errors='replace'))
            unavailable['rest.oxbus_async'] = unavailable['rest.oxbus']
        st, data = admin.call('PUT', '/v1/outgoing/sql/bench-pg',
                              {'engine': 'postgresql', 'url': PG_URL, 'pool_max': PG_POOL_MAX})
        if st >= 300:
            unavailable['sql.oxbus'] = 'PUT /v1/outgoing/sql/bench-pg: %d %s' % (st, data[:300].decode(errors='replace'))
        time.sleep(0.5)
        for v in REST + SQL:
            if v in unavailable:
                continue
            st, data = get(port, '/bench/' + v.replace('.', '/'))
            if st != 200:
                unavailable[v] = 'first call: %d %s' % (st, data[:300].decode(errors='replace'))
        for v, why in unavailable.items():
            print('!! %s cannot run in this build: %s' % (v, why), flush=True)

        version = subprocess.run([OXBUS, '--version'], capture_output=True, text=True).stdout.strip()
        commit = subprocess.run(['git', '-C', ROOT, 'describe', '--always', '--dirty'],
                                capture_output=True, text=True).stdout.strip()
        header = ('# %s (%s), %s, %d workers x threads 8, wrk -t%d -c%d, %d s (+%d s warm-up) '
                  'x %d reps, REST pool %d, PostgreSQL pool_max %d, psycopg_pool max_size %d per '
                  'worker (%d workers: up to %d backends), psycopg %s (%s), %d rows'
                  % (version, commit, MODE, WORKERS, THREADS, CONNS, DURATION, WARMUP, REPS,
                     REST_POOL, PG_POOL_MAX, PSYCOPG_POOL_MAX, WORKERS,
                     WORKERS * PSYCOPG_POOL_MAX, psycopg.__version__, psycopg.pq.__impl__, ROWS))
        print(header, flush=True)

        rows = []
        fields = ['rep', 'variant', 'rps', 'p50_ms', 'p99_ms', 'errors', 'cpu_us_per_call',
                  'server_cpu_us_per_call', 'backends_oxbus', 'backends_psycopg', 'other_s']
        groups = [g for g in (REST if 'rest' in PART else [], SQL if 'sql' in PART else []) if g]

        def other_ticks():
            with open('/proc/stat') as f:
                cpu = f.readline().split()[1:]
            return int(cpu[0]) + int(cpu[1]) + int(cpu[2])

        for rep in range(REPS):
            for group in groups:
                runnable = [v for v in group if v not in unavailable]
                k = rep % len(runnable) if runnable else 0
                for v in runnable[k:] + runnable[:k]:
                    path = '/bench/' + v.replace('.', '/')
                    wrk(port, path, WARMUP)
                    counter = Backends(psycopg) if v.startswith('sql.') else None
                    if counter:
                        counter.start()
                    t0, s0, a0 = tree_ticks(server.pid), ticks(server.pid), other_ticks()
                    r = wrk(port, path, DURATION)
                    t1, s1, a1 = tree_ticks(server.pid), ticks(server.pid), other_ticks()
                    most = {}
                    if counter:
                        counter.stop.set()
                        counter.join()
                        most = counter.current()
                        counter.conn.close()
                    n = max(1, int(r['requests']))
                    row = {'rep': rep + 1, 'variant': v, 'rps': round(r['rps']),
                           'p50_ms': r['p50_ms'], 'p99_ms': r['p99_ms'], 'errors': int(r['errors']),
                           'cpu_us_per_call': round((t1 - t0) / TCK / n * 1e6, 1),
                           'server_cpu_us_per_call': round((s1 - s0) / TCK / n * 1e6, 1),
                           'backends_oxbus': most.get(OXBUS_APP, ''),
                           'backends_psycopg': most.get(PSYCOPG_APP, ''),
                           # all CPU of the machine minus the server's tree: wrk, upstream,
                           # PostgreSQL and any neighbour
                           'other_s': round(((a1 - a0) - (t1 - t0)) / TCK, 1)}
                    rows.append(row)
                    print('rep %(rep)d %(variant)-14s %(rps)7d calls/s  p50 %(p50_ms)7.2f ms  '
                          'p99 %(p99_ms)7.2f ms  err %(errors)d  CPU %(cpu_us_per_call)6.1f us/call '
                          '(Rust %(server_cpu_us_per_call)5.1f)  backends oxbus %(backends_oxbus)s '
                          'psycopg %(backends_psycopg)s  other %(other_s)s s' % row, flush=True)
        with open(os.path.join(OUTDIR, 'results.csv'), 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

        loops = []
        if 'loop' in PART:
            for rep in range(REPS):
                # The loop service is sync: the async variant has no loop of its own.
                variants = [v for v in REST + SQL
                            if v not in unavailable and not v.endswith('_async')]
                k = rep % len(variants) if variants else 0
                for v in variants[k:] + variants[:k]:
                    # The Rust server's CPU over all invocations of the variant (a tick is
                    # 10 ms: one invocation of 100 calls is below its resolution).
                    s0, got = ticks(server.pid), []
                    for _ in range(LOOP_INVOKES):
                        st, data = admin.call('POST', '/v1/invoke/bench.loop',
                                              {'variant': v, 'n': LOOP_N})
                        if st != 200:
                            raise SystemExit('bench.loop %s: %d %s' % (v, st, data[:300]))
                        got.append(json.loads(data))
                    s1 = ticks(server.pid)
                    rust = (s1 - s0) / TCK / (LOOP_INVOKES * (LOOP_N + 1)) * 1e6
                    loops.append({'rep': rep + 1, 'variant': v,
                                  **{k: statistics.median(g[k] for g in got) for k in got[0]},
                                  'server_cpu_us_per_call': rust})
            with open(os.path.join(OUTDIR, 'loop.csv'), 'w', newline='') as f:
                w = csv.DictWriter(f, fieldnames=['rep', 'variant', 'calls_per_s', 'us_per_call',
                                                  'worker_cpu_us_per_call', 'server_cpu_us_per_call'])
                w.writeheader()
                w.writerows(loops)

        summary = summarize(header, rows, loops, unavailable)
        print(summary)
        with open(os.path.join(OUTDIR, 'summary.txt'), 'w') as f:
            f.write(summary + '\n')
        print('results: ' + OUTDIR)
        return 3 if unavailable else 0
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if pg is not None:
            pg.execute('DROP TABLE IF EXISTS %s' % TABLE)
            pg.close()
        if not E('KEEP_ENV'):
            shutil.rmtree(tmp, ignore_errors=True)


def summarize(header, rows, loops, unavailable):
    med = lambda v, k: statistics.median(float(r[k]) for r in rows if r['variant'] == v)
    have = {r['variant'] for r in rows}
    out = ['', header, '',
           '| variant | calls/s (median) | per rep | p50 ms | p99 ms | errors | CPU us/call '
           '(server+workers) | of it Rust | backends (most) |',
           '|---|---:|---|---:|---:|---:|---:|---:|---|']
    for v in REST + SQL:
        if v not in have:
            out.append('| %s | n/a | %s | | | | | | |' % (v, unavailable.get(v, 'not run')))
            continue
        per = [r for r in rows if r['variant'] == v]
        back = ''
        if v.startswith('sql.'):
            key = 'backends_oxbus' if v == 'sql.oxbus' else 'backends_psycopg'
            back = str(max(int(r[key] or 0) for r in per))
        out.append('| %s | %.0f | %s | %.2f | %.2f | %d | %.1f | %.1f | %s |'
                   % (v, med(v, 'rps'), ' / '.join(str(r['rps']) for r in per), med(v, 'p50_ms'),
                      med(v, 'p99_ms'), sum(r['errors'] for r in per), med(v, 'cpu_us_per_call'),
                      med(v, 'server_cpu_us_per_call'), back))
    out += ['', 'targets (issue 19), on the medians:']

    def target(label, a, b, key, want, higher=True):
        if a not in have or b not in have:
            out.append('  %-38s n/a (%s did not run)' % (label, a if a not in have else b))
            return
        x, y = med(a, key), med(b, key)
        ratio = x / y if y else float('inf')
        good = ratio >= want if higher else ratio <= want
        per = [float(ra[key]) / float(rb[key]) for ra, rb in
               zip([r for r in rows if r['variant'] == a], [r for r in rows if r['variant'] == b])
               if float(rb[key])]
        out.append('  %-38s %.2fx (%.6g vs %.6g; per rep %s) %s'
                   % (label, ratio, x, y, ', '.join('%.2f' % p for p in per),
                      'pass' if good else 'MISS'))
    target('out.rest calls/s / requests >= 8', 'rest.oxbus', 'rest.requests', 'rps', 8)
    target('out.rest calls/s / httpx >= 5', 'rest.oxbus', 'rest.httpx', 'rps', 5)
    target('out.rest p99 / requests p99 < 1', 'rest.oxbus', 'rest.requests', 'p99_ms', 1, False)
    target('out.rest p99 / httpx p99 < 1', 'rest.oxbus', 'rest.httpx', 'p99_ms', 1, False)
    target('async out.rest calls/s / requests >= 8', 'rest.oxbus_async', 'rest.requests', 'rps', 8)
    target('async out.rest calls/s / httpx >= 5', 'rest.oxbus_async', 'rest.httpx', 'rps', 5)
    target('out.sql calls/s / psycopg >= 1.0', 'sql.oxbus', 'sql.psycopg', 'rps', 1.0)
    if 'sql.oxbus' in have:
        most = max(int(r['backends_oxbus'] or 0) for r in rows if r['variant'] == 'sql.oxbus')
        out.append('  %-38s %d (pool_max %d, %d workers) %s'
                   % ('PG backends of out.sql <= pool_max', most, PG_POOL_MAX, WORKERS,
                      'pass' if most <= PG_POOL_MAX else 'MISS'))
    if 'sql.psycopg' in have:
        most = max(int(r['backends_psycopg'] or 0) for r in rows if r['variant'] == 'sql.psycopg')
        out.append('  %-38s %d (max_size %d x %d workers)'
                   % ('PG backends of psycopg_pool (for scale)', most, PSYCOPG_POOL_MAX, WORKERS))
    if loops:
        out += ['', 'loop microbench: %d calls per invocation, %d invocations per variant per rep '
                '(medians; the Rust server\'s CPU includes one admin call per invocation):' % (LOOP_N, LOOP_INVOKES),
                '| variant | calls/s | us/call (wall) | worker CPU us/call | Rust CPU us/call |',
                '|---|---:|---:|---:|---:|']
        for v in REST + SQL:
            ls = [l for l in loops if l['variant'] == v]
            if not ls:
                continue
            m = lambda k: statistics.median(l[k] for l in ls)
            out.append('| %s | %.0f | %.1f | %.1f | %.1f |' % (v, m('calls_per_s'), m('us_per_call'),
                                                          m('worker_cpu_us_per_call'),
                                                          m('server_cpu_us_per_call')))
    if unavailable:
        out += ['', 'INCOMPLETE: ' + '; '.join('%s: %s' % kv for kv in unavailable.items())]
    return '\n'.join(out)


if __name__ == '__main__':
    sys.exit(main())
