#!/usr/bin/env python3
"""bench/scheduler.py - fire lateness with many jobs, and what an idle scheduler costs.

Starts `oxbus quickstart <tmp env> --workers 2 --no-proxy` (release build, SQLite store),
deploys a trivial service and imports N interval jobs at once (`oxbus config import`), each
every PERIOD seconds, their start times spread evenly over one period so that N / PERIOD
runs fall due every second. After a warm-up it measures for DURATION seconds: per scheduled
run, lateness = when the scheduler started the service's call - when it was due (both in the
run history, `job_runs`), p50 / p99 / max, and how many runs were due and how many ran.

Idle cost: the server process's CPU time over IDLE seconds (a) with no job, (b) with the
N jobs all due next year (the scheduler holds them, nothing fires). Both include what the
server does anyway (heartbeats, the store's version check every second).

Usage: bench/scheduler.py [--jobs 1000] [--period 10] [--duration 60] [--idle 30]
       (build first: cargo build --release -j2 -p oxbus-supervisor)
"""
import argparse, json, os, shutil, signal, sqlite3, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OXBUS = os.environ.get('OXBUS_BIN') or os.path.join(ROOT, 'target', 'release', 'oxbus')
SERVICE = '''from oxbus import Service


class Tick(Service):
    name = 'bench.tick'

    def handle(self):
        self.response.payload = {'job': self.channel.name}
'''


def free_port():
    import socket
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rfc3339(t):
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t)) + '.%03dZ' % int((t % 1) * 1000)


def cpu_seconds(pid):
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def oxbus(env, *args):
    subprocess.check_call([OXBUS, *args, '--env', env], stdout=subprocess.DEVNULL)


def import_jobs(env, tmp, jobs):
    path = os.path.join(tmp, 'jobs.json')
    with open(path, 'w') as f:
        json.dump({'job': jobs}, f)
    oxbus(env, 'config', 'import', path)


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--jobs', type=int, default=1000)
    ap.add_argument('--period', type=int, default=10, help='seconds between runs of a job')
    ap.add_argument('--duration', type=int, default=60, help='seconds measured')
    ap.add_argument('--idle', type=int, default=30, help='seconds of each idle measurement')
    args = ap.parse_args()
    if not os.access(OXBUS, os.X_OK):
        raise SystemExit('%s missing: cargo build --release -j2 -p oxbus-supervisor' % OXBUS)
    tmp = tempfile.mkdtemp(prefix='oxbus-sched-bench-')
    env = os.path.join(tmp, 'env')
    log = open(os.path.join(tmp, 'server.log'), 'w')
    server = subprocess.Popen([OXBUS, 'quickstart', env, '--port', str(free_port()),
                               '--workers', '2', '--no-proxy'], stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while 'server ready' not in open(log.name).read():
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit('the server did not start:\n' + open(log.name).read()[-3000:])
            time.sleep(0.1)
        svc = os.path.join(tmp, 'benchtick.py')
        with open(svc, 'w') as f:
            f.write(SERVICE)
        oxbus(env, 'deploy', svc)

        # (a) idle, no job.
        time.sleep(2)
        c0 = cpu_seconds(server.pid)
        time.sleep(args.idle)
        idle_none = (cpu_seconds(server.pid) - c0) / args.idle

        # (b) idle with N jobs due next year.
        later = time.time() + 366 * 86400
        jobs = [{'name': 'tick-%04d' % i, 'type': 'interval_based', 'service': 'bench.tick',
                 'weeks': 52, 'start_date': rfc3339(later)} for i in range(args.jobs)]
        import_jobs(env, tmp, jobs)
        time.sleep(3)
        c0 = cpu_seconds(server.pid)
        time.sleep(args.idle)
        idle_jobs = (cpu_seconds(server.pid) - c0) / args.idle

        # Firing: N jobs every PERIOD s, spread evenly (the same names: the import replaces
        # the idle definitions).
        start = time.time() + 5
        step = args.period / args.jobs
        jobs = [{'name': 'tick-%04d' % i, 'type': 'interval_based', 'service': 'bench.tick',
                 'seconds': args.period, 'start_date': rfc3339(start + i * step)}
                for i in range(args.jobs)]
        import_jobs(env, tmp, jobs)
        warm = start + args.period  # one full period of warm-up
        until = warm + args.duration
        time.sleep(max(0, warm - time.time()))
        c0 = cpu_seconds(server.pid)
        time.sleep(max(0, until - time.time()))
        busy = (cpu_seconds(server.pid) - c0) / args.duration
        time.sleep(3)  # let the last runs be recorded
        db = sqlite3.connect(os.path.join(env, 'oxbus.db'))
        rows = db.execute("SELECT job, due, started FROM job_runs WHERE trigger = 'schedule' "
                          "AND due >= ? AND due < ?", (int(warm * 1000), int(until * 1000))
                          ).fetchall()
        late = [s - d for _, d, s in rows]
        twice = len(rows) - len({(j, d) for j, d, _ in rows})
        expected = args.duration * args.jobs / args.period
        skipped = db.execute("SELECT count(*) FROM job_runs WHERE outcome <> 'ok' AND due >= ? "
                             "AND due < ?", (int(warm * 1000), int(until * 1000))).fetchone()[0]
        print('%d interval jobs, every %d s (%.0f runs due per second), %d s measured'
              % (args.jobs, args.period, args.jobs / args.period, args.duration))
        print('  runs: %d recorded of ~%.0f due (%d not ok, %d due times run twice)'
              % (len(rows), expected, skipped, twice))
        print('  lateness (scheduler start - due): p50 %.1f ms, p99 %.1f ms, max %.1f ms'
              % (percentile(late, 0.5), percentile(late, 0.99), max(late)))
        print('  server CPU while firing: %.1f%% of a core' % (busy * 100))
        print('idle server CPU: no jobs %.2f%% of a core, %d jobs not due %.2f%% of a core'
              % (idle_none * 100, args.jobs, idle_jobs * 100))
        print(json.dumps({'jobs': args.jobs, 'period_s': args.period, 'runs': len(rows),
                          'expected': expected, 'not_ok': skipped, 'twice': twice,
                          'p50_ms': percentile(late, 0.5), 'p99_ms': percentile(late, 0.99),
                          'max_ms': max(late), 'busy_cpu': busy, 'idle_cpu_no_jobs': idle_none,
                          'idle_cpu_jobs': idle_jobs}))
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
