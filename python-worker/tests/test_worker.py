"""End to end: a real ``python -m oxbus.worker`` process against a fake supervisor.

Each test writes a services directory, spawns the worker, plays the supervisor's side of
the handshake and then checks behaviour on the wire: replies, concurrency, heartbeats,
cancellation, draining, logging and every exit code the spec defines.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import FakeSupervisor, wait_until
from oxbus import _protocol as P

COMMON = {
    'demo.py': '''
        import logging
        import os
        import sys
        import threading
        import time

        from oxbus import Service

        log = logging.getLogger('demo.plain')

        class Echo(Service):
            def handle(self):
                doc = self.request.payload
                doc['ok'] = True
                self.response.payload = doc

        def wait_for(path, limit=20.0):
            deadline = time.monotonic() + limit
            while not os.path.exists(path):
                if time.monotonic() > deadline:
                    raise TimeoutError(path)
                time.sleep(0.005)

        class Block(Service):
            """Writes <dir>/started.<stream cid>, then waits for <dir>/release."""
            input = 'dir'

            def handle(self):
                d = self.request.input.dir
                open(os.path.join(d, 'started.' + self.cid), 'w').close()
                wait_for(os.path.join(d, 'release'))
                self.response.payload = {'released': self.cid}

        class Modules(Service):
            def handle(self):
                self.response.payload = sorted(m for m in ('asyncio', 'concurrent.futures')
                                               if m in sys.modules)
    ''',
}


def echo_body(i=1):
    return json.dumps({'i': i}).encode()


def start(sup, extra=None, **welcome):
    files = dict(COMMON)
    files.update(extra or {})
    return sup.start(files, **welcome)


def block_body(sup):
    return json.dumps({'dir': sup.dir}).encode()


def started(sup, cid):
    return os.path.exists(os.path.join(sup.dir, 'started.' + cid))


def release(sup):
    open(os.path.join(sup.dir, 'release'), 'w').close()


# -- handshake ---------------------------------------------------------------------------


def test_handshake_and_ready(sup):
    extra = {'shop/__init__.py': 'from .orders import *\n',
             'shop/orders.py': '''
                from oxbus import Service

                class Orders(Service):
                    name = 'shop.orders'
                    input = 'order_id', '-is_rush', '-note'
                    output = ('status',)
                    async def handle_GET(self):
                        pass
                    def handle_POST(self):
                        pass

                class Base(Service):   # no handler: an abstract base, not deployed
                    pass
             ''',
             'notes.txt': 'not python', '.hidden.py': 'raise SystemExit(9)'}
    hello, ready = start(sup, extra)
    assert hello == {'protocol': P.PROTOCOL_VERSION, 'worker_id': 3, 'pid': sup.proc.pid,
                     'token': '9f86d081884c7d65',
                     'python': '%d.%d.%d' % sys.version_info[:3], 'oxbus': '0.1.0'}
    assert ready['services'] == [
        {'name': 'demo.echo', 'module': 'demo', 'class': 'Echo', 'async': False, 'verbs': []},
        {'name': 'demo.block', 'module': 'demo', 'class': 'Block', 'async': False, 'verbs': [],
         'input': [{'name': 'dir', 'required': True, 'type': 'any'}]},
        {'name': 'demo.modules', 'module': 'demo', 'class': 'Modules', 'async': False,
         'verbs': []},
        {'name': 'shop.orders', 'module': 'shop.orders', 'class': 'Orders', 'async': True,
         'verbs': ['GET', 'POST'],
         # SimpleIO declarations, typed as SimpleIO converts them; a service without
         # them (the others) has no input/output keys at all.
         'input': [{'name': 'order_id', 'required': True, 'type': 'integer'},
                   {'name': 'is_rush', 'required': False, 'type': 'boolean'},
                   {'name': 'note', 'required': False, 'type': 'any'}],
         'output': [{'name': 'status', 'required': True, 'type': 'any'}]},
    ]
    assert isinstance(ready['startup_ms'], int) and ready['startup_ms'] >= 0


def test_bad_command_line_exits_2(sup):
    sup.spawn(args=['--socket', sup.path, '--worker-id', 'three'])
    assert sup.wait_exit() == 2
    sup.spawn(args=[])
    assert sup.wait_exit() == 2
    assert 'required' in sup.stderr


def test_the_token_comes_on_stdin_never_on_the_command_line(sup):
    # On the command line it would be readable by every local user (ps): refused.
    sup.spawn(args=['--socket', sup.path, '--worker-id', '3', '--token', 'x'])
    assert sup.wait_exit() == 2
    assert 'unrecognized arguments: --token' in sup.stderr
    # No token on stdin: exit 2, saying where it is expected; nothing was dialled.
    sup.spawn(token=None)
    assert sup.wait_exit() == 2
    assert 'first line of stdin' in sup.stderr
    # The token line read from stdin is the one HELLO presents.
    sup.spawn(token='abc123')
    sup.accept()
    kind, _, _, payload = sup.recv()
    assert kind == P.HELLO
    assert P.decode_json(payload)['token'] == 'abc123'


def test_protocol_mismatch_exits_4_with_the_message(sup):
    sup.spawn()
    sup.accept()
    assert sup.recv()[0] == P.HELLO
    sup.send_json(P.WELCOME, sup.welcome_doc(protocol=1))  # a version 1 supervisor
    kind, _, _, payload = sup.recv()
    assert kind == P.ERROR
    error = json.loads(payload)
    assert error['code'] == 'protocol_mismatch'
    assert sup.wait_exit() == 4
    assert 'speaks IPC protocol 1, this worker speaks 2' in sup.stderr
    assert error['message'] in sup.stderr


def test_error_frame_in_the_handshake_exits_4(sup):
    sup.spawn()
    sup.accept()
    sup.recv()
    sup.send_json(P.ERROR, {'code': 'bad_token', 'message': 'that token is not ours'})
    assert sup.wait_exit() == 4
    assert 'that token is not ours' in sup.stderr


def test_invalid_welcome_exits_4(sup):
    sup.spawn()
    sup.accept()
    sup.recv()
    sup.send_json(P.WELCOME, sup.welcome_doc(threads=0))
    kind, _, _, payload = sup.recv()
    assert kind == P.ERROR and json.loads(payload)['code'] == 'bad_welcome'
    assert sup.wait_exit() == 4
    assert 'threads' in sup.stderr


# -- import failures ------------------------------------------------------------------------


@pytest.mark.parametrize('files,expected', [
    ({'broken.py': 'def handle(:\n    pass\n'}, 'SyntaxError'),
    ({'needs.py': 'import oxbus_no_such_module_xyz\n'},
     "No module named 'oxbus_no_such_module_xyz'"),
    ({'raises.py': 'raise RuntimeError("config missing")\n'}, 'RuntimeError: config missing'),
    ({'a.py': 'from oxbus import Service\nclass X(Service):\n    name = "dup"\n'
              '    def handle(self): pass\n',
      'b.py': 'from oxbus import Service\nclass Y(Service):\n    name = "dup"\n'
              '    def handle(self): pass\n'}, "duplicate service name 'dup': class a.X"),
    ({'json.py': 'x = 1\n'}, "the module name 'json' is already taken"),
])
def test_import_failure_sends_error_and_exits_3(sup, files, expected):
    files = dict(files, **COMMON)
    from conftest import write_services
    write_services(sup.services_dir, files)
    sup.spawn()
    sup.accept()
    assert sup.recv()[0] == P.HELLO
    sup.send_json(P.WELCOME, sup.welcome_doc())
    kind, _, stream, payload = sup.recv()
    assert (kind, stream) == (P.ERROR, 0)
    error = json.loads(payload)
    assert error['code'] == 'import_failed'
    assert expected in error['message']
    assert sup.wait_exit() == 3
    assert expected in sup.stderr
    if 'Error' in expected:
        assert 'Traceback' in error['message'] or 'SyntaxError' in error['message']


# -- calls --------------------------------------------------------------------------------


def test_invoke_json_echo(sup):
    start(sup)
    sup.call(1, 'demo.echo', b'{"name":"Ann","n":1}')
    replies = sup.replies(1)
    meta, body = replies[1]
    assert meta == {'status': 200, 'content_type': 'application/json'}
    assert json.loads(body) == {'name': 'Ann', 'n': 1, 'ok': True}


def test_many_pipelined_calls_in_one_write(sup):
    start(sup)
    sup.conn.sendall(b''.join(sup.call_frame(i, 'demo.echo', echo_body(i))
                              for i in range(1, 501)))
    replies = sup.replies(500)
    assert all(json.loads(body) == {'i': i, 'ok': True} for i, (_, body) in replies.items())


def test_malformed_json_is_400(sup):
    start(sup)
    sup.call(4, 'demo.echo', b'{"name": ')
    meta, body = sup.replies(1)[4]
    assert meta['status'] == 400 and meta['content_type'] == 'application/json'
    doc = json.loads(body)
    assert doc['error'].startswith('malformed JSON: ') and doc['cid'] == 'cid-4'


def test_unknown_service_and_op(sup):
    start(sup)
    sup.call(1, 'no.such')
    sup.call(2, 'demo.echo', op='pubsub.publish')
    replies = sup.replies(2)
    assert replies[1][0]['status'] == 404
    assert json.loads(replies[1][1]) == {'error': 'no such service: no.such', 'cid': 'cid-1'}
    assert replies[2][0]['status'] == 501


def test_a_failing_service_does_not_hurt_the_worker(sup):
    extra = {'bad.py': '''
        import os
        from oxbus import Service
        class Crash(Service):
            def handle(self):
                raise MemoryError('pretend')
        class Exit(Service):
            def handle(self):
                raise SystemExit(3)
    '''}
    start(sup, extra)
    sup.call(1, 'bad.crash')
    sup.call(2, 'bad.exit')
    sup.call(3, 'demo.echo', b'{}')
    replies = sup.replies(3)
    assert [replies[i][0]['status'] for i in (1, 2, 3)] == [500, 500, 200]
    assert json.loads(replies[1][1]) == {'error': 'internal error', 'cid': 'cid-1'}
    # The REPLY's exc: each failure's family (built-in classes here), none on success.
    assert [replies[i][0].get('exc') for i in (1, 2, 3)] == ['MemoryError', 'SystemExit', None]


# -- concurrency --------------------------------------------------------------------------

BARRIER = {'conc.py': '''
    import threading, time
    from oxbus import Service

    barrier = threading.Barrier(8, timeout=15)

    class Wait(Service):
        name = 'barrier.wait'
        def handle(self):
            self.response.payload = {'i': barrier.wait()}

    lock = threading.Lock()
    state = {'now': 0, 'max': 0}

    class Busy(Service):
        name = 'busy'
        def handle(self):
            with lock:
                state['now'] += 1
                state['max'] = max(state['max'], state['now'])
            time.sleep(0.1)
            with lock:
                state['now'] -= 1
            self.response.payload = dict(state)
'''}


def test_barrier_of_8_completes_with_8_threads(sup):
    start(sup, BARRIER, threads=8)
    # All eight in ONE write: the leader decodes them as one batch. Each waits on one
    # 8-party barrier: had they run one by one, the barrier would break (a 500).
    sup.conn.sendall(b''.join(sup.call_frame(i, 'barrier.wait') for i in range(1, 9)))
    replies = sup.replies(8, timeout=20)
    assert all(meta['status'] == 200 for meta, _ in replies.values()), replies
    assert sorted(json.loads(body)['i'] for _, body in replies.values()) == list(range(8))


def test_threads_caps_concurrent_handlers(sup):
    start(sup, BARRIER, threads=3)
    sup.conn.sendall(b''.join(sup.call_frame(i, 'busy') for i in range(1, 10)))
    replies = sup.replies(9, timeout=20)
    peaks = [json.loads(body)['max'] for _, body in replies.values()]
    assert max(peaks) == 3


def test_a_slow_handler_does_not_hold_back_other_calls(sup):
    start(sup, threads=4)
    sup.call(1, 'demo.block', block_body(sup))
    sup.call(2, 'demo.echo', echo_body(2))
    wait_until(lambda: started(sup, 'cid-1'), what='the blocking call')
    # The leader ran the blocking call inline; the watchdog must have handed the socket
    # to another thread, which runs the echo while call 1 is still blocked.
    replies = sup.replies(1, timeout=3)
    assert list(replies) == [2]
    release(sup)
    assert list(sup.replies(1)) == [1]


def test_ping_is_answered_while_every_handler_thread_is_blocked(sup):
    start(sup, threads=2)
    for stream in (1, 2, 3):  # two run, one waits for a free slot
        sup.call(stream, 'demo.block', block_body(sup))
    wait_until(lambda: started(sup, 'cid-1') and started(sup, 'cid-2'), what='two blockers')
    for nonce in (b'\x00\x01\x02\x03\x04\x05\x06\x07', b'abcdefgh'):
        sup.send(P.PING, nonce)
        assert sup.recv(timeout=10) == (P.PONG, 0, 0, nonce)
    assert not started(sup, 'cid-3')  # still waiting for a free slot
    release(sup)
    replies = sup.replies(3)
    assert sorted(replies) == [1, 2, 3]


# -- async services -----------------------------------------------------------------------

ASYNC = {'aio.py': '''
    import asyncio, logging
    from oxbus import Service

    RUNNING = {'now': 0, 'max': 0}

    class Sleep(Service):
        async def handle(self):
            RUNNING['now'] += 1
            RUNNING['max'] = max(RUNNING['max'], RUNNING['now'])
            await asyncio.sleep(0.1)
            RUNNING['now'] -= 1
            logging.getLogger('aio').info('slept')
            self.response.payload = {'slept': self.request.payload['n'],
                                     'max': RUNNING['max']}
'''}


def test_async_services_run_concurrently_on_the_event_loop(sup):
    _, ready = start(sup, ASYNC, threads=1)
    assert {'name': 'aio.sleep', 'module': 'aio', 'class': 'Sleep', 'async': True,
            'verbs': []} in ready['services']
    sup.conn.sendall(b''.join(sup.call_frame(i, 'aio.sleep', json.dumps({'n': i}).encode())
                              for i in range(1, 51)))
    logs = []
    replies = sup.replies(50, timeout=30, others=logs)
    docs = {i: json.loads(body) for i, (_, body) in replies.items()}
    assert all(d['slept'] == i for i, d in docs.items())
    # On one thread, they overlapped: one by one, no more than 1 would ever be running.
    assert max(d['max'] for d in docs.values()) > 1, docs
    # Each task logs under its own invocation: contextvars, not thread-locals.
    log_docs = [json.loads(p) for k, _, _, p in logs if k == P.LOG]
    log_docs += [json.loads(p) for k, _, _, p in sup.no_frame_within(0.2) if k == P.LOG]
    assert sorted(d['cid'] for d in log_docs) == sorted('cid-%d' % i for i in range(1, 51))
    # A sync service still works alongside, and asyncio is loaded only because of aio.py.
    sup.call(99, 'demo.modules')
    assert 'asyncio' in json.loads(sup.replies(1)[99][1])


def test_asyncio_is_not_imported_without_async_services(sup):
    start(sup)
    sup.call(1, 'demo.modules')
    assert json.loads(sup.replies(1)[1][1]) == []


# -- cancel -------------------------------------------------------------------------------


def test_cancel_of_a_pending_call_drops_it(sup):
    extra = {'rec.py': '''
        import os
        from oxbus import Service
        class Record(Service):
            def handle(self):
                open(os.path.join(self.request.payload['dir'], 'ran.' + self.cid), 'w').close()
    '''}
    start(sup, extra, threads=1)
    sup.call(1, 'demo.block', block_body(sup))
    wait_until(lambda: started(sup, 'cid-1'), what='the blocker')
    sup.call(2, 'rec.record', block_body(sup))  # waits: the only slot is taken
    sup.send(P.CANCEL, b'', 2)
    # Frames are read in order: once this PING is answered, the CANCEL has been seen.
    sup.send(P.PING, b'synced!!')
    assert sup.recv_kind(P.PONG) == (P.PONG, 0, 0, b'synced!!')
    release(sup)
    sup.call(3, 'rec.record', block_body(sup))
    others = []
    replies = sup.replies(2, others=others)
    assert sorted(replies) == [1, 3]
    assert not os.path.exists(os.path.join(sup.dir, 'ran.cid-2'))
    assert os.path.exists(os.path.join(sup.dir, 'ran.cid-3'))
    assert [f for f in others + sup.no_frame_within(0.2) if f[0] == P.REPLY] == []


def test_cancel_of_a_running_call_discards_its_reply_even_if_the_stream_is_reused(sup):
    start(sup, threads=2)
    sup.call(5, 'demo.block', block_body(sup))
    wait_until(lambda: started(sup, 'cid-5'), what='the blocker')
    sup.send(P.CANCEL, b'', 5)
    # The supervisor may reuse a cancelled stream id at once.
    sup.call(5, 'demo.echo', echo_body(55), cid='second')
    meta, body = sup.replies(1)[5]
    assert json.loads(body) == {'i': 55, 'ok': True}
    release(sup)
    sup.call(6, 'demo.echo', echo_body(6))
    others = []
    replies = sup.replies(1, others=others)
    assert list(replies) == [6]
    assert [f for f in others + sup.no_frame_within(0.3) if f[0] == P.REPLY] == []


# -- drain and exit codes -----------------------------------------------------------------


def test_drain_finishes_in_flight_calls_then_byes_and_exits_0(sup):
    start(sup, threads=2)
    sup.call(1, 'demo.block', block_body(sup))
    sup.call(2, 'demo.echo', echo_body(2))
    wait_until(lambda: started(sup, 'cid-1'), what='the blocker')
    sup.send(P.DRAIN)
    sup.send(P.PING, b'pingping')  # heartbeats are still answered while draining
    frames = []
    assert sup.recv_kind(P.PONG, keep=frames) == (P.PONG, 0, 0, b'pingping')
    assert sup.proc.poll() is None  # still finishing call 1
    release(sup)
    bye = sup.recv_kind(P.BYE, keep=frames)
    assert bye == (P.BYE, 0, 0, b'')
    assert sorted(f[2] for f in frames if f[0] == P.REPLY) == [1, 2]
    assert sup.wait_exit() == 0


def test_stop_signals_are_left_to_the_supervisor(sup):
    # systemd signals every process of a unit, a terminal the whole process group: only the
    # supervisor decides when a worker stops.
    start(sup)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(sup.proc.pid, sig)
    # A signal is acted on before the process runs any further code: answering this PING
    # means all three were delivered and ignored.
    sup.send(P.PING, b'stillhere')
    assert sup.recv(timeout=10) == (P.PONG, 0, 0, b'stillhere')
    assert sup.proc.poll() is None
    sup.send(P.DRAIN)
    assert sup.recv_kind(P.BYE) == (P.BYE, 0, 0, b'')
    assert sup.wait_exit() == 0


def test_drain_when_idle(sup):
    start(sup)
    sup.send(P.DRAIN)
    assert sup.recv_kind(P.BYE) == (P.BYE, 0, 0, b'')
    assert sup.wait_exit() == 0


def test_supervisor_closing_the_socket_exits_5(sup):
    start(sup)
    sup.conn.shutdown(socket.SHUT_RDWR)
    assert sup.wait_exit() == 5
    assert 'lost the supervisor' in sup.stderr


def test_supervisor_silence_exits_5(sup):
    start(sup, heartbeat_ms=100)
    t0 = time.monotonic()
    assert sup.wait_exit() == 5
    assert time.monotonic() - t0 > 0.25  # not before the heartbeat window has passed
    assert 'no frame from the supervisor' in sup.stderr


def test_pings_keep_a_quiet_worker_alive(sup):
    start(sup, heartbeat_ms=100)
    for i in range(10):
        sup.send(P.PING, b'%08d' % i)
        assert sup.recv() == (P.PONG, 0, 0, b'%08d' % i)
        time.sleep(0.08)  # the pace of the pings is the behaviour under test, not a wait
    assert sup.proc.poll() is None


@pytest.mark.parametrize('bad,code', [
    (P.HEADER.pack(0, 12, 0, 0), 'unknown_kind'),
    (P.HEADER.pack(0, P.PING, 0x04, 0), 'bad_flags'),
    (P.HEADER.pack(P.MAX_FRAME_LENGTH + 1, P.CALL, 0, 1), 'frame_too_large'),
    (P.encode_frame(P.READY, b'{}'), 'unexpected_kind'),
    (P.encode_frame(P.CALL, b'\x00\x00\x00\x09{}', 1), 'bad_frame'),
    (P.encode_call(0x8000_0001, {'op': 'invoke'}), 'bad_stream'),
])
def test_a_bad_frame_gets_an_error_frame_and_exit(sup, bad, code):
    start(sup)
    sup.conn.sendall(bad)
    kind, _, stream, payload = sup.recv_kind(P.ERROR)
    assert stream == 0 and json.loads(payload)['code'] == code
    assert sup.wait_exit() == 5


# -- worker -> supervisor -----------------------------------------------------------------


def test_invoke_async_sends_an_async_call(sup):
    extra = {'caller.py': '''
        from oxbus import Service
        class Login(Service):
            def handle(self):
                self.response.payload = {'audit_cid': self.invoke_async(
                    'audit.record', {'event': 'login'})}
    '''}
    start(sup, extra)
    sup.call(1, 'caller.login')
    others = []
    meta, body = sup.replies(1, others=others)[1]
    (kind, flags, stream, payload), = [f for f in others if f[0] == P.CALL]
    assert flags == P.FLAG_ASYNC
    assert stream & P.WORKER_STREAM_BIT
    call_meta, call_body = P.decode_call(payload)
    assert call_meta == {'op': 'invoke', 'service': 'audit.record',
                         'cid': json.loads(body)['audit_cid'], 'data_format': 'json',
                         'caller': 'caller.login'}
    assert json.loads(call_body) == {'event': 'login'}


def test_logging_becomes_log_frames_with_cid_and_service(sup):
    extra = {'chatty.py': '''
        import logging
        from oxbus import Service
        logging.getLogger('chatty.import').warning('imported')  # before READY: buffered
        plain = logging.getLogger('chatty.plain')
        class Talk(Service):
            def handle(self):
                self.logger.info('via self.logger: %s', self.cid)
                plain.warning('via a plain logger')
                plain.debug('below the level')
                try:
                    1 / 0
                except ZeroDivisionError:
                    plain.exception('with a traceback')
        class Boom(Service):
            def handle(self):
                raise KeyError('secret-detail')
    '''}
    start(sup, extra, log_level='info')
    first = sup.recv_kind(P.LOG, timeout=5)
    assert json.loads(first[3]) == {'level': 'warning', 'logger': 'chatty.import',
                                    'msg': 'imported'}
    sup.call(7, 'chatty.talk')
    sup.call(8, 'chatty.boom')
    others = []
    replies = sup.replies(2, others=others)
    logs = [(stream, json.loads(p)) for k, _, stream, p in others + sup.no_frame_within(0.2)
            if k == P.LOG]
    talk = [doc for stream, doc in logs if stream == 7]
    assert talk[0] == {'level': 'info', 'logger': 'chatty.talk', 'msg': 'via self.logger: cid-7',
                       'cid': 'cid-7', 'service': 'chatty.talk'}
    assert talk[1] == {'level': 'warning', 'logger': 'chatty.plain', 'msg': 'via a plain logger',
                       'cid': 'cid-7', 'service': 'chatty.talk'}
    assert talk[2]['level'] == 'error' and talk[2]['msg'].startswith('with a traceback\n')
    assert 'ZeroDivisionError' in talk[2]['msg']
    assert len(talk) == 3  # the debug record was filtered by log_level
    (boom,) = [doc for stream, doc in logs if stream == 8]
    assert boom['level'] == 'error' and boom['cid'] == 'cid-8'
    assert boom['service'] == 'chatty.boom' and 'secret-detail' in boom['msg']
    assert 'Traceback' in boom['msg']
    assert b'secret-detail' not in replies[8][1]


def test_log_frames_carry_the_invocations_trace_id(sup):
    extra = {'traced.py': '''
        import logging
        from oxbus import Service
        class Traced(Service):
            def handle(self):
                logging.getLogger('traced').info('in %s', self.trace_id)
                self.response.payload = {'trace_id': self.trace_id}
    '''}
    start(sup, extra, log_level='info')
    traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
    sup.call(5, 'traced.traced', traceparent=traceparent)
    sup.call(6, 'traced.traced')  # no trace context: no trace_id in the record
    others = []
    replies = sup.replies(2, others=others)
    assert json.loads(replies[5][1]) == {'trace_id': '0af7651916cd43dd8448eb211c80319c'}
    assert json.loads(replies[6][1]) == {'trace_id': None}
    logs = {stream: json.loads(p) for k, _, stream, p in others + sup.no_frame_within(0.2)
            if k == P.LOG}
    assert logs[5] == {'level': 'info', 'logger': 'traced',
                       'msg': 'in 0af7651916cd43dd8448eb211c80319c', 'cid': 'cid-5',
                       'service': 'traced.traced',
                       'trace_id': '0af7651916cd43dd8448eb211c80319c'}
    assert 'trace_id' not in logs[6] and logs[6]['cid'] == 'cid-6'


def test_invoke_of_an_async_service_from_sync_and_async_callers(sup):
    extra = {'mix.py': '''
        import asyncio, logging
        from oxbus import Service
        from oxbus.service import current_invocation

        class Inner(Service):
            async def handle(self):
                await asyncio.sleep(0.01)
                logging.getLogger('mix').info('inner ran')
                self.response.payload = {'inner': list(current_invocation.get()[:2])}

        class Outer(Service):
            def handle(self):
                self.response.payload = self.invoke('mix.inner')

        class AsyncOuter(Service):
            async def handle(self):
                # A blocking invoke on the event loop: refused (a 500), naming ainvoke.
                self.response.payload = self.invoke('mix.inner')

        class AsyncAOuter(Service):
            async def handle(self):
                self.response.payload = await self.ainvoke('mix.inner')
    '''}
    start(sup, extra)
    sup.call(1, 'mix.outer')
    sup.call(2, 'mix.async-outer')
    sup.call(3, 'mix.async-a-outer')
    others = []
    replies = sup.replies(3, others=others)
    assert replies[1][0]['status'] == 200
    assert json.loads(replies[1][1]) == {'inner': ['cid-1', 'mix.inner']}
    assert replies[2][0]['status'] == 500
    assert replies[3][0]['status'] == 200
    assert json.loads(replies[3][1]) == {'inner': ['cid-3', 'mix.inner']}
    logs = [json.loads(p) for k, _, _, p in others + sup.no_frame_within(0.2) if k == P.LOG]
    assert {'level': 'info', 'logger': 'mix', 'msg': 'inner ran', 'cid': 'cid-1',
            'service': 'mix.inner'} in logs
    assert any(d['service'] == 'mix.async-outer' and 'would hold the event loop' in d['msg']
               and 'await self.ainvoke(' in d['msg'] for d in logs)


def test_ainvoke_of_a_plain_service_runs_it_off_the_event_loop(sup):
    # The plain callee blocks until another async request sets the event: with the callee
    # on the loop's thread that request could never run (the callee would give up after
    # its long safety wait and say so). Ordered by that event, not by time.
    extra = {'offloop.py': '''
        import threading
        from oxbus import Service
        from oxbus.service import current_invocation
        GO = threading.Event()

        class Blocker(Service):
            input = 'n'

            def handle(self):
                released = GO.wait(30)
                self.response.payload = {
                    'released': released, 'n': self.request.input.n,
                    'thread': threading.current_thread().name,
                    'invocation': list(current_invocation.get()[:2])}

        class Caller(Service):
            async def handle(self):
                self.response.payload = await self.ainvoke('offloop.blocker', {'n': 7})

        class Releaser(Service):
            async def handle(self):
                GO.set()
                self.response.payload = {'set': True}
    '''}
    start(sup, extra, threads=2)
    sup.call(1, 'offloop.caller')
    # The unrelated async request answers first, while the callee still blocks.
    sup.call(2, 'offloop.releaser')
    order = []
    while len(order) < 2:
        kind, _, stream, payload = sup.recv(30)
        if kind == P.REPLY:
            order.append((stream, P.decode_call(payload)))
    assert [stream for stream, _ in order] == [2, 1]
    assert json.loads(order[0][1][1]) == {'set': True}
    got = json.loads(order[1][1][1])
    assert got['released'] is True and got['n'] == 7
    assert got['thread'].startswith('oxbus-ainvoke')
    assert got['invocation'] == ['cid-1', 'offloop.blocker']


def test_a_plain_service_may_invoke_inside_its_own_asyncio_loop(sup):
    # Only the worker's event loop refuses a blocking self.invoke; a plain service running
    # a loop of its own (asyncio.run, in its handler thread) may invoke, as before ainvoke.
    extra = {'private.py': '''
        import asyncio
        from oxbus import Service

        class Leaf(Service):
            def handle(self):
                self.response.payload = 'ok'

        class ALeaf(Service):
            async def handle(self):
                self.response.payload = 'aok'

        class Plain(Service):
            def handle(self):
                async def fan():
                    return [self.invoke('private.leaf'), self.invoke('private.a-leaf')]
                self.response.payload = asyncio.run(fan())
    '''}
    start(sup, extra)
    sup.call(1, 'private.plain')
    meta, body = sup.replies(1)[1]
    assert meta['status'] == 200, body
    assert json.loads(body) == ['ok', 'aok']


def test_a_timed_out_plain_callee_still_running_does_not_keep_the_worker_after_bye(sup):
    # Its thread is a daemon thread: the drain ends with BYE and the process exits, while
    # the callee would go on for a minute.
    extra = {'hung.py': '''
        import threading
        from oxbus import Service

        class Hung(Service):
            def handle(self):
                threading.Event().wait(60)

        class Caller(Service):
            async def handle(self):
                self.response.payload = await self.ainvoke('hung.hung', timeout=0.01,
                                                           raise_timeout=False)
    '''}
    start(sup, extra, threads=2)
    sup.call(1, 'hung.caller')
    meta, body = sup.replies(1)[1]
    assert meta['status'] == 200 and body == b''
    sup.send(P.DRAIN)
    assert sup.recv_kind(P.BYE) == (P.BYE, 0, 0, b'')
    assert sup.wait_exit(10) == 0
