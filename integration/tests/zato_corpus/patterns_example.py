# -*- coding: utf-8 -*-

# stdlib
import time

# Zato
from zato.server.service import Service

# ###########################################################################


class Flaky(Service):
    """ Fails until it has been called `fail` times for a given key (kept in the cache).
    """
    name = 'patterns.flaky'

    def handle(self):
        key = 'flaky:' + self.request.payload['key']
        calls = self.cache.default.incr(key)
        if calls <= self.request.payload['fail']:
            raise Exception('attempt {} fails on purpose'.format(calls))
        self.response.payload = {'calls': calls}


class RetryBlocking(Service):
    name = 'patterns.retry-blocking'

    def handle(self):
        request = self.request.payload
        try:
            result = self.patterns.invoke_retry.invoke('patterns.flaky',
                {'key': request['key'], 'fail': request['fail']},
                repeats=request['repeats'], seconds=0.01)
        except Exception as e:
            self.response.payload = {'ok': False, 'error': type(e).__name__,
                'calls': self.cache.default.get('flaky:' + request['key'])}
        else:
            self.response.payload = {'ok': True, 'result': result}


class RetryFallback(Service):
    name = 'patterns.retry-fallback'

    def handle(self):
        request = self.request.payload
        cid = self.patterns.invoke_retry.invoke('patterns.flaky',
            {'key': request['key'], 'fail': request['fail']},
            repeats=request['repeats'], seconds=0.01, async_fallback=True,
            callback='patterns.record', context={'key': request['key']})
        self.response.payload = {'cid': cid}

# ###########################################################################


class Record(Service):
    """ A callback: keeps what it was given in the cache, under the request's key.
    """
    name = 'patterns.record'

    def handle(self):
        request = self.request.payload
        # A retry's context names its key; a fan-out's on-final runs under the fan-out's cid.
        key = (request.get('context') or {}).get('key') or self.cid
        phase = request.get('phase', 'retry')
        self.cache.default.set('record:{}:{}'.format(phase, key), request)


class RecordTarget(Service):
    name = 'patterns.record-target'

    def handle(self):
        request = self.request.payload
        self.cache.default.set('record:on-target:{}:{}'.format(request['cid'], request['target']),
            request)


class Worker(Service):
    """ A fan-out target: notes when it started and ended, so overlap can be checked.
    """
    name = 'patterns.worker'

    def handle(self):
        started = time.time()
        time.sleep(self.request.payload['sleep'])
        self.response.payload = {'n': self.request.payload['n'], 'started': started,
            'ended': time.time()}


class Broken(Service):
    name = 'patterns.broken'

    def handle(self):
        raise ValueError('this target always fails')


class FanOutExample(Service):
    name = 'patterns.fanout'

    def handle(self):
        n = self.request.payload['n']
        targets = {}
        for i in range(n):
            targets['patterns.worker-{}'.format(i)] = {'n': i, 'sleep': 0.3}
        targets['patterns.broken'] = None
        cid = self.patterns.fanout.invoke(targets, on_final='patterns.record',
            on_target='patterns.record-target')
        self.response.payload = {'cid': cid}


class ParallelExample(Service):
    name = 'patterns.parallel'

    def handle(self):
        cid = self.patterns.parallel.invoke({'patterns.worker-0': {'n': 0, 'sleep': 0},
            'patterns.worker-1': {'n': 1, 'sleep': 0}}, on_target='patterns.record-target')
        self.response.payload = {'cid': cid}


class GetRecord(Service):
    name = 'patterns.get-record'

    def handle(self):
        self.response.payload = {'value': self.cache.default.get(self.request.payload['key'])}

# ###########################################################################

# Distinct target names for the fan-out (each a service of its own, as in Zato's examples).
for _i in range(4):
    globals()['Worker{}'.format(_i)] = type('Worker{}'.format(_i), (Worker,),
        {'name': 'patterns.worker-{}'.format(_i), '__module__': __name__})
