"""The services bench/outgoing.sh deploys (issue 19): one outgoing call per request, made
three ways for REST and two for SQL, from the same worker processes.

REST, one GET of the local echo upstream per request (channel GET /bench/rest/<variant>):
  bench.rest.oxbus     self.out.rest['bench-up'].conn.get(self.cid): the server's pool
  bench.rest.oxbus_async  the same from an async service: await ....conn.aget(self.cid)
  bench.rest.requests  a requests.Session (Zato's stack), one per worker thread
  bench.rest.httpx     one httpx.Client per worker (thread-safe, its own pool)
SQL, a primary-key SELECT with a random id per request (channel GET /bench/sql/<variant>):
  bench.sql.oxbus      self.out.sql['bench-pg'].fetch_one(sql, [id]): the server's pool
  bench.sql.psycopg    psycopg 3 (C extension) + psycopg_pool.ConnectionPool per worker
bench.loop: N calls of one variant in a loop inside one invocation, timed in the worker.

Configuration comes from the environment the bench gives the server (inherited by workers):
BENCH_UPSTREAM (http://127.0.0.1:PORT/echo), BENCH_PG_DSN, BENCH_PG_TABLE, BENCH_PG_ROWS,
BENCH_PSYCOPG_POOL_MAX, BENCH_PSYCOPG_APP. The third-party imports are lazy, so the module
deploys whatever the interpreter has; a variant whose library is missing fails its calls.
"""
import os
import random
import threading
import time

from oxbus import Service

UPSTREAM = os.environ.get('BENCH_UPSTREAM', 'http://127.0.0.1:1/echo')
PG_DSN = os.environ.get('BENCH_PG_DSN', 'host=127.0.0.1 port=5432 user=postgres dbname=test')
TABLE = os.environ.get('BENCH_PG_TABLE', 'bench_out_sql')
ROWS = int(os.environ.get('BENCH_PG_ROWS', '10000'))
# $1 is PostgreSQL's placeholder for both: out.sql binds the engine's own positional form,
# and psycopg 3 takes %s; the statement text is otherwise the same.
SQL_OXBUS = 'SELECT id, name, qty, created FROM %s WHERE id = $1' % TABLE
SQL_PSYCOPG = 'SELECT id, name, qty, created FROM %s WHERE id = %%s' % TABLE

_local = threading.local()
_lock = threading.Lock()
_shared = {}


def _session():
    s = getattr(_local, 'session', None)
    if s is None:
        import requests
        s = _local.session = requests.Session()
    return s


def _httpx():
    c = _shared.get('httpx')
    if c is None:
        with _lock:
            c = _shared.get('httpx')
            if c is None:
                import httpx
                c = _shared['httpx'] = httpx.Client(
                    limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))
    return c


def _pg_pool():
    p = _shared.get('pg')
    if p is None:
        with _lock:
            p = _shared.get('pg')
            if p is None:
                from psycopg.rows import dict_row
                from psycopg_pool import ConnectionPool
                p = _shared['pg'] = ConnectionPool(
                    PG_DSN, min_size=1, max_size=int(os.environ.get('BENCH_PSYCOPG_POOL_MAX', '4')),
                    kwargs={'application_name': os.environ.get('BENCH_PSYCOPG_APP', 'bench-psycopg'),
                            'row_factory': dict_row},
                    open=True)
    return p


def rest_oxbus(svc):
    r = svc.out.rest['bench-up'].conn.get(svc.cid)
    if r.status_code != 200:
        raise RuntimeError('upstream answered %s' % r.status_code)
    return r.data


async def rest_oxbus_async(svc):
    r = await svc.out.rest['bench-up'].conn.aget(svc.cid)
    if r.status_code != 200:
        raise RuntimeError('upstream answered %s' % r.status_code)
    return r.data


def rest_requests(svc):
    r = _session().get(UPSTREAM, timeout=10)
    if r.status_code != 200:
        raise RuntimeError('upstream answered %s' % r.status_code)
    return r.json()


def rest_httpx(svc):
    r = _httpx().get(UPSTREAM, timeout=10)
    if r.status_code != 200:
        raise RuntimeError('upstream answered %s' % r.status_code)
    return r.json()


def sql_oxbus(svc):
    row = svc.out.sql['bench-pg'].fetch_one(SQL_OXBUS, [random.randint(1, ROWS)])
    return {'id': row['id'], 'name': row['name']}


def sql_psycopg(svc):
    with _pg_pool().connection() as conn:
        row = conn.execute(SQL_PSYCOPG, (random.randint(1, ROWS),)).fetchone()
    return {'id': row['id'], 'name': row['name']}


CALLS = {'rest.oxbus': rest_oxbus, 'rest.requests': rest_requests, 'rest.httpx': rest_httpx,
         'sql.oxbus': sql_oxbus, 'sql.psycopg': sql_psycopg}


class RestOxbus(Service):
    name = 'bench.rest.oxbus'

    def handle(self):
        self.response.payload = rest_oxbus(self)


class RestOxbusAsync(Service):
    """The same call from an async service (the awaitable form): no worker thread waits."""
    name = 'bench.rest.oxbus_async'

    async def handle(self):
        self.response.payload = await rest_oxbus_async(self)


class RestRequests(Service):
    name = 'bench.rest.requests'

    def handle(self):
        self.response.payload = rest_requests(self)


class RestHttpx(Service):
    name = 'bench.rest.httpx'

    def handle(self):
        self.response.payload = rest_httpx(self)


class SqlOxbus(Service):
    name = 'bench.sql.oxbus'

    def handle(self):
        self.response.payload = sql_oxbus(self)


class SqlPsycopg(Service):
    name = 'bench.sql.psycopg'

    def handle(self):
        self.response.payload = sql_psycopg(self)


class Loop(Service):
    """{"variant": one of CALLS, "n": N}: N calls in a row, timed inside the worker
    (wall and the worker process's CPU, all its threads)."""
    name = 'bench.loop'

    def handle(self):
        p = self.request.payload
        call, n = CALLS[p['variant']], int(p['n'])
        call(self)  # a warm connection, as in a long-running service
        started = time.perf_counter()
        cpu = time.process_time()
        for _ in range(n):
            call(self)
        wall = time.perf_counter() - started
        self.response.payload = {'calls_per_s': n / wall, 'us_per_call': wall / n * 1e6,
                                 'worker_cpu_us_per_call': (time.process_time() - cpu) / n * 1e6}
