"""A service's output reaches the server log with its invocation's cid: print() lines as
LOG frames (oxbus/_logctx.py), a record's ``extra=`` fields in the frame, and threads and
thread-pool work a service starts logging with the invocation that started them."""

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from oxbus import _logctx
from oxbus import _protocol as P
from oxbus._runtime import FrameLogHandler
from oxbus.service import current_invocation
from test_worker import start


def frames_handler():
    handler = FrameLogHandler()
    frames = []
    handler.sink = frames.append
    return handler, frames


def docs(frames):
    out = []
    for frame in frames:
        kind, _, stream, payload = P.decode_frame(frame)
        assert kind == P.LOG
        out.append((stream, json.loads(payload)))
    return out


def in_invocation(fn, invocation=('cid-1', 'svc.one', 5)):
    token = current_invocation.set(invocation)
    try:
        return fn()
    finally:
        current_invocation.reset(token)


def test_a_log_stream_sends_whole_lines_with_the_cid():
    handler, frames = frames_handler()
    stream = _logctx.LogStream(handler, 'stdout', logging.INFO, None)

    def prints():
        print('a', 'b', file=stream)        # three writes: 'a', ' ', 'b', then '\n'
        stream.write('two\nlines\npart')
        stream.write('ial\n')
        stream.write('no newline')
        stream.flush()
        stream.flush()                      # nothing pending: nothing sent
    in_invocation(prints)
    got = docs(frames)
    assert [d['msg'] for _, d in got] == ['a b', 'two', 'lines', 'partial', 'no newline']
    for stream_id, doc in got:
        assert stream_id == 5
        assert doc == {'level': 'info', 'logger': 'stdout', 'msg': doc['msg'],
                       'cid': 'cid-1', 'service': 'svc.one'}


def test_each_thread_keeps_its_own_unfinished_line():
    handler, frames = frames_handler()
    stream = _logctx.LogStream(handler, 'stderr', logging.WARNING, None)
    stream.write('main ')
    done = threading.Event()

    def other():
        stream.write('other\n')
        done.set()
    threading.Thread(target=other).start()
    done.wait(10)
    stream.write('thread\n')
    assert [d['msg'] for _, d in docs(frames)] == ['other', 'main thread']
    assert all(d['level'] == 'warning' and 'cid' not in d for _, d in docs(frames))


def test_extra_fields_travel_in_the_log_frame():
    handler, frames = frames_handler()
    logger = logging.getLogger('test.logctx.extra')
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        unencodable = object()
        in_invocation(lambda: logger.warning('placed %s', 7, extra={
            'order': 7, 'who': {'name': 'Ann'}, 'odd': unencodable}))
        logger.info('plain')
    finally:
        logger.removeHandler(handler)
    (_, placed), (_, plain) = docs(frames)
    assert placed['msg'] == 'placed 7' and placed['cid'] == 'cid-1'
    assert placed['extra'] == {'order': 7, 'who': {'name': 'Ann'}, 'odd': str(unencodable)}
    assert 'extra' not in plain


def test_threads_and_pool_work_started_in_an_invocation_carry_it():
    _logctx.install_thread_context()
    seen = {}

    def record(key):
        current = current_invocation.get()
        seen[key] = current[0] if current else None

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        def starts():
            thread = threading.Thread(target=record, args=('thread',))
            thread.start()
            thread.join()
            pool.submit(record, 'pool').result()
        in_invocation(starts)
        # The pool's thread runs other work next: it does not keep the invocation.
        pool.submit(record, 'pool later').result()
        outside = threading.Thread(target=record, args=('outside',))
        outside.start()
        outside.join()
        plain = threading.Thread(target=record, args=('plain',))
        in_invocation(lambda: _logctx.start_plain(plain))
        plain.join()
    finally:
        pool.shutdown()
    assert seen == {'thread': 'cid-1', 'pool': 'cid-1', 'pool later': None,
                    'outside': None, 'plain': None}


def test_print_in_a_worker_is_a_log_frame_in_order_with_the_cid(sup):
    extra = {'printer.py': '''
        import logging
        import sys
        import threading
        from oxbus import Service
        class Printer(Service):
            def handle(self):
                print('first')
                self.logger.info('second', extra={'order': 2})
                print('third', file=sys.stderr)
                t = threading.Thread(target=lambda: logging.getLogger('bg').warning('fourth'))
                t.start()
                t.join()
    '''}
    start(sup, extra, log_level='info')
    sup.call(7, 'printer.printer')
    others = []
    sup.replies(1, others=others)
    logs = [json.loads(p) for k, _, stream, p in others if k == P.LOG and stream == 7]
    assert [(d['logger'], d['level'], d['msg']) for d in logs] == [
        ('stdout', 'info', 'first'), ('printer.printer', 'info', 'second'),
        ('stderr', 'warning', 'third'), ('bg', 'warning', 'fourth')]
    assert all(d['cid'] == 'cid-7' and d['service'] == 'printer.printer' for d in logs)
    assert logs[1]['extra'] == {'order': 2}
