#!/usr/bin/env python3
"""bench/files.py - file-transfer channels: files/s picked up and handed to a service, beside
a Python `watchdog` loop doing the same work (issue target: >= 2x), and CPU per file.

The same work on both sides: N small files (`f-000000.txt`..., SIZE bytes, a few lines) are
written by this script (open, write, close: one file after another) into an empty folder;
per file the side reads it, decodes it, calls `work` (notes the name, counts the lines: the
block between the markers in bench/files_peer.py, pasted into the Oxbus service module too)
and moves it to <folder>/processed/. A run ends when all N are in processed/ (polled every
POLL s: the figures are that coarse).

- **burst**: the side watches an empty folder (and has handled one probe file, so its watch
  is on and its service warm); the clock starts before the first file is written and stops
  when the last is in processed/: the writer and the side share the 2 cores.
- **backlog**: the N files are written first and left alone for quiet_ms + 0.3 s; the
  clock starts when the side is started on the full folder (Oxbus: the PUT creating the
  channel; the peer: `go`, after its interpreter and imports are loaded) and stops when all
  N are in processed/.

Oxbus: one server (`oxbus quickstart --no-proxy`: SQLite store, W workers), the service
module deployed once, a new file-transfer channel per run (quiet_ms, `parallel` P, the
default after "move"), deleted after it. The peer (bench/files_peer.py, a fresh process per
run): a watchdog Observer, `on_closed` on its dispatch thread. Nothing is pinned. Rounds
alternate which side goes first. CPU: utime + stime from /proc over the timed interval, of
the server and its workers (all its descendants), and of the peer's process.

Usage: bench/files.py [--files 10000] [--rounds 3] [--workers 1] [--parallel 1]
       [--quiet-ms 1000] [--size 200] [--oxbus PATH] [--cases burst,backlog] [--keep]
--oxbus: default target/release/oxbus, else target/debug/oxbus (debug figures are not
representative). The peer's venv: $BENCH_VENV (/tmp/oxbus-files-bench; made and given
`watchdog>=2.3` on the first run). Exits 0 whatever the ratios (a measurement, not a test);
prints a JSON summary last.
"""
import argparse, http.client, json, os, shutil, signal, socket, statistics, subprocess, sys
import tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEER = os.path.join(HERE, 'files_peer.py')
VENV = os.environ.get('BENCH_VENV', '/tmp/oxbus-files-bench')
TARGET = 2.0
POLL = 0.02
SERVICE_NAME = 'bench.on-file'
TICK = os.sysconf('SC_CLK_TCK')


def work_block():
    """The `work` code of the peer, to paste into the Oxbus service module."""
    src = open(PEER).read()
    start = src.index('# --- work ')
    end = src.index('# --- end work ---')
    return src[src.index('\n', start) + 1:end]


def service_source():
    return ('from oxbus import Service\n\n' + work_block() + '''

class OnFile(Service):
    """bench/files.py: one file of the channel, the same work as the watchdog peer."""

    name = %r

    def handle(self):
        r = self.request.raw_request
        work(r['file_name'], r['raw_data'])
''' % SERVICE_NAME)


def venv_python():
    py = os.path.join(VENV, 'bin', 'python')
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, '-m', 'venv', VENV])
    check = 'import watchdog.events as e; assert hasattr(e, "FileClosedEvent")'
    if subprocess.run([py, '-c', check], capture_output=True).returncode != 0:
        subprocess.check_call([py, '-m', 'pip', 'install', '-q', 'watchdog>=2.3'])
    return py


def free_port(n=2):
    """A port P with P..P+n-1 free (quickstart puts its admin API on P+1)."""
    for _ in range(200):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        p = s.getsockname()[1]
        s.close()
        try:
            for k in range(1, n):
                t = socket.socket()
                t.bind(('127.0.0.1', p + k))
                t.close()
            return p
        except OSError:
            continue
    raise SystemExit('no run of %d free ports' % n)


