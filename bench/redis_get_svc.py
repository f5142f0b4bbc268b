"""The services bench/redis_get.py deploys: Redis GET through the server's outgoing Redis
connection (`self.out.redis['bench']`) or through redis-py in the worker (one client per
worker process: its connection pool is shared by the worker's handler threads)."""
import os
import threading
import time

from oxbus import Service

KEY = os.environ.get('BENCH_REDIS_KEY', 'oxbus-bench:get')
_lock = threading.Lock()
_client = None


def redis_py():
    """The worker's redis-py client (made once, thread-safe pool)."""
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                import redis  # the bench's venv runs the workers
                _client = redis.Redis(host='127.0.0.1', port=6379,
                                      max_connections=int(os.environ.get('BENCH_REDISPY_POOL',
                                                                         '64')))
    return _client


class GetOxbus(Service):
    """One GET per invocation, through the server."""
    name = 'bench.redis-get-oxbus'

    def handle(self):
        v = self.out.redis['bench'].get(KEY)
        self.response.payload = {'len': len(v)}


class GetRedisPy(Service):
    """One GET per invocation, redis-py."""
    name = 'bench.redis-get-redispy'

    def handle(self):
        v = redis_py().get(KEY)
        self.response.payload = {'len': len(v)}


class Loop(Service):
    """{"target": "oxbus"|"redispy", "n": N}: N GETs in a row, timed inside the worker."""
    name = 'bench.redis-loop'

    def handle(self):
        p = self.request.payload
        n = int(p['n'])
        get = self.out.redis['bench'].get if p['target'] == 'oxbus' else redis_py().get
        size = len(get(KEY))
        started = time.perf_counter()
        cpu = time.thread_time()
        for _ in range(n):
            get(KEY)
        wall = time.perf_counter() - started
        cpu = time.thread_time() - cpu
        self.response.payload = {'n': n, 'wall_s': wall, 'thread_cpu_s': cpu, 'size': size}
