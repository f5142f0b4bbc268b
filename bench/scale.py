#!/usr/bin/env python3
"""bench/scale.py - 1000 services: deploy time, memory per service, server start (issue 3).

For each layout (`--layouts 10,1`: 10 services per module = 100 modules for 1000 services,
then 1 service per module = 1000 modules), on a fresh quickstart environment with 8 workers:

  1. start     `oxbus server` with nothing deployed: wall time from exec to `/readyz` 200
               with every worker ready (`--starts` runs; context for step 6);
  2. memory    RSS, PSS and USS (smaps_rollup) of every worker, idle, before the deploy;
  3. deploy    all N services in ONE admin API call (POST /v1/modules, a fresh connection):
               wall time from sending the request to the report, which comes after the
               checking worker imported everything, the store committed and all 8 workers
               acknowledged the activation (every ack is checked, and every service listed);
  4. memory    the same figures after the deploy, idle: (after - before) / N per worker is
               the resident memory per idle service (median and max over the workers);
  5. redeploy  the same N services, changed, `--reps` times each way: one API call, and the
               CLI `oxbus deploy --env ENV f1.py ... fM.py` (process start, reading the
               files, HTTP, the whole deploy); then memory again (nothing may pile up);
  6. start     SIGTERM, then `oxbus server` again with the N services stored: wall time to
               `/readyz` 200 with every worker ready (every worker loads every stored module
               with one `modules.activate` before it takes traffic), `--starts` runs; then
               as many with the workers' compiled-code cache deleted first (cold: every
               worker compiles every module).

Targets (issue 3): N=1000 deployed <= 1 s; <= 50 KB per idle service per worker;
start with 1000 stored <= 2 s. Every line of output carries the 1-minute load average.

Usage: bench/scale.py [--services 1000] [--layouts 10,1] [--workers 8] [--reps 3]
                      [--starts 3] [--port 18621] [--python PATH]
Build first: cargo build --release -j2 -p oxbus-supervisor
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# OXBUS_BIN: another build to compare with (an A/B of two commits).
OXBUS = os.environ.get('OXBUS_BIN') or os.path.join(ROOT, 'target', 'release', 'oxbus')

TARGET_DEPLOY_S = 1.0
TARGET_KB_PER_SERVICE = 50.0
TARGET_START_S = 2.0


def load1():
    return os.getloadavg()[0]


def module_source(layout, m, per_module, rev):
    """A module of `per_module` realistic small services: SimpleIO in and out, a handler."""
    out = ['"""bench/scale.py: module %d, %d services, revision %d."""\n' % (m, per_module, rev),
           'from oxbus import Service\n']
    for j in range(per_module):
        out.append('''
class GetCustomer{j}(Service):
    """Looks a customer up (service {j} of module {m})."""

    name = 'scale{layout}.m{m}.get-customer-{j}'
    input = 'customer_id', '-needs_details'
    output = 'customer_id', 'name', '-email'

    def handle(self):
        cid = self.request.input.customer_id
        payload = {{'customer_id': cid, 'name': 'customer %d' % cid, 'rev': {rev}}}
        if self.request.input.needs_details:
            payload['email'] = 'c%d@example.com' % cid
        self.response.payload = payload
'''.format(j=j, m=m, layout=layout, rev=rev))
    return ''.join(out)


LIVE = []  # servers to stop if the script fails half-way


class Server:
    def __init__(self, args, env_dir, log):
        self.args, self.env_dir, self.log = args, env_dir, log
        self.proc = None
        self.token = None
        self.cache_dir = os.path.join(os.path.dirname(env_dir), 'cache')
        LIVE.append(self)

    def drop_code_cache(self):
        shutil.rmtree(os.path.join(self.cache_dir, 'code'), ignore_errors=True)

    def env(self):
        e = dict(os.environ)
        e['OXBUS_SERVER_LISTEN'] = '"127.0.0.1:%d"' % self.args.port
        e['OXBUS_ADMIN_LISTEN'] = '"127.0.0.1:%d"' % (self.args.port + 1)
        e['OXBUS_SERVER_WORKERS'] = str(self.args.workers)
        if self.args.python:
            e['OXBUS_SERVER_PYTHON'] = json.dumps(self.args.python)
        # The bundled package and the workers' code cache live here, so that a cold start
        # can be measured by deleting the cache (and ~/.cache is left alone).
        e['CACHE_DIRECTORY'] = self.cache_dir
        return e

    def start(self, quickstart=False):
        """Starts the server; returns seconds from exec to ready with every worker."""
        if quickstart:
            cmd = [OXBUS, 'quickstart', self.env_dir, '--port', str(self.args.port),
                   '--workers', str(self.args.workers), '--no-proxy']
        else:
            cmd = [OXBUS, 'server', '--config', os.path.join(self.env_dir, 'server.toml')]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=self.env(), stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, 'a'))
        deadline = time.time() + 60
        while True:
            try:
                c = http.client.HTTPConnection('127.0.0.1', self.args.port, timeout=1)
                c.request('GET', '/readyz')
                r = c.getresponse()
                doc = json.loads(r.read())
                c.close()
                if r.status == 200 and doc.get('workers_ready') == self.args.workers:
                    dt = time.perf_counter() - t0
                    break
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None:
                sys.exit('server exited (%s); see %s' % (self.proc.returncode, self.log))
            if time.time() > deadline:
                sys.exit('server not ready in 60 s; see %s' % self.log)
            time.sleep(0.005)
        self.token = open(os.path.join(self.env_dir, 'admin.token')).read().strip()
        return dt

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        if code != 0:
            sys.exit('server exited with %s after SIGTERM; see %s' % (code, self.log))

    def admin(self, method, path, body=None, timeout=120):
        c = http.client.HTTPConnection('127.0.0.1', self.args.port + 1, timeout=timeout)
        c.request(method, path, body, {'Authorization': 'Bearer ' + self.token})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, json.loads(data)

    def worker_pids(self):
        status, doc = self.admin('GET', '/v1/info')
        assert status == 200, doc
        return [w['pid'] for w in doc['workers'] if w['state'] == 'ready']


def memory(pid):
    """Rss, Pss and USS (private clean + dirty) in KiB, from /proc/PID/smaps_rollup."""
    fields = {}
    with open('/proc/%d/smaps_rollup' % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == 'kB':
                fields[parts[0].rstrip(':')] = int(parts[1])
    return {'rss': fields['Rss'], 'pss': fields['Pss'],
            'uss': fields['Private_Clean'] + fields['Private_Dirty']}


def memories(server):
    time.sleep(0.3)  # let the activation replies and any log flushing settle
    return {pid: memory(pid) for pid in server.worker_pids()}


def per_service(before, after, n):
    """KiB per service per worker: median and max over the workers present in both."""
    out = {}
    for key in ('rss', 'pss', 'uss'):
        deltas = [(after[p][key] - before[p][key]) / n for p in after if p in before]
        if not deltas:
            sys.exit('no worker survived the deploy (PIDs changed)')
        out[key] = (statistics.median(deltas), max(deltas))
    return out


def check_report(status, doc, n_services, workers):
    if status != 200:
        sys.exit('deploy failed (HTTP %d): %s' % (status, json.dumps(doc)[:2000]))
    acks = doc['workers']
    if len(acks) != workers or not all(a['ok'] for a in acks):
        sys.exit('not every worker acknowledged: %s' % acks)
    if len(doc['services']) != n_services:
        sys.exit('expected %d services in the report, got %d'
                 % (n_services, len(doc['services'])))


def parts(doc):
    """(total, check, store, slowest activation) of a deploy report, in ms."""
    return (doc['total_ms'], doc['check_ms'], doc.get('store_ms', 0.0),
            max(w['ms'] for w in doc['workers']))


def fmt_parts(p):
    return 'server %.0f = check %.0f + store %.0f + activation %.0f' % p


def verdict(ok):
    return 'pass' if ok else 'MISS'


def run_layout(a, per_module, tmp, rows):
    n_modules = -(-a.services // per_module)
    n_services = n_modules * per_module
    layout = '%dx%d' % (n_modules, per_module)
    env_dir = os.path.join(tmp, 'env-' + layout)
    srv = Server(a, env_dir, os.path.join(tmp, 'server-%s.log' % layout))
    tag = 'l%d' % per_module
    print('\n== %d services as %d modules x %d services, 1 server x %d workers =='
          % (n_services, n_modules, per_module, a.workers), flush=True)
    srv.start(quickstart=True)
    srv.stop()
    empty_starts = []
    for i in range(a.starts):
        empty_starts.append((srv.start(), load1()))
        if i + 1 < a.starts:
            srv.stop()
    before = memories(srv)
    pids = set(before)

    def sources(rev):
        return [('scale%s_m%04d' % (tag, m), module_source(tag, m, per_module, rev))
                for m in range(n_modules)]

    body = json.dumps({'modules': [{'name': n, 'source': s} for n, s in sources(0)]})
    t0 = time.perf_counter()
    status, doc = srv.admin('POST', '/v1/modules', body)
    first = time.perf_counter() - t0
    first_load = load1()
    check_report(status, doc, n_services, a.workers)
    first_parts = parts(doc)
    status, listed = srv.admin('GET', '/v1/services')
    if sum(1 for s in listed['services'] if s['name'].startswith('scale' + tag)) != n_services:
        sys.exit('the service list does not show all %d services' % n_services)
    # One of them really answers.
    status, reply = srv.admin('POST', '/v1/invoke/scale%s.m0.get-customer-0' % tag,
                              json.dumps({'customer_id': 7}))
    if status != 200 or reply.get('name') != 'customer 7':
        sys.exit('invoking a deployed service failed: %s %s' % (status, reply))
    after = memories(srv)
    if set(after) != pids:
        sys.exit('worker PIDs changed during the deploy')
    mem_first = per_service(before, after, n_services)

    api, cli, server_ms = [], [], []
    files_dir = os.path.join(tmp, 'files-' + layout)
    os.makedirs(files_dir)
    rev = 1
    for _ in range(a.reps):
        body = json.dumps({'modules': [{'name': n, 'source': s} for n, s in sources(rev)]})
        rev += 1
        t0 = time.perf_counter()
        status, doc = srv.admin('POST', '/v1/modules', body)
        api.append((time.perf_counter() - t0, load1()))
        check_report(status, doc, n_services, a.workers)
        server_ms.append(parts(doc))
        files = []
        for name, source in sources(rev):
            path = os.path.join(files_dir, name + '.py')
            with open(path, 'w') as f:
                f.write(source)
            files.append(path)
        rev += 1
        t0 = time.perf_counter()
        r = subprocess.run([OXBUS, 'deploy', '--env', env_dir, '--output', 'json'] + files,
                           capture_output=True)
        cli.append((time.perf_counter() - t0, load1()))
        if r.returncode != 0:
            sys.exit('oxbus deploy failed: %s' % r.stderr.decode()[-2000:])
        check_report(200, json.loads(r.stdout), n_services, a.workers)
    after_redeploys = memories(srv)
    if set(after_redeploys) != pids:
        sys.exit('worker PIDs changed during the redeploys')
    mem_redeploy = per_service(before, after_redeploys, n_services)
    srv.stop()

    starts, cold_starts = [], []
    for cold in [False] * a.starts + [True] * a.starts:
        if cold:
            srv.drop_code_cache()
        (cold_starts if cold else starts).append((srv.start(), load1()))
        status, listed = srv.admin('GET', '/v1/services')
        if sum(1 for s in listed['services'] if s['name'].startswith('scale' + tag)) \
                != n_services:
            sys.exit('after the restart the service list lacks deployed services')
        srv.stop()

    def fmt_runs(xs):
        return ' '.join('%.0f' % (t * 1000) for t, _ in xs)

    def loads(xs):
        return '%.2f-%.2f' % (min(l for _, l in xs), max(l for _, l in xs))

    med = lambda xs: statistics.median(t for t, _ in xs)  # noqa: E731
    print('%-44s %10s %10s  %-8s %s' % ('measure', 'result', 'target', 'verdict', 'load1 / runs'))
    line = '%-44s %10s %10s  %-8s %s'
    print(line % ('first deploy, one API call', '%.0f ms' % (first * 1000),
                  '<= %.0f ms' % (TARGET_DEPLOY_S * 1000), verdict(first <= TARGET_DEPLOY_S),
                  '%.2f (%s)' % (first_load, fmt_parts(first_parts))))
    mid = sorted(server_ms)[len(server_ms) // 2]
    print(line % ('redeploy, one API call (median)', '%.0f ms' % (med(api) * 1000),
                  '<= %.0f ms' % (TARGET_DEPLOY_S * 1000),
                  verdict(med(api) <= TARGET_DEPLOY_S),
                  '%s [%s] (median %s)' % (loads(api), fmt_runs(api), fmt_parts(mid))))
    print(line % ('redeploy, oxbus deploy %d files (median)' % n_modules,
                  '%.0f ms' % (med(cli) * 1000), '<= %.0f ms' % (TARGET_DEPLOY_S * 1000),
                  verdict(med(cli) <= TARGET_DEPLOY_S), '%s [%s]' % (loads(cli), fmt_runs(cli))))
    for key, label in (('rss', 'RSS'), ('pss', 'PSS'), ('uss', 'USS')):
        m, x = mem_first[key]
        ok = m <= TARGET_KB_PER_SERVICE if key == 'rss' else None
        print(line % ('%s per idle service per worker (med/max)' % label,
                      '%.1f/%.1f KB' % (m, x),
                      '<= %.0f KB' % TARGET_KB_PER_SERVICE if key == 'rss' else '',
                      verdict(ok) if ok is not None else '', ''))
    m, x = mem_redeploy['rss']
    print(line % ('RSS per service after %d redeploys (med/max)' % (2 * a.reps),
                  '%.1f/%.1f KB' % (m, x), '', '', ''))
    print(line % ('start, nothing deployed (median)', '%.0f ms' % (med(empty_starts) * 1000),
                  '', '', '%s [%s]' % (loads(empty_starts), fmt_runs(empty_starts))))
    print(line % ('start with %d services stored (median)' % n_services,
                  '%.0f ms' % (med(starts) * 1000), '<= %.0f ms' % (TARGET_START_S * 1000),
                  verdict(med(starts) <= TARGET_START_S),
                  '%s [%s]' % (loads(starts), fmt_runs(starts))))
    print(line % ('  the same, compiled code cache deleted first',
                  '%.0f ms' % (med(cold_starts) * 1000), '<= %.0f ms' % (TARGET_START_S * 1000),
                  verdict(med(cold_starts) <= TARGET_START_S),
                  '%s [%s]' % (loads(cold_starts), fmt_runs(cold_starts))))
    sys.stdout.flush()
    rows.append({'layout': layout, 'first_ms': first * 1000, 'api_ms': med(api) * 1000,
                 'cli_ms': med(cli) * 1000, 'rss_kb': mem_first['rss'][0],
                 'pss_kb': mem_first['pss'][0], 'uss_kb': mem_first['uss'][0],
                 'start_ms': med(starts) * 1000, 'cold_start_ms': med(cold_starts) * 1000,
                 'empty_start_ms': med(empty_starts) * 1000})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--services', type=int, default=1000)
    ap.add_argument('--layouts', default='10,1',
                    help='services per module, comma-separated: one run per layout')
    ap.add_argument('--workers', type=int, default=8)
    ap.add_argument('--reps', type=int, default=3, help='redeploys each way (API, CLI)')
    ap.add_argument('--starts', type=int, default=3, help='timed server starts per case')
    ap.add_argument('--port', type=int, default=18621)
    ap.add_argument('--python', default=None,
                    help="the workers' interpreter (default: the quickstart's python3 on PATH)")
    ap.add_argument('--keep', action='store_true', help='keep the temp dir')
    a = ap.parse_args()
    if not os.access(OXBUS, os.X_OK):
        sys.exit('build first: cargo build --release -j2 -p oxbus-supervisor')
    tmp = tempfile.mkdtemp(prefix='oxbus-scale-bench.')
    head = subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(['git', '-C', ROOT, 'status', '--porcelain', '--untracked-files=no'],
                           capture_output=True, text=True).stdout.strip()
    print('bench/scale.py at %s%s: %d services, %d workers, python %s, load1 %.2f, '
          'PYTHONDONTWRITEBYTECODE=%s'
          % (head, '+dirty' if dirty else '', a.services, a.workers,
             a.python or 'python3 (PATH)', load1(),
             os.environ.get('PYTHONDONTWRITEBYTECODE', '')), flush=True)
    rows = []
    try:
        for per_module in [int(x) for x in a.layouts.split(',') if x]:
            run_layout(a, per_module, tmp, rows)
    finally:
        for srv in LIVE:
            if srv.proc is not None and srv.proc.poll() is None:
                srv.proc.kill()
                srv.proc.wait()
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print('kept', tmp)
    print('\nsummary (load1 now %.2f):' % load1())
    for r in rows:
        print('  %(layout)-8s deploy %(first_ms).0f ms first / %(api_ms).0f ms API / '
              '%(cli_ms).0f ms CLI; %(rss_kb).1f KB RSS (%(pss_kb).1f PSS, %(uss_kb).1f USS) '
              'per service per worker; start %(start_ms).0f ms (cold cache %(cold_start_ms).0f ms, '
              'nothing deployed %(empty_start_ms).0f ms)'
              % r)


if __name__ == '__main__':
    main()