def request(port, method, path, doc=None, token=None, timeout=120):
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    headers = {'content-type': 'application/json'}
    if token:
        headers['authorization'] = 'Bearer ' + token
    c.request(method, path, None if doc is None else json.dumps(doc), headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def cpu_s(pid):
    """CPU seconds (user + system) of process `pid` so far (0 once it is gone)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open('/proc/%d/task/%d/children' % (p, p)) as f:
                kids = [int(c) for c in f.read().split()]
        except OSError:
            kids = []
        out.extend(kids)
        todo.extend(kids)
    return out


def cpu_tree(pid):
    """(CPU-s of `pid`, CPU-s of all its descendants)."""
    return cpu_s(pid), sum(cpu_s(k) for k in descendants(pid))


def wait_until(what, check, timeout=60, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(every)
    raise TimeoutError('%s: not within %d s' % (what, timeout))


def count(d):
    try:
        return len(os.listdir(d))
    except FileNotFoundError:
        return 0


def body(i, size):
    head = 'file %06d\n' % i
    line = 'abcdefghijklmnopqrstuvwxyz0123456789,' * 2 + '\n'
    text = head + line * ((size - len(head)) // len(line) + 1)
    return text[:size - 1].encode() + b'\n'


def write_files(folder, n, size, prefix='f-'):
    for i in range(n):
        with open(os.path.join(folder, '%s%06d.txt' % (prefix, i)), 'wb') as f:
            f.write(body(i, size))


def probe(folder, timeout):
    """Writes one file, waits until it is in processed/, removes it there: the side's watch is
    on and its service warm."""
    with open(os.path.join(folder, 'probe.txt'), 'wb') as f:
        f.write(body(0, 200))
    target = os.path.join(folder, 'processed', 'probe.txt')
    wait_until('the probe file handled', lambda: os.path.exists(target), timeout, 0.01)
    os.remove(target)


class Oxbus:
    name = 'oxbus'

    def __init__(self, binary, tmp, workers, a):
        self.a = a
        self.port = free_port(2)
        self.log_path = os.path.join(tmp, 'server.log')
        self.log = open(self.log_path, 'w')
        env_dir = os.path.join(tmp, 'env')
        self.proc = subprocess.Popen(
            [binary, 'quickstart', env_dir, '--port', str(self.port), '--workers',
             str(workers), '--no-proxy'],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until('oxbus ready', lambda: request(self.port, 'GET', '/readyz', timeout=5)[0]
                       == 200, 120, 0.2)
        except TimeoutError:
            self.log.flush()
            print(open(self.log_path).read()[-3000:], file=sys.stderr)
            raise
        self.token = open(os.path.join(env_dir, 'admin.token')).read().strip()
        self.admin = self.port + 1
        st, b = self.call('POST', '/v1/modules', {
            'modules': [{'name': 'bench_files', 'source': service_source()}],
            'deployed_by': 'bench'})
        if st != 200:
            raise SystemExit('deploy: %d %s' % (st, b[:500]))
        self.seq = 0
        self.channel = None

    def call(self, method, path, doc=None):
        return request(self.admin, method, path, doc, self.token)

    def pid(self):
        return self.proc.pid

    def stats(self):
        st, b = self.call('GET', '/v1/inbound/file/%s/stats' % self.channel)
        return json.loads(b) if st == 200 else {'http': st, 'body': b[:300].decode('replace')}

    def start(self, folder):
        self.seq += 1
        self.channel = 'bench-files-%d' % self.seq
        st, b = self.call('PUT', '/v1/inbound/file/' + self.channel, {
            'service': SERVICE_NAME, 'directories': [folder], 'patterns': ['*'],
            'quiet_ms': self.a.quiet_ms, 'after': 'move', 'parallel': self.a.parallel})
        if st not in (200, 201):
            raise SystemExit('file channel: %d %s' % (st, b[:500]))

    def prepare(self, folder, mode):
        """burst: the channel created, holding, its probe handled. backlog: nothing yet."""
        if mode == 'burst':
            self.start(folder)
            wait_until('channel holding', lambda: self.stats().get('state') == 'holding', 60)
            probe(folder, 60)

    def go(self, folder, mode):
        if mode == 'backlog':
            self.start(folder)

    def finish(self):
        """The channel's stats, then the channel deleted."""
        s = self.stats()
        st, b = self.call('DELETE', '/v1/inbound/file/' + self.channel)
        if st not in (200, 204):
            print('  delete %s: %d %s' % (self.channel, st, b[:300]), file=sys.stderr)
        return s

    def stop(self):
        stop_group(self.proc)


class Watchdog:
    name = 'watchdog'

    def __init__(self, py, tmp):
        self.py = py
        self.tmp = tmp
        self.proc = None
        self.info = None

    def pid(self):
        return self.proc.pid

    def prepare(self, folder, mode):
        self.proc = subprocess.Popen([self.py, PEER, folder, mode], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     stderr=open(os.path.join(self.tmp, 'peer.log'), 'a'),
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if not line.startswith('ready'):
            raise SystemExit('the watchdog peer did not start (%r); see %s/peer.log'
                             % (line, self.tmp))
        self.info = json.loads(line.split(' ', 1)[1])
        if mode == 'burst':
            probe(folder, 60)

    def go(self, folder, mode):
        if mode == 'backlog':
            self.proc.stdin.write('go\n')
            self.proc.stdin.flush()

    def finish(self):
        try:
            self.proc.stdin.close()
            out = self.proc.stdout.read()
            self.proc.wait(timeout=60)
            return json.loads(out.strip().splitlines()[-1])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
            return {'error': repr(e)}
        finally:
            self.stop()

    def stop(self):
        if self.proc is not None:
            stop_group(self.proc)


def stop_group(p):
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=10)


def one_run(side, mode, tag, a):
    """One run of `side` on `mode`: files/s (None when it did not finish in time: then
    `problem` says why), CPU per file."""
    folder = os.path.join(a.work_dir, tag)
    os.makedirs(folder)
    processed = os.path.join(folder, 'processed')
    n = a.files
    if mode == 'backlog':
        write_files(folder, n, a.size)
    side.prepare(folder, mode)
    if mode == 'backlog':
        # Every file is older than the quiet time: complete for a scan that finds it.
        newest = max(e.stat().st_mtime for e in os.scandir(folder) if e.is_file())
        time.sleep(max(0.0, newest + a.quiet_ms / 1000 + 0.3 - time.time()))
    pid = side.pid()
    timeout = 60 + n / 20
    c0 = cpu_tree(pid)
    t0 = time.perf_counter()
    side.go(folder, mode)
    if mode == 'burst':
        write_files(folder, n, a.size)
    t_written = time.perf_counter()
    deadline = t0 + timeout
    got = 0
    while True:
        got = count(processed)
        if got >= n or time.perf_counter() > deadline:
            break
        time.sleep(POLL)
    t1 = time.perf_counter()
    c1 = cpu_tree(pid)
    fin = side.finish()
    left = sorted(e.name for e in os.scandir(folder) if e.is_file())
    failed = count(os.path.join(folder, 'failed'))
    r = {'side': side.name, 'mode': mode, 'files': n, 'in_processed': got,
         'left_in_folder': len(left), 'failed': failed, 'seconds': t1 - t0,
         'write_s': (t_written - t0) if mode == 'burst' else 0.0,
         'lag_s': (t1 - t_written) if mode == 'burst' else None,
         'files_per_s': got / (t1 - t0) if got >= n else None,
         'cpu_us_process': (c1[0] - c0[0]) / n * 1e6,
         'cpu_us_children': (c1[1] - c0[1]) / n * 1e6, 'final': fin}
    r['cpu_us_per_file'] = r['cpu_us_process'] + r['cpu_us_children']
    if got < n or left or failed:
        r['problem'] = ('%d of %d in processed/ after %.1f s; %d left in the folder (%s); '
                        '%d in failed/' % (got, n, t1 - t0, len(left),
                                           ', '.join(left[:5]), failed))
    if not a.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return r


def show(r):
    if r['files_per_s'] is None:
        return '%-9s %-8s DID NOT FINISH: %s; final %s' % (
            r['side'], r['mode'], r['problem'], json.dumps(r['final'])[:400])
    extra = '' if r['mode'] == 'backlog' else '  (writer %.2f s, last file %.2f s after it)' % (
        r['write_s'], r['lag_s'])
    s = '%-9s %-8s %8.0f files/s  %6.2f s%s  CPU/file %7.0f us (process %.0f, children %.0f)' % (
        r['side'], r['mode'], r['files_per_s'], r['seconds'], extra, r['cpu_us_per_file'],
        r['cpu_us_process'], r['cpu_us_children'])
    if r.get('problem'):
        s += '  !! ' + r['problem']
    return s


def server_log_notes(path):
    """The server log's warnings and errors (the first few, and how many)."""
    try:
        lines = open(path, errors='replace').read().splitlines()
    except OSError:
        return []
    bad = [l for l in lines if ' WARN ' in l or ' ERROR ' in l or 'panicked' in l]
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--files', type=int, default=10000)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--workers', type=int, default=1, help='Oxbus workers (1)')
    ap.add_argument('--parallel', type=int, default=1, help="the channel's parallel (1)")
    ap.add_argument('--quiet-ms', type=int, default=1000, help="the channel's quiet_ms")
    ap.add_argument('--size', type=int, default=200, help='bytes per file')
    ap.add_argument('--cases', default='burst,backlog')
    ap.add_argument('--oxbus', help='the oxbus binary (release if built, else debug)')
    ap.add_argument('--dir', help='where the watched folders are made (default: the temp dir, '
                    'beside the server env); e.g. /dev/shm to take the disk out')
    ap.add_argument('--keep', action='store_true', help='keep the temp folder (and log)')
    a = ap.parse_args()
    modes = [m for m in a.cases.split(',') if m]
    if not modes or any(m not in ('burst', 'backlog') for m in modes):
        raise SystemExit('--cases: burst, backlog or both')
    binary = a.oxbus
    if not binary:
        rel = os.path.join(ROOT, 'target', 'release', 'oxbus')
        binary = rel if os.access(rel, os.X_OK) else os.path.join(ROOT, 'target', 'debug',
                                                                   'oxbus')
    if not os.access(binary, os.X_OK):
        raise SystemExit('%s missing: cargo build --release -j2 -p oxbus-supervisor' % binary)
    build = ('DEBUG build: figures not representative' if '/debug/' in binary
             else 'release build' if '/release/' in binary else 'build: ?')

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started with SIGINT ignored (`cmd &`)

    py = venv_python()
    wd_version = subprocess.run([py, '-c', 'import watchdog.version as v; '
                                 'print(v.VERSION_STRING)'], capture_output=True,
                                text=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix='oxbus-files-bench-')
    a.work_dir = tmp
    a.work_dir = tmp if not a.dir else tempfile.mkdtemp(prefix='oxbus-files-bench-', dir=a.dir)
    fs = subprocess.run(['stat', '-f', '-c', '%T', a.work_dir], capture_output=True,
                        text=True).stdout.strip() or '?'
    ox = peer = None
    results = []
    try:
        ox = Oxbus(binary, tmp, a.workers, a)
        peer = Watchdog(py, tmp)
        print('# bench/files.py: %d files of %d bytes, %d round(s), cases %s; oxbus %s (%s), '
              '%d worker(s), SQLite store, channel quiet_ms %d parallel %d; watchdog %s '
              '(on_closed, one dispatch thread); %d CPUs, nothing pinned; server env %s, watched '
              'folders in %s (%s)' % (
                  a.files, a.size, a.rounds, '+'.join(modes), binary, build, a.workers,
                  a.quiet_ms, a.parallel, wd_version, os.cpu_count(), tmp, a.work_dir, fs),
              flush=True)
        order = [ox, peer]
        for rnd in range(1, a.rounds + 1):
            for mode in modes:
                for side in order:
                    r = one_run(side, mode, '%s-%s-%d' % (side.name, mode, rnd), a)
                    r['round'] = rnd
                    results.append(r)
                    print('round %d  %s' % (rnd, show(r)), flush=True)
            order.reverse()
        if peer.info:
            print('# watchdog peer: event_filter %s' % peer.info.get('event_filter'))
        summary = {'files': a.files, 'rounds': a.rounds, 'workers': a.workers,
                   'parallel': a.parallel, 'quiet_ms': a.quiet_ms, 'binary': binary,
                   'build': build, 'watchdog': wd_version, 'cases': {}}
        print()
        print('medians over the rounds (CPU: /proc ticks of %.0f ms, so +-%.0f us per file)'
              % (1000 / TICK, 1e6 / TICK / a.files))
        print('%-8s %-9s %10s %14s %10s %16s %12s' % (
            'case', 'side', 'files/s', 'CPU us/file', 'finished', 'writer files/s',
            'tail s'))
        verdicts = []
        for mode in modes:
            med = {}
            for side in ('oxbus', 'watchdog'):
                rs = [r for r in results if r['side'] == side and r['mode'] == mode]
                ok = [r for r in rs if r['files_per_s'] is not None]
                med[side] = {
                    'files_per_s': statistics.median(r['files_per_s'] for r in ok) if ok
                    else None,
                    'cpu_us_per_file': statistics.median(r['cpu_us_per_file'] for r in ok)
                    if ok else None,
                    'finished': '%d/%d' % (len(ok), len(rs))}
                m = med[side]
                if mode == 'burst' and ok:
                    m['writer_files_per_s'] = statistics.median(
                        r['files'] / r['write_s'] for r in ok)
                    m['tail_s'] = statistics.median(r['lag_s'] for r in ok)
                print('%-8s %-9s %10s %14s %10s %16s %12s' % (
                    mode, side, '-' if m['files_per_s'] is None else '%.0f' % m['files_per_s'],
                    '-' if m['cpu_us_per_file'] is None else '%.0f' % m['cpu_us_per_file'],
                    m['finished'],
                    '%.0f' % m['writer_files_per_s'] if 'writer_files_per_s' in m else '-',
                    '%.2f' % m['tail_s'] if 'tail_s' in m else '-'))
            per_round = []
            for rnd in range(1, a.rounds + 1):
                pair = {r['side']: r['files_per_s'] for r in results
                        if r['mode'] == mode and r['round'] == rnd}
                if pair.get('oxbus') and pair.get('watchdog'):
                    per_round.append(pair['oxbus'] / pair['watchdog'])
            o, w = med['oxbus']['files_per_s'], med['watchdog']['files_per_s']
            ratio = o / w if o and w else None
            co, cw = med['oxbus']['cpu_us_per_file'], med['watchdog']['cpu_us_per_file']
            cpu_ratio = co / cw if co is not None and cw else None
            summary['cases'][mode] = {'medians': med, 'ratio': ratio, 'per_round': per_round,
                                      'cpu_ratio': cpu_ratio}
            if ratio is None:
                verdicts.append('%s: no ratio (a side did not finish)' % mode)
            else:
                verdicts.append('%s: oxbus/watchdog files/s %.2fx (per round %s), target >= '
                                '%.0fx: %s; CPU per file oxbus/watchdog %s' % (
                                    mode, ratio, ', '.join('%.2f' % x for x in per_round),
                                    TARGET, 'MET' if ratio >= TARGET else 'MISSED',
                                    '%.2fx' % cpu_ratio if cpu_ratio else '-'))
        if 'burst' in modes:
            print('(burst: files/s counts from the first write, so it cannot pass the writer\'s '
                  'rate; "tail s": from the last write to the last file in processed/)')
        print()
        for v in verdicts:
            print(v + ('   [%s]' % build if 'DEBUG' in build else ''))
        notes = server_log_notes(ox.log_path)
        if notes:
            print('\nserver log: %d warning/error line(s); the first ones:' % len(notes))
            for l in notes[:8]:
                print('  ' + l[:300])
        summary['server_log_warnings'] = len(notes)
        summary['runs'] = [{k: v for k, v in r.items() if k != 'final'} for r in results]
        print(json.dumps(summary))
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
    finally:
        for s in (peer, ox):
            if s is not None:
                s.stop()
        if a.keep:
            print('kept %s %s' % (tmp, a.work_dir if a.work_dir != tmp else ''),
                  file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            if a.work_dir != tmp:
                shutil.rmtree(a.work_dir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
