#!/usr/bin/env python3
"""bench/dashboard.py - the dashboard's page render time over a cluster of 3 servers with
1,000 services, and its memory (issue 23).

Creates a fresh PostgreSQL database (as bench/cluster.py does; dropped at the end), starts
servers a, b and c on it (1 worker each, linked over the cluster bus), deploys a module of
SERVICES service classes through A, calls each service once (so every figure table has rows),
then starts `oxbus dashboard` over the three admin APIs with one admin user and signs in as a
browser does. It measures the dashboard's RSS when idle (after start, before any page) and
then renders each page N times in turn over one keep-alive connection, reading the
dashboard's own `Server-Timing: total;dur=` (the time from the request's head to the
answer, the admin API calls included: server-side) and the client's wall time beside it.
Reported: p50 / p99 per page, the worst page's p99 against the target (<= 50 ms), and the
RSS idle (target <= 30 MiB) and after the run.

Usage: bench/dashboard.py [--n 200] [--services 1000] [--port 18741]
       (build first: cargo build --release -j2 -p oxbus-supervisor)
"""
import argparse, http.client, json, os, re, secrets, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402  (the cluster harness: servers on one PostgreSQL database)

OXBUS = cluster.OXBUS
PAGES = ['/', '/servers', '/services', '/services/bench.s0', '/channels', '/caches', '/jobs',
         '/audit', '/services?q=s99']


def module(n):
    out = ['from oxbus import Service\n']
    for i in range(n):
        out.append("class S%d(Service):\n    name = 'bench.s%d'\n\n    def handle(self):\n"
                   "        self.response.payload = {'i': %d}\n" % (i, i, i))
    return '\n'.join(out)


