"""The service bench/cache.py deploys: cache operations in a loop, timed inside the worker,
against the server's cache (self.cache) or the machine's Redis (redis-py), same process."""
import os
import time

from oxbus import Service


class CacheLoop(Service):
    """{"target": "oxbus"|"redis", "op": "get"|"set", "n": N, "size": value bytes}."""
    name = 'bench.cache-loop'

    def handle(self):
        p = self.request.payload
        n, op, size = p['n'], p['op'], p.get('size', 10)
        value = 'x' * size
        if p['target'] == 'oxbus':
            c = self.cache[p.get('cache', 'default')]
        else:
            import redis  # installed by bench/cache.py into the worker's interpreter
            c = self._redis = getattr(self, '_redis', None) or redis.Redis(
                host='127.0.0.1', port=int(os.environ.get('REDIS_PORT', '6379')))
        get, set_ = c.get, c.set
        set_('bench:k', value)
        started = time.perf_counter()
        cpu = time.process_time()
        if op == 'get':
            for _ in range(n):
                get('bench:k')
        else:
            for _ in range(n):
                set_('bench:k', value)
        wall = time.perf_counter() - started
        self.response.payload = {'ops_per_s': n / wall, 'us_per_op': wall / n * 1e6,
                                 'worker_cpu_us_per_op': (time.process_time() - cpu) / n * 1e6}


class CacheFill(Service):
    """{"cache": name, "count": N, "prefix": p, "size": value bytes}: N distinct keys."""
    name = 'bench.cache-fill'

    def handle(self):
        p = self.request.payload
        c = self.cache[p['cache']]
        value = 'x' * p.get('size', 10)
        prefix = p.get('prefix', 'k')
        for i in range(p['count']):
            c.set('%s%d' % (prefix, i), value)
        self.response.payload = {'len': len(c)}
