"""A service's output reaches the server log with its invocation's cid: print() lines as
LOG frames (oxbus/_logctx.py), a record's ``extra=`` fields in the frame, and threads and
thread-pool work a service starts logging with the invocation that started them."""

import io
import json
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from oxbus import _logctx
from oxbus import _protocol as P
from oxbus import _runtime
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


@pytest.fixture
def restore_thread_start(monkeypatch):
    """install_thread_context() patches Thread.start and ThreadPoolExecutor.submit for the
    whole process: put them back after the test."""
    monkeypatch.setattr(threading.Thread, 'start', threading.Thread.start)
    monkeypatch.setattr(ThreadPoolExecutor, 'submit', ThreadPoolExecutor.submit)
    yield
    _logctx.carrying.clear()  # the calls these tests fake are never ended by a dispatcher


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


def test_threads_and_pool_work_started_in_an_invocation_carry_it(restore_thread_start):
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


# -- review fixes ------------------------------------------------------------------------


def test_an_unfinished_line_is_sent_with_the_invocation_that_wrote_it():
    handler, frames = frames_handler()
    stream = _logctx.LogStream(handler, 'stdout', logging.INFO, None)
    _logctx._streams[:] = [stream]
    try:
        first = ('cid-1', 'svc.one', 1)
        # The thread's next invocation writes: the last one's text is its own record.
        in_invocation(lambda: stream.write('progress '), first)
        in_invocation(lambda: print('done', file=stream), ('cid-3', 'svc.two', 3))
        # The invocation ends: its text goes then, not with whatever this thread does next.
        second = ('cid-4', 'svc.one', int('4'))

        def ends():
            stream.write('half')
            assert _logctx.holding
            _logctx.end_invocation(('cid-4', 'svc.one', 4))  # an equal one: not this one
            assert len(frames) == 2
            _logctx.end_invocation(second)
        in_invocation(ends, second)
        assert not _logctx.holding
        stream.write('outside\n')
    finally:
        _logctx._streams[:] = []
    assert [(s, d['msg'], d.get('cid')) for s, d in docs(frames)] == [
        (1, 'progress ', 'cid-1'), (3, 'done', 'cid-3'), (4, 'half', 'cid-4'),
        (0, 'outside', None)]


def test_a_pool_threads_unfinished_line_stays_with_its_call(sup):
    extra = {'partial.py': '''
        from oxbus import Service
        class Partial(Service):
            def handle(self):
                print('progress ', end='')
        class Done(Service):
            def handle(self):
                print('done')
    '''}
    start(sup, extra, threads=1, log_level='info')
    others = []
    sup.call(1, 'partial.partial')
    sup.replies(1, others=others)
    sup.call(3, 'partial.done')
    sup.replies(1, others=others)
    logs = [(stream, json.loads(p)) for k, _, stream, p in others if k == P.LOG]
    assert [(s, d['msg'], d['cid']) for s, d in logs] == [
        (1, 'progress ', 'cid-1'), (3, 'done', 'cid-3')]


def test_atexit_output_reaches_the_workers_stderr(sup):
    extra = {'ax.py': '''
        import atexit, sys
        from oxbus import Service
        atexit.register(lambda: print('atexit: closing pool', file=sys.stderr))
        class Quiet(Service):
            def handle(self):
                pass
    '''}
    start(sup, extra)
    sup.send(P.DRAIN)
    assert sup.recv_kind(P.BYE) == (P.BYE, 0, 0, b'')
    assert sup.wait_exit() == 0
    assert 'atexit: closing pool' in sup.stderr


def test_uninstall_stdio_puts_the_streams_back(monkeypatch):
    handler, frames = frames_handler()
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr('sys.__stdout__', out)
    monkeypatch.setattr('sys.__stderr__', err)
    monkeypatch.setattr('sys.stdout', sys.stdout)
    monkeypatch.setattr('sys.stderr', sys.stderr)
    _logctx.install_stdio(handler)
    sys.stderr.write('half')
    _logctx.uninstall_stdio()
    assert sys.stdout is out and sys.stderr is err
    print('after', file=sys.stderr)
    assert err.getvalue() == 'halfafter\n' and frames == [] and not _logctx.holding


def test_a_thread_outliving_its_call_logs_without_its_cid(restore_thread_start):
    _logctx.install_thread_context()
    handler, frames = frames_handler()
    logger = logging.getLogger('test.logctx.bg')
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    work, done = [], threading.Semaphore(0)
    wake = threading.Event()

    def loop():  # a library's lazily started background thread
        while True:
            wake.wait()
            wake.clear()
            what = work.pop()
            if what is None:
                return
            logger.info(what)
            done.release()

    thread = threading.Thread(target=loop, daemon=True)
    try:
        def first_call():
            thread.start()
            work.append('during')
            wake.set()
            done.acquire()
        in_invocation(first_call, ('cid-1', 'svc.one', 5))
        _logctx.end_call(5)  # the dispatcher's end of call 5
        work.append('after')
        wake.set()
        done.acquire()
        # A later call on the same stream number is not the one that started it.
        in_invocation(lambda: (work.append('later'), wake.set(), done.acquire()),
                      ('cid-2', 'svc.one', 5))
        assert _logctx.carrying == {}
    finally:
        work.append(None)
        wake.set()
        thread.join(10)
        logger.removeHandler(handler)
    assert [(d['msg'], d.get('cid')) for _, d in docs(frames)] == [
        ('during', 'cid-1'), ('after', None), ('later', None)]