def rss(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    return 0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=200)
    ap.add_argument('--services', type=int, default=1000)
    ap.add_argument('--port', type=int, default=18741)
    a = ap.parse_args()
    if not os.path.exists(OXBUS):
        raise SystemExit('no %s: cargo build --release -j2 -p oxbus-supervisor' % OXBUS)
    tmp = tempfile.mkdtemp(prefix='oxbus-bench-dash-')
    db = 'oxbus_bench_dash_%d' % os.getpid()
    cluster.psql('CREATE DATABASE %s' % db)
    servers, dash = [], None
    try:
        secret = os.path.join(tmp, 'cluster.secret')
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, secrets.token_hex(24).encode())
        os.close(fd)
        key = secrets.token_hex(32)
        for i, name in enumerate(cluster.NAMES):
            s = cluster.Server(name, tmp, a.port + 10 * i, cluster.db_url(db), secret, key,
                               'python3', 1, 1000)
            servers.append(s)
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready(1)
        A = servers[0]
        st, body = A.admin.request('POST', '/v1/modules', json.dumps(
            {'modules': [{'name': 'benchdash', 'source': module(a.services)}]}))
        if st != 200:
            raise SystemExit('deploy: %d %s' % (st, body[:500]))
        for s in servers:
            for i in range(0, a.services, 7):
                st, _ = s.admin.request('POST', '/v1/invoke/bench.s%d' % i, b'{}')
                if st != 200:
                    raise SystemExit('invoke bench.s%d on %s: %d' % (i, s.name, st))
        # The admin API calls the heaviest pages make, timed alone (A, keep-alive).
        api_ms = {}
        for path in ('/v1/services', '/v1/services/stats', '/v1/info'):
            ts = []
            for _ in range(30):
                t0 = time.perf_counter()
                st, body = A.admin.request('GET', path)
                ts.append((time.perf_counter() - t0) * 1000)
                if st != 200:
                    raise SystemExit('%s: %d' % (path, st))
            api_ms[path] = (pct(ts, 0.5), pct(ts, 0.99), len(body))
        # The dashboard, its user (through A's admin API, as an operator would).
        ddir = os.path.join(tmp, 'dash')
        os.makedirs(ddir)
        dport = a.port + 50
        conf = os.path.join(ddir, 'dashboard.toml')
        with open(conf, 'w') as f:
            f.write('[dashboard]\nlisten = "127.0.0.1:%d"\nservers = [%s]\n' % (
                dport, ', '.join('"%s"' % s.admin_url() for s in servers)))
        pw = 'bench-password-%s' % secrets.token_hex(4)
        r = subprocess.run([OXBUS, 'dashboard', 'user', 'add', 'bench', '--role', 'admin',
                            '--password-stdin', '--config', conf, '--server', A.admin_url(),
                            '--token', A.token], input=pw + '\n', capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit('user add: %s' % r.stderr)
        dash = subprocess.Popen([OXBUS, 'dashboard', '--config', conf],
                                stdout=open(os.path.join(ddir, 'dashboard.log'), 'w'),
                                stderr=subprocess.STDOUT, preexec_fn=cluster.own_session)
        deadline = time.time() + 20
        while True:
            try:
                c = http.client.HTTPConnection('127.0.0.1', dport, timeout=5)
                c.request('GET', '/healthz')
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit('the dashboard did not start')
            time.sleep(0.05)
        time.sleep(1.0)  # settle: the idle figure is taken with nothing in flight
        idle = rss(dash.pid)
        # Sign in as a browser does: the form's token and its cookie, then the password.
        c = http.client.HTTPConnection('127.0.0.1', dport, timeout=30)
        c.request('GET', '/signin')
        page = c.getresponse().read().decode()
        pre = re.search(r'name="pre" value="([0-9a-f]+)"', page).group(1)
        c.request('POST', '/signin', 'pre=%s&next=%%2F&user=bench&password=%s' % (pre, pw),
                  {'Content-Type': 'application/x-www-form-urlencoded',
                   'Cookie': 'oxdash_pre=' + pre})
        r = c.getresponse()
        r.read()
        cookie = [v for k, v in r.getheaders() if k.lower() == 'set-cookie'
                  and v.startswith('oxdash_session=')][0].split(';')[0]
        if r.status != 303:
            raise SystemExit('sign-in: %d' % r.status)
        server_ms = {p: [] for p in PAGES}
        wall_ms = {p: [] for p in PAGES}
        sizes = {}
        for p in PAGES:  # warm-up
            c.request('GET', p, headers={'Cookie': cookie})
            c.getresponse().read()
        for _ in range(a.n):
            for p in PAGES:
                t0 = time.perf_counter()
                c.request('GET', p, headers={'Cookie': cookie})
                r = c.getresponse()
                body = r.read()
                wall_ms[p].append((time.perf_counter() - t0) * 1000)
                if r.status != 200:
                    raise SystemExit('%s: %d %s' % (p, r.status, body[:300]))
                timing = r.getheader('server-timing') or ''
                server_ms[p].append(float(timing.split('dur=')[1]))
                sizes[p] = len(body)
        after = rss(dash.pid)
        print('# bench/dashboard.py: 3 servers (1 worker each, PostgreSQL store, bus), %d '
              'services, %d renders per page; loadavg %s' % (a.services, a.n, cluster.loadavg()))
        print('%-22s %9s %12s %12s %12s %12s' % ('page', 'bytes', 'server p50', 'server p99',
                                                 'wall p50', 'wall p99'))
        worst = 0.0
        for p in PAGES:
            worst = max(worst, pct(server_ms[p], 0.99))
            print('%-22s %9d %10.2f ms %10.2f ms %10.2f ms %10.2f ms' % (
                p, sizes[p], pct(server_ms[p], 0.5), pct(server_ms[p], 0.99),
                pct(wall_ms[p], 0.5), pct(wall_ms[p], 0.99)))
        for path, (p50, p99, size) in api_ms.items():
            print('admin API %-19s %9d %10.2f ms %10.2f ms   (A alone, before the dashboard)' % (
                path, size, p50, p99))
        print('worst page p99 (server side): %.2f ms (target <= 50 ms): %s' % (
            worst, 'met' if worst <= 50 else 'NOT met'))
        print('dashboard RSS idle: %.1f MiB (target <= 30 MiB): %s; after the run: %.1f MiB' % (
            idle / 1048576, 'met' if idle <= 30 * 1048576 else 'NOT met', after / 1048576))
    finally:
        if dash is not None:
            dash.terminate()
            dash.wait()
        for s in servers:
            s.stop()
        try:
            cluster.psql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % db)
        except RuntimeError as e:
            print('could not drop %s: %s' % (db, e), file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
