"""Calls a worker makes to its supervisor and waits for (``Worker.request``), through the
cache API, against a fake supervisor that answers ``cache.*`` CALLs from a dict.

The real server's answers are tested end to end in ``integration/tests/cache.rs``; these
tests are about the worker's side: whichever thread reads the socket hands each REPLY to the
thread waiting for it, other calls keep being served meanwhile, and errors become the right
exceptions.
"""

import json
import os

from conftest import FakeSupervisor  # noqa: F401  (the sup fixture's class)
from oxbus import _protocol as P

SERVICES = {'calls.py': '''
    import os
    import threading
    import time

    from oxbus import Service, UnknownCache, ValueTooLarge, NotAnInteger

    barrier = threading.Barrier(4)

    class Count(Service):
        """Increments 'n' by one, `times` times; answers with what each call returned."""
        input = 'times'

        def handle(self):
            self.response.payload = [self.cache.default.incr('n')
                                     for _ in range(self.request.input.times)]

    class Together(Service):
        """Four of these meet at a barrier, then each increments its own key 25 times."""
        input = 'who'

        def handle(self):
            barrier.wait(timeout=30)
            key = 'k-%s' % self.request.input.who
            self.response.payload = [self.cache.default.incr(key) for _ in range(25)]

    class Loop(Service):
        """Reads 'stop' from the server until it is true; answers how many reads it took."""
        def handle(self):
            n = 0
            while not self.cache.default.get('stop'):
                n += 1
            self.response.payload = n

    class Echo(Service):
        def handle(self):
            self.response.payload = self.request.payload

    class Types(Service):
        def handle(self):
            c = self.cache.default
            c.set('doc', {'a': [1, 2.5, None, True, 'é']}, expiry=5)
            c.set('raw', b'\\x00\\xff')
            self.response.payload = {'doc': c.get('doc'), 'raw': c.get('raw').hex(),
                                     'missing': c.get('nope', 'dflt'),
                                     'has': [c.has_key('doc'), 'nope' in c]}

    class Errors(Service):
        def handle(self):
            out = []
            for fn in (lambda: self.cache['nope'].get('x'),
                       lambda: self.cache.default.set('big', 'x'),
                       lambda: self.cache.default.incr('doc'),
                       lambda: self.cache.default.set('bad', object())):
                try:
                    fn()
                except Exception as e:
                    out.append([type(e).__name__, str(e),
                                isinstance(e, (UnknownCache, ValueTooLarge, NotAnInteger))])
            self.response.payload = out

    class Spawn(Service):
        """Starts a thread that reads a key, and returns once the server has its call."""
        input = 'dir'

        def handle(self):
            out = {}
            def run():
                out['v'] = self.cache.default.get('x')
            threading.Thread(target=run, daemon=True).start()
            deadline = time.monotonic() + 20
            while not os.path.exists(os.path.join(self.request.input.dir, 'go')):
                if time.monotonic() > deadline:
                    raise TimeoutError('no go')
                time.sleep(0.002)
            self.response.payload = {'spawned': True}

    class AsyncGet(Service):
        async def handle(self):
            c = self.cache.default
            try:
                c.get('doc')  # a blocking call on the event loop: refused, naming aget
                refused = None
            except RuntimeError as e:
                refused = str(e)
            await c.aset('n', 5)
            self.response.payload = {
                'doc': await c.aget('doc'), 'missing': await c.aget('nope', 'dflt'),
                'n': await c.aincr('n', 2), 'has': [await c.ahas_key('n'),
                                                    await c.ahas_key('nope')],
                'refused': refused}

    class Crowd(Service):
        """`n` threads of its own and the handler's thread each increment their own key
        `times` times; answers every key's final value."""
        input = 'who', 'n', 'times'

        def handle(self):
            inp = self.request.input
            keys = ['crowd-%s-%d' % (inp.who, i) for i in range(inp.n + 1)]
            out = {}

            def run(key):
                for _ in range(inp.times):
                    out[key] = self.cache.default.incr(key)
            threads = [threading.Thread(target=run, args=(k,), daemon=True)
                       for k in keys[1:]]
            for t in threads:
                t.start()
            run(keys[0])
            for t in threads:
                t.join()
            self.response.payload = out

    class AsyncCrowd(Service):
        """`n` tasks each await `times` out.rest calls in turn; answers how many came back."""
        input = 'n', 'times'

        async def handle(self):
            import asyncio

            async def run():
                done = 0
                for _ in range(self.request.input.times):
                    r = await self.out.rest['CRM'].conn.aget(self.cid)
                    done += r.data['ok']
                return done
            got = await asyncio.gather(*[run() for _ in range(self.request.input.n)])
            self.response.payload = sum(got)
'''}


