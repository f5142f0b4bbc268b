#!/usr/bin/env python3
"""bench/cluster.py - a cluster of 3 servers x 8 workers on loopback: deploy and config change
propagation (issue 4).

Creates a fresh PostgreSQL database on the machine's server (`CREATE DATABASE
oxbus_bench_<pid>` through psql; dropped at the end), starts servers a, b and c on it (each
its own temp env with a server.toml, `oxbus server --config`), all with one 48-byte cluster
secret so they link over the cluster bus, waits for `/readyz` with every worker ready and for
`oxbus cluster status --output json` to list every server and show the bus links, deploys the
benchmark service and creates its channel through A's admin API, then measures:

  1. deploy, per round (after warm-up rounds):
     - `oxbus deploy --server http://127.0.0.1:<A admin> --token T benchcluster.py` (each time
       a new version): the CLI's wall time, then, polling B's and C's HTTP channel on
       keep-alive connections in a tight loop, until both serve the new version. `all` is
       max(cli, B first seen serving it, C first seen serving it) from the CLI's start; a
       server already serving it when the CLI returned is seen at the first poll (one round
       trip late: an upper bound). A must serve it when the CLI returns (checked). With the
       bus, A's deploy report includes B's and C's answers (their workers' acks), so the
       CLI returns only once every server runs it.
     - the same deploy (the next version) over one keep-alive connection to A's admin API,
       for the server's own split: `total_ms`, `check_ms`, `store_ms`, A's slowest
       activation, the rest (waiting for B and C), and B's / C's slowest activation.
  2. config change: POST /v1/channels on A's admin API (keep-alive), then poll B and C until
     the new channel routes (200 instead of 404), from A's 201 response; then DELETE it and
     poll until both answer 404 again, from A's 200. Each change a new channel and path.

Then the same with the bus off (no secret_file: servers follow the store by checking its
version every `sync_interval_ms`, 1000), on a fresh database and fresh servers, for
comparison; there each change waits a random 0..1000 ms first, so that it does not always
land right after the peers' version check. Targets (issue 4): deploy p50 <= 50 ms, config
change p50 <= 20 ms. Prints /proc/loadavg with the figures and a target table.

Usage: bench/cluster.py [--n 100] [--n-nobus 30] [--bus both|on|off] [--gap MS]
       [--port 18641]   (build first: cargo build --release -j2 -p oxbus-supervisor;
       OXBUS_BIN=<path> runs another build; OXBUS_BENCH_PG=<admin URL> another PostgreSQL)
"""
import argparse, http.client, json, os, random, re, secrets, shutil, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# OXBUS_BIN: another build to compare with (an A/B of two commits), or a stable copy.
OXBUS = os.environ.get('OXBUS_BIN') or os.path.join(ROOT, 'target', 'release', 'oxbus')
# Where CREATE / DROP DATABASE run; the servers use the same server with the new database.
PG_ADMIN = os.environ.get('OXBUS_BENCH_PG', 'postgres://postgres@127.0.0.1:5432/test')
NAMES = ('a', 'b', 'c')
PATH = '/bench/cluster'
SERVICE = 'bench.cluster'


def module(v):
    return ("from oxbus import Service\n\nclass S(Service):\n    name = %r\n\n"
            "    def handle(self):\n        self.response.payload = {'v': %d}\n" % (SERVICE, v))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def loadavg():
    with open('/proc/loadavg') as f:
        return f.read().strip()