def test_the_end_of_a_call_ends_its_threads_invocation_in_a_worker(sup):
    extra = {'bg.py': '''
        import logging, queue, threading
        from oxbus import Service
        jobs = queue.Queue()
        started = []
        def loop():
            while True:
                what, done = jobs.get()
                logging.getLogger('bg').warning(what)
                done.set()
        class Send(Service):
            def handle(self):
                if not started:
                    started.append(threading.Thread(target=loop, daemon=True))
                    started[0].start()
                done = threading.Event()
                jobs.put(('job of ' + self.cid, done))
                done.wait()
    '''}
    start(sup, extra, log_level='info')
    others = []
    for stream in (1, 3):
        sup.call(stream, 'bg.send')
        sup.replies(1, others=others)
    logs = [json.loads(p) for k, _, _, p in others if k == P.LOG]
    assert [(d['msg'], d.get('cid')) for d in logs] == [
        ('job of cid-1', 'cid-1'), ('job of cid-3', None)]


def test_buffer_and_other_text_stream_attributes():
    handler, frames = frames_handler()
    original = io.StringIO()
    stream = _logctx.LogStream(handler, 'stdout', logging.INFO, original)
    stream.buffer.write(b'bin\n')
    stream.buffer.write('é'.encode()[:1])   # a character split across writes
    stream.buffer.write('é'.encode()[1:] + b' \xff\n')
    stream.buffer.flush()
    stream.reconfigure(line_buffering=True, errors='replace')
    stream.writelines(['a\n', 'b\n'])
    assert [d['msg'] for _, d in docs(frames)] == ['bin', 'é \\xff', 'a', 'b']
    assert (stream.encoding, stream.errors, stream.isatty(), stream.writable(),
            stream.line_buffering) == ('utf-8', 'backslashreplace', False, True, True)
    with pytest.raises(io.UnsupportedOperation):
        stream.fileno()  # StringIO has none
    with pytest.raises(io.UnsupportedOperation):
        _logctx.LogStream(handler, 'stdout', logging.INFO, None).fileno()


def test_many_small_writes_keep_a_running_length():
    # One-character writes used to sum the held pieces on every write (quadratic time):
    # the held length is kept as it grows, and a line is cut exactly at MAX_LINE_CHARS.
    handler, frames = frames_handler()
    stream = _logctx.LogStream(handler, 'stdout', logging.INFO, None)
    for _ in range(_logctx.MAX_LINE_CHARS):
        stream.write('.')
    assert stream._line().length == _logctx.MAX_LINE_CHARS and frames == []
    stream.write('.')
    stream.write('\n')
    assert [len(d['msg']) for _, d in docs(frames)] == [_logctx.MAX_LINE_CHARS, 1]


def test_extra_keys_that_are_not_text_or_are_the_frames_own():
    handler, frames = frames_handler()
    logger = logging.getLogger('test.logctx.keys')
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning('int key', extra={1: 'a'})
        in_invocation(lambda: logger.warning('named', extra={
            'cid': 'theirs', 'service': 's', 'trace_id': 't'}))
        big = {'rows': ['x' * 1000] * 100}
        logger.warning('big', extra={'big': big, 'small': 1})
        logger.warning('many', extra={'k%d' % i: 'v' * 10000 for i in range(10)})
    finally:
        logger.removeHandler(handler)
    got = docs(frames)
    assert got[0][1]['extra'] == {'1': 'a'}
    assert got[1][1]['cid'] == 'cid-1'
    assert got[1][1]['extra'] == {'extra_cid': 'theirs', 'extra_service': 's',
                                  'extra_trace_id': 't'}
    extra = got[2][1]['extra']
    assert extra['small'] == 1 and isinstance(extra['big'], str)
    assert extra['big'].startswith('{"rows":["xxx') and '…[truncated ' in extra['big']
    assert len(extra['big'].encode()) <= _runtime.MAX_EXTRA_VALUE + 64
    many = got[3][1]['extra']
    assert len(many) == 4 and many['extra_left_out'] == 7
    assert len(frames) == 4  # nothing else (no handleError traceback)


def test_a_service_loggers_context_and_its_extra_cid():
    from oxbus.service import _context_filter
    handler, frames = frames_handler()
    logger = logging.getLogger('test.logctx.svc')
    logger.addHandler(handler)
    logger.addFilter(_context_filter)
    logger.propagate = False
    try:
        in_invocation(lambda: logger.warning('plain'))
        in_invocation(lambda: logger.warning('named', extra={'cid': 'theirs'}))
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(_context_filter)
    (_, plain), (_, named) = docs(frames)
    assert 'extra' not in plain and plain['cid'] == 'cid-1'
    assert named['cid'] == 'cid-1' and named['extra'] == {'extra_cid': 'theirs'}


def test_asyncio_tasks_on_one_thread_keep_their_own_text():
    import asyncio
    handler, frames = frames_handler()
    stream = _logctx.LogStream(handler, 'stdout', logging.INFO, None)

    async def task(invocation, parts, gate, then):
        current_invocation.set(invocation)
        for part in parts:
            stream.write(part)
            gate.set()
            await then.wait()

    async def main():
        a_wrote, b_wrote = asyncio.Event(), asyncio.Event()
        done = asyncio.Event()
        done.set()
        a = asyncio.create_task(task(('cid-a', 's', 1), ['a starts ', 'a ends\n'],
                                     a_wrote, b_wrote))
        await a_wrote.wait()
        await task(('cid-b', 's', 2), ['b line\n'], b_wrote, done)
        await a
    asyncio.run(main())
    assert [(d['msg'], d['cid']) for _, d in docs(frames)] == [
        ('a starts ', 'cid-a'), ('b line', 'cid-b'), ('a ends', 'cid-a')]