class FakeCacheServer:
    """Answers the worker's cache.* CALLs from a dict, as the real server would."""

    def __init__(self, sup):
        self.sup = sup
        self.data = {}
        self.calls = 0
        self.held = []  # answers held back to send in reverse order (see hold)
        self.hold = 0

    def answer(self, meta, body):
        op, key = meta['op'], meta.get('key')
        if meta.get('cache', 'default') != 'default':
            return ({'status': 404, 'error': 'unknown_cache'},
                    b'{"error":"no cache named %s"}' % meta['cache'].encode())
        if op == 'cache.get':
            if key not in self.data:
                return {'status': 204}, b''
            kind, value = self.data[key]
            ct = 'application/octet-stream' if kind == 'bytes' else 'application/json'
            return {'status': 200, 'content_type': ct}, value
        if op == 'cache.set':
            if key == 'big':
                return ({'status': 413, 'error': 'too_large'},
                        b'{"error":"the value is 3 bytes, more than the max"}')
            self.data[key] = (meta.get('kind', 'json'), body)
            return {'status': 200}, b'true'
        if op == 'cache.has':
            return {'status': 200}, b'true' if key in self.data else b'false'
        if op == 'cache.incr':
            kind, value = self.data.get(key, ('json', b'0'))
            try:
                n = int(value) + meta['by']
            except ValueError:
                return ({'status': 409, 'error': 'not_integer'},
                        b'{"error":"the value of \\"doc\\" is not an integer"}')
            self.data[key] = ('json', str(n).encode())
            return {'status': 200}, str(n).encode()
        return {'status': 501}, b'{"error":"unknown op"}'

    def serve(self, replies, timeout=30):
        """Answer cache calls until ``replies`` REPLYs to supervisor calls have arrived."""
        got = {}
        while len(got) < replies:
            kind, _flags, stream, payload = self.sup.recv(timeout)
            if kind == P.CALL and stream & P.WORKER_STREAM_BIT:
                self.calls += 1
                meta, body = P.decode_call(payload)
                frame = P.encode_reply(stream, *self.answer(meta, body))
                if self.hold:
                    self.held.append(frame)
                    if len(self.held) == self.hold:
                        for f in reversed(self.held):
                            self.sup.conn.sendall(f)
                        self.held = []
                else:
                    self.sup.conn.sendall(frame)
            elif kind == P.REPLY:
                got[stream] = P.decode_call(payload)
        return got


def body(doc):
    return json.dumps(doc).encode()


def test_a_handler_waits_for_each_answer_in_turn(sup):
    sup.start(SERVICES, threads=2)
    server = FakeCacheServer(sup)
    sup.call(1, 'calls.count', body({'times': 50}))
    meta, data = server.serve(1)[1]
    assert meta['status'] == 200, data
    assert json.loads(data) == list(range(1, 51))
    assert server.calls == 50


def test_answers_reach_their_own_threads_whatever_the_order(sup):
    sup.start(SERVICES, threads=4)
    server = FakeCacheServer(sup)
    server.hold = 4  # answer four calls at a time, last first
    for i in range(4):
        sup.call(i + 1, 'calls.together', body({'who': i}))
    got = server.serve(4)
    assert sorted(got) == [1, 2, 3, 4]
    for stream, (meta, data) in got.items():
        assert meta['status'] == 200, data
        assert json.loads(data) == list(range(1, 26)), stream


def test_other_calls_are_served_while_a_handler_keeps_calling(sup):
    sup.start(SERVICES, threads=2)
    server = FakeCacheServer(sup)
    sup.call(1, 'calls.loop')
    # Let the loop run, then send an ordinary call: it must be answered while the loop
    # is still going (the loop only ends once 'stop' is set, after the echo came back).
    while server.calls < 200:
        kind, _f, stream, payload = sup.recv()
        assert kind == P.CALL and stream & P.WORKER_STREAM_BIT, (kind, payload)
        server.calls += 1
        sup.conn.sendall(P.encode_reply(stream, *server.answer(*P.decode_call(payload))))
    sup.call(2, 'calls.echo', body({'hi': 1}))
    got = {}
    while 2 not in got:
        kind, _f, stream, payload = sup.recv()
        if kind == P.REPLY:
            got[stream] = P.decode_call(payload)
        elif kind == P.CALL:
            sup.conn.sendall(P.encode_reply(stream, *server.answer(*P.decode_call(payload))))
    assert 1 not in got, 'the loop ended before it was told to'
    assert json.loads(got[2][1]) == {'hi': 1}
    server.data['stop'] = ('json', b'true')
    meta, data = server.serve(1)[1]
    assert json.loads(data) >= 200


def test_values_come_back_as_stored(sup):
    sup.start(SERVICES)
    server = FakeCacheServer(sup)
    sup.call(1, 'calls.types')
    meta, data = server.serve(1)[1]
    assert json.loads(data) == {'doc': {'a': [1, 2.5, None, True, 'é']}, 'raw': '00ff',
                                'missing': 'dflt', 'has': [True, False]}
    assert server.data['raw'] == ('bytes', b'\x00\xff')
    # An async service uses the awaitable forms: the loop never waits for the answer (the
    # fake server answers from this thread, after the loop sent each CALL).
    sup.call(2, 'calls.async-get')
    meta, data = server.serve(1)[2]
    got = json.loads(data)
    refused = got.pop('refused')
    assert got == {'doc': {'a': [1, 2.5, None, True, 'é']}, 'missing': 'dflt', 'n': 7,
                   'has': [True, False]}
    assert refused.startswith('a blocking call to the server (cache.get) from a coroutine '
                              'would stall the event loop'), refused
    assert 'await self.cache.default.aget(' in refused