def psql(sql):
    r = subprocess.run(['psql', PG_ADMIN, '-v', 'ON_ERROR_STOP=1', '-qAt', '-c', sql],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError('psql %r: %s' % (sql, r.stderr.strip()))
    return r.stdout


def db_url(db):
    base = PG_ADMIN.rsplit('/', 1)[0]
    return '%s/%s' % (base, db)


def own_session():
    """In a server's child before exec: its own session (a Ctrl-C in the terminal reaches the
    harness only, which stops the servers in order), and SIGTERM when the harness dies."""
    os.setsid()
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Conn:
    """One keep-alive HTTP connection. A reused connection that the server closed meanwhile
    is opened again once; nothing else is retried (a deploy is never sent twice)."""

    def __init__(self, port, headers=None):
        self.port, self.headers, self.c = port, headers or {}, None

    def request(self, method, path, body=None):
        reused = self.c is not None
        try:
            if self.c is None:
                # Long enough for a deploy whose peers time out (15 s in the server).
                self.c = http.client.HTTPConnection('127.0.0.1', self.port, timeout=30)
            self.c.request(method, path, body, self.headers)
            r = self.c.getresponse()
            return r.status, r.read()
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            self.close()
            if not reused:
                raise
            return self.request(method, path, body)
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None


class Server:
    """One server of the cluster: its env dir, settings, process and connections."""

    def __init__(self, name, tmp, port, url, secret_file, key, python, workers, sync_ms):
        self.name, self.port, self.admin_port = name, port, port + 1
        self.dir = os.path.join(tmp, name)
        os.makedirs(os.path.join(self.dir, 'services'), exist_ok=True)
        cluster = '[cluster]\nserver = "%s"\nbus_listen = "127.0.0.1:0"\nsync_interval_ms = %d\n' % (
            name, sync_ms)
        if secret_file:
            cluster += 'secret_file = %s\n' % json.dumps(secret_file)
        with open(os.path.join(self.dir, 'server.toml'), 'w') as f:
            f.write('[server]\nlisten = "127.0.0.1:%d"\nworkers = %d\npython = %s\n'
                    'services_dir = "services"\nlog_level = "info"\n\n'
                    '[store]\nurl = %s\nkey_file = "secret.key"\n\n'
                    '[admin]\nlisten = "127.0.0.1:%d"\ntoken_file = "admin.token"\n\n%s'
                    % (port, workers, json.dumps(python), json.dumps(url), self.admin_port,
                       cluster))
        # One secrets key for the three (they share one store).
        fd = os.open(os.path.join(self.dir, 'secret.key'), os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, key.encode() + b'\n')
        os.close(fd)
        self.log = os.path.join(self.dir, 'server.log')
        self.proc = None
        self.log_at_stop = None
        self.http = Conn(port)
        self.token = None

    def start(self):
        self.proc = subprocess.Popen([OXBUS, 'server', '--config',
                                      os.path.join(self.dir, 'server.toml')],
                                     stdin=subprocess.DEVNULL, stdout=open(self.log, 'a'),
                                     stderr=subprocess.STDOUT, preexec_fn=own_session)

    def wait_ready(self, workers, timeout=60):
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError('server %s exited with %s; see %s'
                                   % (self.name, self.proc.returncode, self.log))
            try:
                st, body = Conn(self.port).request('GET', '/readyz')
                if st == 200 and json.loads(body)['workers_ready'] == workers:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError('server %s not ready; see %s' % (self.name, self.log))
            time.sleep(0.05)
        with open(os.path.join(self.dir, 'admin.token')) as f:
            self.token = f.read().strip()
        self.admin = Conn(self.admin_port, {'Authorization': 'Bearer ' + self.token,
                                            'Content-Type': 'application/json'})

    def admin_url(self):
        return 'http://127.0.0.1:%d' % self.admin_port

    def cluster_status(self):
        r = subprocess.run([OXBUS, 'cluster', 'status', '--output', 'json',
                            '--server', self.admin_url(), '--token', self.token],
                           capture_output=True, text=True)
        try:
            return json.loads(r.stdout)
        except ValueError:
            return {}

    def stop(self):
        """SIGTERM (the server drains and stops its workers); SIGKILL to its group after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc and self.proc.returncode
        for c in (self.http, getattr(self, 'admin', None)):
            if c:
                c.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def problems(self):
        """WARN / ERROR lines logged before the harness stopped the servers (ANSI colours
        stripped; at the stop the others log their links to it going down)."""
        try:
            with open(self.log, errors='replace') as f:
                text = f.read(self.log_at_stop)
        except OSError:
            return []
        text = re.sub(r'\x1b\[[0-9;]*m', '', text)
        return [l for l in text.splitlines() if re.search(r'\b(WARN|ERROR)\b', l)]


def wait_all(servers, path, ok, timeout):
    """Polls `path` on each server (round robin, no pause) until `ok(status, body)`; returns
    {name: perf_counter when first seen ok}; a server that never got there is missing."""
    pending = list(servers)
    seen = {}
    end = time.perf_counter() + timeout
    while pending:
        for s in list(pending):
            st, body = s.http.request('GET', path)
            if ok(st, body):
                seen[s.name] = time.perf_counter()
                pending.remove(s)
        if pending and time.perf_counter() > end:
            break
    return seen


def serves(v):
    def ok(st, body):
        if st != 200:
            return False
        try:
            return json.loads(body).get('v') == v
        except ValueError:
            return False
    return ok


class Cluster:
    def __init__(self, args, tmp, db, bus):
        self.bus = bus
        self.db = db
        self.dir = os.path.join(tmp, 'bus-on' if bus else 'bus-off')
        os.makedirs(self.dir)
        secret_file = None
        if bus:
            secret_file = os.path.join(self.dir, 'cluster.secret')
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, secrets.token_hex(24).encode())  # 48 bytes
            os.close(fd)
        key = secrets.token_hex(32)
        self.servers = [Server(n, self.dir, args.port + 2 * i, db_url(db), secret_file, key,
                               args.python, args.workers, args.sync_ms)
                        for i, n in enumerate(NAMES)]
        self.a, self.b, self.c = self.servers
        self.workers = args.workers

    def start(self):
        t = time.time()
        # A first (it runs the store's migrations), then B and C together.
        self.a.start()
        self.a.wait_ready(self.workers)
        for s in self.servers[1:]:
            s.start()
        for s in self.servers[1:]:
            s.wait_ready(self.workers)
        deadline = time.time() + 60
        while True:
            ok = True
            for s in self.servers:
                st = s.cluster_status()
                names = sorted(x.get('name') for x in st.get('servers', []))
                if names != list(NAMES):
                    ok = False
                elif self.bus:
                    peers = sorted(l['peer'] for l in st.get('bus', {}).get('links', []))
                    ok = ok and peers == [n for n in NAMES if n != s.name]
                elif st.get('bus', {}).get('running'):
                    raise RuntimeError('bus running without a secret file on %s' % s.name)
                if not ok:
                    break
            if ok:
                break
            if time.time() > deadline:
                raise RuntimeError('cluster not formed: %s' % json.dumps(st))
            time.sleep(0.2)
        return time.time() - t

    def stop(self):
        for s in self.servers:
            try:
                s.log_at_stop = os.path.getsize(s.log)
            except OSError:
                pass
        return [s.stop() for s in self.servers]


def pause(gap, jitter):
    """The wait before a change: `gap` ms plus a uniform random 0..`jitter` ms."""
    time.sleep((gap + random.uniform(0, jitter)) / 1000)


def deploy_phase(cl, n, warm, v0, timeout, gap, jitter):
    """Per round: one deploy with the CLI, then one over A's admin API (keep-alive, with the
    server's own timings), each followed by polling B and C until they serve it."""
    mod = os.path.join(cl.dir, 'benchcluster.py')
    x = {k: [] for k in ('cli', 'all', 'b', 'c', 'spawn', 'loads', 'cli_total', 'http',
                         'http_all', 'total', 'check', 'store', 'act_a', 'peers', 'act_peer')}
    late = 0          # deploys some server did not serve within the timeout
    peers_ok = peers_failed = 0  # other servers in the reports: fine / failed
    a_stale = 0       # A not serving the new version once its deploy returned
    failures = []     # deploys answered with an error (a peer that did not answer: 500)

    def failed(v, why):
        failures.append(v)
        print('  deploy %d failed: %s' % (v, why.strip()[:400]), file=sys.stderr)
        if len(failures) > 10:
            raise RuntimeError('more than 10 deploys failed')

    for i in range(warm + n):
        keep = i >= warm
        # 1. The CLI.
        v = v0 + 2 * i
        with open(mod, 'w') as f:
            f.write(module(v))
        pause(gap, jitter)
        t0 = time.perf_counter()
        r = subprocess.run([OXBUS, 'deploy', '--server', cl.a.admin_url(), '--token',
                            cl.a.token, mod], capture_output=True)
        t1 = time.perf_counter()
        if r.returncode != 0:
            failed(v, 'cli exit %d: %s%s' % (r.returncode, r.stdout.decode(), r.stderr.decode()))
        # The report: a line per other server ("  server b: ok (8 worker(s))" or
        # "FAILED: ...") and "config version N, K worker(s) acknowledged, X ms".
        out = r.stdout.decode()
        peers_ok += sum(('server %s: ok' % s.name) in out for s in (cl.b, cl.c))
        peers_failed += out.count(': FAILED')
        m = re.search(r'acknowledged, ([0-9.]+) ms', out)
        seen = wait_all([cl.b, cl.c], PATH, serves(v), timeout)
        if not serves(v)(*cl.a.http.request('GET', PATH)):
            a_stale += 1
        ts = time.perf_counter()
        subprocess.run(['/bin/true'], capture_output=True)
        dsp = (time.perf_counter() - ts) * 1000
        if len(seen) < 2:
            late += 1
            print('  deploy %d: not served by %s within %g s'
                  % (v, [s.name for s in (cl.b, cl.c) if s.name not in seen], timeout),
                  file=sys.stderr)
        elif keep:
            x['cli'].append((t1 - t0) * 1000)
            x['all'].append((max(t1, seen['b'], seen['c']) - t0) * 1000)
            x['b'].append((seen['b'] - t0) * 1000)
            x['c'].append((seen['c'] - t0) * 1000)
            x['spawn'].append(dsp)
            if m:
                x['cli_total'].append(float(m.group(1)))
            x['loads'].append(os.getloadavg()[0])
        # 2. The admin API, for the server's own split.
        v += 1
        body = json.dumps({'modules': [{'name': 'benchcluster', 'source': module(v)}]})
        pause(gap, jitter)
        t0 = time.perf_counter()
        st, resp = cl.a.admin.request('POST', '/v1/modules', body)
        t1 = time.perf_counter()
        doc = json.loads(resp)
        if st != 200:
            failed(v, 'http %d: %s' % (st, resp[:500].decode(errors='replace')))
            if st != 500 or 'workers' not in doc:
                continue
        seen = wait_all([cl.b, cl.c], PATH, serves(v), timeout)
        if not serves(v)(*cl.a.http.request('GET', PATH)):
            a_stale += 1
        peers = doc.get('servers', [])
        peers_ok += sum(1 for p in peers if p.get('ok'))
        peers_failed += sum(1 for p in peers if not p.get('ok'))
        if len(seen) < 2:
            late += 1
            print('  deploy %d (http): not served by %s within %g s'
                  % (v, [s.name for s in (cl.b, cl.c) if s.name not in seen], timeout),
                  file=sys.stderr)
        elif keep:
            x['http'].append((t1 - t0) * 1000)
            x['http_all'].append((max(t1, seen['b'], seen['c']) - t0) * 1000)
            act = max(w['ms'] for w in doc['workers'])
            x['total'].append(doc['total_ms'])
            x['check'].append(doc['check_ms'])
            x['store'].append(doc.get('store_ms', 0.0))
            x['act_a'].append(act)
            # What the deploy spent after A's own activation: the other servers' answers.
            x['peers'].append(doc['total_ms'] - doc['check_ms'] - doc.get('store_ms', 0.0) - act)
            for p in peers:
                ws = p.get('answer', {}).get('workers') or []
                if ws:
                    x['act_peer'].append(max(w['ms'] for w in ws))
    x.update(late=late + len(failures), failed=len(failures), a_stale=a_stale, peers_ok=peers_ok, peers_failed=peers_failed,
             count=2 * (warm + n))
    return x


def channel_phase(cl, n, warm, tag, timeout, gap, jitter):
    create, delete, http_c, http_d, loads = [], [], [], [], []
    late = 0
    a_stale = 0
    for i in range(warm + n):
        name = 'bench-%s-%d' % (tag, i)
        path = '/bench/%s/ch%d' % (tag, i)
        body = json.dumps({'name': name, 'url_path': path, 'methods': ['GET'],
                           'service': SERVICE})
        pause(gap, jitter)
        t0 = time.perf_counter()
        st, resp = cl.a.admin.request('POST', '/v1/channels', body)
        t1 = time.perf_counter()
        if st != 201:
            raise RuntimeError('create channel: %s %s' % (st, resp[:300]))
        seen = wait_all([cl.b, cl.c], path, lambda st, _: st == 200, timeout)
        if cl.a.http.request('GET', path)[0] != 200:
            a_stale += 1
        ok_c = len(seen) == 2
        dc = (max(seen.values()) - t1) * 1000 if ok_c else None
        pause(gap, jitter)
        t2 = time.perf_counter()
        st, resp = cl.a.admin.request('DELETE', '/v1/channels/' + name)
        t3 = time.perf_counter()
        if st != 200:
            raise RuntimeError('delete channel: %s %s' % (st, resp[:300]))
        seen = wait_all([cl.b, cl.c], path, lambda st, _: st == 404, timeout)
        ok_d = len(seen) == 2
        dd = (max(seen.values()) - t3) * 1000 if ok_d else None
        if not (ok_c and ok_d):
            late += 1
            print('  channel %s: %s not propagated within %g s'
                  % (name, 'create' if not ok_c else 'delete', timeout), file=sys.stderr)
            continue
        if i >= warm:
            create.append(dc)
            delete.append(dd)
            http_c.append((t1 - t0) * 1000)
            http_d.append((t3 - t2) * 1000)
            loads.append(os.getloadavg()[0])
    return dict(create=create, delete=delete, http_c=http_c, http_d=http_d, loads=loads,
                late=late, a_stale=a_stale)


def run_mode(args, tmp, db, bus):
    """One cluster (bus on or off) on a fresh database: setup, both phases, stop."""
    psql('CREATE DATABASE %s' % db)
    res = {'bus': bus}
    cl = None
    try:
        cl = Cluster(args, tmp, db, bus)
        res['start_s'] = cl.start()
        res['sync_ms'] = args.sync_ms
        n = args.n if bus else args.n_nobus
        timeout = args.timeout
        # The benchmark service (version 0) and its channel, through A's admin API.
        st, body = cl.a.admin.request('POST', '/v1/modules', json.dumps(
            {'modules': [{'name': 'benchcluster', 'source': module(0)}]}))
        if st != 200:
            raise RuntimeError('first deploy: %s %s' % (st, body[:300]))
        st, body = cl.a.admin.request('POST', '/v1/channels', json.dumps(
            {'name': 'bench-cluster', 'url_path': PATH, 'methods': ['GET'], 'service': SERVICE}))
        if st != 201:
            raise RuntimeError('channel: %s %s' % (st, body[:300]))
        if len(wait_all(cl.servers, PATH, serves(0), 30)) != 3:
            raise RuntimeError('the benchmark channel does not serve on every server')
        res['load_before'] = loadavg()
        print('%s: cluster up in %.1f s, load %s; %d deploys ...'
              % ('bus on' if bus else 'bus off', res['start_s'], res['load_before'], n),
              file=sys.stderr)
        # Without the bus, a change right after the last one propagated (at B's and C's
        # version check) would wait a whole interval: a random pause unlocks the phases.
        jitter = args.jitter if args.jitter is not None else (0 if bus else args.sync_ms)
        res['gap'], res['jitter'] = args.gap, jitter
        res['deploy'] = deploy_phase(cl, n, args.warmup, 1, timeout, args.gap, jitter)
        res['load_mid'] = loadavg()
        print('  %d channel changes ...' % n, file=sys.stderr)
        res['channel'] = channel_phase(cl, n, args.warmup, 'on' if bus else 'off', timeout,
                                       args.gap, jitter)
        res['load_after'] = loadavg()
        res['cluster'] = cl.a.cluster_status()
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        stop_signals = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        try:
            if cl is not None:
                res['exit_codes'] = cl.stop()
                res['problems'] = {s.name: s.problems() for s in cl.servers}
            psql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % db)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    return res


