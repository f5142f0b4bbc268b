"""Services the integration tests deploy. Each one exercises one behaviour of the runtime."""

import os
import threading
import time

from oxbus import Service, BadRequest, Conflict


class Echo(Service):
    name = 'test.echo'

    def handle(self):
        payload = self.request.payload
        if not isinstance(payload, dict):
            payload = {'payload': payload}
        payload['ok'] = True
        self.response.payload = payload


class Params(Service):
    name = 'test.params'
    input = 'item_id', 'name', '-is_active'

    def handle(self):
        i = self.request.input
        self.response.payload = {
            'item_id': i.item_id, 'name': i.name, 'is_active': i.is_active,
            'query': dict(self.request.http.query), 'method': self.request.http.method,
            'path': self.request.http.path, 'ua': self.request.http.headers.get('User-Agent'),
        }


class Boom(Service):
    name = 'test.boom'

    def handle(self):
        raise ValueError('secret detail that must not reach the client')


class Refuse(Service):
    name = 'test.refuse'

    def handle(self):
        raise Conflict(self.cid, 'already exists')


class Headers(Service):
    name = 'test.headers'

    def handle(self):
        self.response.status_code = 201
        self.response.headers = {'X-Custom': 'yes'}
        self.response.content_type = 'text/csv'
        self.response.payload = 'a,b\n1,2\n'


class Sleep(Service):
    """Sleeps for ?ms= milliseconds."""
    name = 'test.sleep'

    def handle(self):
        ms = int(self.request.http.query.get('ms', '0'))
        time.sleep(ms / 1000)
        self.response.payload = {'slept_ms': ms, 'pid': os.getpid()}


class Gate(Service):
    """Writes its pid to <dir>/started-<n>, then waits until <dir>/open exists."""
    name = 'test.gate'

    def handle(self):
        d = self.request.http.query['dir']
        n = self.request.http.query.get('n', '0')
        tmp = os.path.join(d, f'.started-{n}')
        with open(tmp, 'w') as f:
            f.write(str(os.getpid()))
        os.rename(tmp, os.path.join(d, f'started-{n}'))
        for _ in range(3000):
            if os.path.exists(os.path.join(d, 'open')):
                break
            time.sleep(0.01)
        self.response.payload = {'n': n, 'pid': os.getpid()}


_barrier = threading.Barrier(8)


class Barrier(Service):
    """Completes only when 8 invocations wait on the barrier at the same time."""
    name = 'test.barrier'

    def handle(self):
        _barrier.wait(timeout=20)
        self.response.payload = {'ok': True}


class Pid(Service):
    name = 'test.pid'

    def handle(self):
        self.response.payload = {'pid': os.getpid()}


class Spin(Service):
    """Never returns (a stuck handler)."""
    name = 'test.spin'

    def handle(self):
        while True:
            time.sleep(0.01)


class Log(Service):
    name = 'test.log'

    def handle(self):
        self.logger.info('hello from the log service')
        self.response.payload = {'cid': self.cid}


class Caller(Service):
    name = 'test.caller'

    def handle(self):
        inner = self.invoke('test.echo', {'from': 'caller'})
        async_cid = self.invoke_async('test.record', {'dir': self.request.http.query['dir']})
        self.response.payload = {'inner': inner, 'async_cid': async_cid}


class Record(Service):
    name = 'test.record'

    def handle(self):
        with open(os.path.join(self.request.payload['dir'], 'recorded'), 'w') as f:
            f.write(self.cid)


class Verbs(Service):
    name = 'test.verbs'

    def handle_GET(self):
        self.response.payload = {'verb': 'GET'}

    def handle_POST(self):
        self.response.payload = {'verb': 'POST'}


class AsyncEcho(Service):
    name = 'test.async'

    async def handle(self):
        import asyncio
        await asyncio.sleep(0.01)
        self.response.payload = {'async': True, 'payload': self.request.payload}