def test_refusals_are_python_exceptions(sup):
    sup.start(SERVICES)
    server = FakeCacheServer(sup)
    server.data['doc'] = ('json', b'"text"')
    sup.call(1, 'calls.errors')
    meta, data = server.serve(1)[1]
    unknown, big, not_int, bad = json.loads(data)
    assert unknown == ['UnknownCache', 'no cache named nope', True]
    assert big[0] == 'ValueTooLarge' and big[2]
    assert not_int == ['NotAnInteger', 'the value of "doc" is not an integer', True]
    assert bad[0] == 'TypeError' and not bad[2]


def test_the_cache_outside_a_worker_says_so():
    from oxbus import Service

    class Lonely(Service):
        def handle(self):
            pass

    svc = Lonely()
    try:
        svc.cache.default.get('x')
    except RuntimeError as e:
        assert 'not running inside an oxbus worker' in str(e)
    else:
        raise AssertionError('no error')


def test_a_call_read_by_a_waiting_thread_is_run_at_once(sup):
    """A thread of the service's own waits in request() and reads the socket while the
    leader has nothing to do: the CALL that arrives with its REPLY must run now, not when
    the next frame happens to come (the leader used to claim the socket and block)."""
    sup.start(SERVICES, threads=4)
    sup.call(1, 'calls.spawn', body({'dir': sup.dir}))
    # The spawned thread's cache call arrives while the handler still runs inline, so that
    # thread holds the socket; then the handler is let go and answers.
    kind, _f, get_stream, payload = sup.recv()
    assert kind == P.CALL and get_stream & P.WORKER_STREAM_BIT, (kind, payload)
    open(os.path.join(sup.dir, 'go'), 'w').close()
    meta, data = sup.replies(1)[1]
    assert meta['status'] == 200, (meta, data)
    assert json.loads(data) == {'spawned': True}
    # Its REPLY and a new CALL in one write: the waiting thread reads both.
    sup.conn.sendall(P.encode_reply(get_stream, {'status': 204}, b'')
                     + sup.call_frame(2, 'calls.echo', body({'a': 1})))
    meta, data = sup.replies(1, timeout=10)[2]
    assert json.loads(data) == {'a': 1}


def test_every_waiter_gets_its_answer_under_load(sup):
    """Many threads (handlers and threads of their own) and many async tasks call the server
    at once; the server answers each batch it reads in one write, last first, now and then
    with a new CALL in the same write. Every call must come back: a REPLY (or the socket)
    handed to nobody would leave its thread parked and the run would hang (the generous
    timeout only catches that hang)."""
    sup.start(SERVICES, threads=4)
    server = FakeCacheServer(sup)
    n, times, tasks, atimes = 5, 60, 6, 40
    for i in range(4):
        sup.call(i + 1, 'calls.crowd', body({'who': i, 'n': n, 'times': times}))
    sup.call(5, 'calls.async-crowd', body({'n': tasks, 'times': atimes}))
    sup.call(6, 'calls.async-crowd', body({'n': tasks, 'times': atimes}))
    got, held, echoes, batches = {}, [], 0, 0
    while len(got) < 6 + echoes:
        kind, _f, stream, payload = sup.recv(timeout=60)
        if kind == P.CALL and stream & P.WORKER_STREAM_BIT:
            meta, data = P.decode_call(payload)
            if meta['op'] == 'out.rest':
                held.append(P.encode_reply(stream, {'status': 200, 'headers': [
                    ['content-type', 'application/json']]}, b'{"ok":1}'))
            else:
                held.append(P.encode_reply(stream, *server.answer(meta, data)))
        elif kind == P.REPLY:
            assert stream not in got, 'two replies on stream %d' % stream
            got[stream] = P.decode_call(payload)
        if held and not sup.frames:  # everything read so far is answered in one write
            batches += 1
            if batches % 16 == 0:
                echoes += 1
                held.append(sup.call_frame(100 + echoes, 'calls.echo', body({'e': echoes})))
            sup.conn.sendall(b''.join(reversed(held)))
            held = []
    for i in range(4):
        meta, data = got[i + 1]
        assert meta['status'] == 200, data
        assert json.loads(data) == {'crowd-%d-%d' % (i, k): times for k in range(n + 1)}
    for stream in (5, 6):
        meta, data = got[stream]
        assert meta['status'] == 200, data
        assert json.loads(data) == tasks * atimes
    for e in range(1, echoes + 1):
        assert json.loads(got[100 + e][1]) == {'e': e}
    assert echoes > 0
    # The last waiter gave the socket back: someone (the leader) reads the next CALL.
    sup.call(7, 'calls.echo', body({'after': True}))
    assert json.loads(sup.replies(1, timeout=60)[7][1]) == {'after': True}