def line(label, xs):
    if not xs:
        return '%-44s   (no samples)' % label
    return ('%-44s %4d  p50 %8.2f   p99 %8.2f   max %8.2f ms'
            % (label, len(xs), statistics.median(xs), pct(xs, 0.99), max(xs)))


def report(results, head):
    print()
    print('cluster of 3 servers x %d workers on loopback, PostgreSQL store, at %s'
          % (results[0]['workers'], head))
    for r in results:
        d, c = r['deploy'], r['channel']
        print()
        print('== bus %s, %d rounds, each change after %g ms + random 0..%g ms'
              % ('ON' if r['bus'] else 'OFF (version check every %d ms)' % r['sync_ms'],
                 len(d['cli']), r['gap'], r['jitter']))
        print('   /proc/loadavg before: %s | after deploys: %s | after channels: %s'
              % (r['load_before'], r['load_mid'], r['load_after']))
        print('   load1 during deploys %.2f-%.2f, during channel changes %.2f-%.2f'
              % (min(d['loads'] or [0]), max(d['loads'] or [0]),
                 min(c['loads'] or [0]), max(c['loads'] or [0])))
        print(line('deploy: oxbus deploy CLI wall time', d['cli']))
        print(line('deploy: CLI start -> A, B and C serve it', d['all']))
        print(line('  CLI start -> B first seen serving it', d['b']))
        print(line('  CLI start -> C first seen serving it', d['c']))
        print(line('  spawn /bin/true (harness share of cli)', d['spawn']))
        print(line('  server total_ms as the CLI printed it', d['cli_total']))
        print(line('deploy: admin API (keep-alive) wall time', d['http']))
        print(line('deploy: API start -> A, B and C serve it', d['http_all']))
        print(line('  server total_ms', d['total']))
        print(line('  - check in one worker of A', d['check']))
        print(line('  - store commit', d['store']))
        print(line("  - slowest of A's activations", d['act_a']))
        print(line('  - then B and C answering (the rest)', d['peers']))
        print(line("    slowest activation on B or C", d['act_peer']))
        print(line('channel: A 201 -> B and C route it (200)', c['create']))
        print(line('  POST /v1/channels on A (keep-alive)', c['http_c']))
        print(line('channel: A 200 -> B and C 404 (deleted)', c['delete']))
        print(line('  DELETE /v1/channels/NAME on A', c['http_d']))
        notes = []
        if r['bus']:
            notes.append('deploy reports listed B and C as ok in %d of %d cases (%d FAILED)'
                         % (d['peers_ok'], 2 * d['count'], d['peers_failed']))
        if d['failed']:
            notes.append('%d deploys answered with an error (see above)' % d['failed'])
        if d['late'] or c['late']:
            notes.append('not propagated within the timeout: %d deploys, %d channel changes'
                         % (d['late'], c['late']))
        if d['a_stale'] or c['a_stale']:
            notes.append('A itself not serving right after its own answer: %d deploys, '
                         '%d channels' % (d['a_stale'], c['a_stale']))
        if any(x != 0 for x in r['exit_codes']):
            notes.append('exit codes after SIGTERM: %s' % r['exit_codes'])
        for name, lines in r['problems'].items():
            if lines:
                notes.append('server %s logged %d WARN/ERROR lines, e.g. %s'
                             % (name, len(lines), lines[0][:300]))
        for n in notes:
            print('   note: ' + n)
    print()
    print('| target (issue 4) | bus | result p50 (p99) | verdict |')
    print('| --- | --- | ---: | --- |')
    for r in results:
        d, c = r['deploy'], r['channel']
        bus = 'on' if r['bus'] else 'off'
        for label, xs, target, late in (
                ('deploy to 3 x 8 as the CLI sees it (CLI wall) <= 50 ms', d['cli'],
                 50 if r['bus'] else None, d['late']),
                ('deploy until every server serves it <= 50 ms', d['all'], 50, d['late']),
                ('config change reaches all servers <= 20 ms', c['create'], 20, c['late'])):
            if not xs:
                print('| %s | %s | no samples | MISS |' % (label, bus))
                continue
            p50 = statistics.median(xs)
            if target is None:  # without the bus the CLI's answer covers A only
                verdict = 'n/a (A only)'
            else:
                verdict = 'PASS' if p50 <= target and not late else 'MISS'
            print('| %s | %s | %.1f ms (%.1f) | %s |' % (label, bus, p50, pct(xs, 0.99), verdict))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].replace('\n', ' '))
    ap.add_argument('--n', type=int, default=100, help='deploys and channel changes, bus on')
    ap.add_argument('--n-nobus', type=int, default=30, help='the same with the bus off')
    ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--bus', choices=('both', 'on', 'off'), default='both')
    ap.add_argument('--port', type=int, default=18641,
                    help='A HTTP; A admin = port + 1, B = port + 2/3, C = port + 4/5')
    ap.add_argument('--workers', type=int, default=8)
    ap.add_argument('--sync-ms', type=int, default=1000, help='cluster.sync_interval_ms')
    ap.add_argument('--timeout', type=float, default=10.0,
                    help='s to wait for a change to reach B and C')
    ap.add_argument('--python', default=sys.executable,
                    help="the workers' interpreter (default: the one running this script)")
    ap.add_argument('--gap', type=float, default=0.0, help='ms to wait before each change')
    ap.add_argument('--jitter', type=float, default=None,
                    help='plus a random 0..JITTER ms (default: 0 with the bus, sync-ms without)')
    ap.add_argument('--json', help='also write every sample to this file')
    ap.add_argument('--keep', action='store_true', help='keep the temp dir (logs)')
    args = ap.parse_args()
    if not os.access(OXBUS, os.X_OK):
        sys.exit('no %s: cargo build --release -j2 -p oxbus-supervisor (or set OXBUS_BIN)' % OXBUS)
    if shutil.which('psql') is None:
        sys.exit('psql is needed to create the benchmark database')

    # SIGTERM / SIGHUP end the run like Ctrl-C: through the finally clauses (servers stopped,
    # database dropped, temp dir removed).
    def interrupted(sig, _frame):
        raise KeyboardInterrupt('signal %d' % sig)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    tmp = tempfile.mkdtemp(prefix='oxbus-cluster-bench.')
    db = 'oxbus_bench_%d' % os.getpid()
    modes = {'both': (True, False), 'on': (True,), 'off': (False,)}[args.bus]
    results = []
    try:
        for bus in modes:
            r = run_mode(args, tmp, db, bus)
            r['workers'] = args.workers
            results.append(r)
        head = subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(['git', '-C', ROOT, 'status', '--porcelain', '--', 'supervisor',
                                'ipc-protocol', 'python-worker'],
                               capture_output=True, text=True).stdout.strip()
        head += ' (+ uncommitted changes)' if dirty else ''
        report(results, '%s, binary %s' % (head, OXBUS))
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(results, f, indent=1)
    except KeyboardInterrupt:
        print('interrupted: servers stopped, %s dropped' % db, file=sys.stderr)
        sys.exit(130)
    except BaseException:
        args.keep = True  # the servers' logs say why
        raise
    finally:
        if args.keep:
            print('kept %s' % tmp, file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
