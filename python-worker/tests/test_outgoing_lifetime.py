"""Outgoing calls and their lifetime: what a cancelled call or a finished invocation left
open on the server is ended (ASYNC calls), blocking forms refuse the event loop, and the
tolerant corners of the SQL values and REST headers."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
from decimal import Decimal

import pytest

from conftest import FakeSupervisor  # noqa: F401  (the sup fixture's class)
from oxbus import Service
from oxbus import _protocol as P
from oxbus import outgoing as O
from oxbus._dispatch import Dispatcher
from oxbus._runtime import _FutureSlot
from oxbus.outgoing import OutgoingAPI
from oxbus.sql import decode_value, encode_value
from test_outgoing import FakeServer, _async_of, ok, result, sql_handler, stream_handler


def posted_calls(dispatcher):
    """The ASYNC CALLs a dispatcher posted: [(meta, body)], each checked to be ASYNC."""
    calls = []
    for frame in dispatcher.posted:
        _length, kind, flags, stream = P.HEADER.unpack_from(frame)
        assert kind == P.CALL and flags & P.FLAG_ASYNC and stream & P.WORKER_STREAM_BIT
        calls.append(P.decode_call(frame[P.HEADER_SIZE:]))
    return calls


def reply_payload(meta, body):
    """A REPLY frame's payload (what a waiter's slot gets)."""
    return P.encode_reply(0, meta, json.dumps(body).encode())[P.HEADER_SIZE:]


def invoke(dispatcher, name, run_async=False):
    meta = {'op': 'invoke', 'service': name, 'cid': 'cid-4', 'data_format': 'json'}
    if run_async:
        return asyncio.run(dispatcher.run_async(11, meta, b''))
    return dispatcher.run(11, meta, b'')


# -- what an invocation leaves open ----------------------------------------------------------


class LeavesSession(Service):
    name = 'leaves.session'

    def handle(self):
        # Zato's form without close(): the SELECT began a transaction (autobegin).
        rows = self.outgoing.sql.get('crm').session().execute('SELECT 1').fetchall()
        self.response.payload = {'rows': len(rows)}


class LeavesStream(Service):
    name = 'leaves.stream'

    def handle(self):
        batches = self.out.sql['crm'].stream('SELECT n', [1], batch=2)
        self.response.payload = {'first': len(next(batches))}


class EndsEverything(Service):
    name = 'ends.everything'

    def handle(self):
        db = self.out.sql['crm']
        with db.transaction() as tx:
            tx.execute('A')
        session = db.session()
        session.execute('B')
        session.commit()
        session.close()


def test_a_session_left_open_is_rolled_back_as_the_invocation_ends(caplog):
    log = []
    d = Dispatcher({LeavesSession.name: LeavesSession}, request=FakeServer(sql_handler(log)))
    with caplog.at_level(logging.WARNING, logger='oxbus.outgoing'):
        invoke(d, LeavesSession.name)
    assert log == [('execute', 7, 'SELECT 1')]   # nothing ended it in the service...
    (meta, body), = posted_calls(d)               # ...so an ASYNC rollback was posted
    assert meta['op'] == 'out.sql' and meta['conn'] == 'crm'
    assert meta['action'] == 'rollback' and meta['tx'] == 7 and meta['cid'] == 'cid-4'
    assert body == b'{}'
    (record,) = [r for r in caplog.records if r.name == 'oxbus.outgoing']
    assert 'leaves.session' in record.getMessage()
    assert 'transaction 7 on crm' in record.getMessage()


def test_a_stream_left_open_is_closed_and_ended_ones_are_not_touched(caplog):
    d = Dispatcher({LeavesStream.name: LeavesStream},
                   request=FakeServer(stream_handler([[['1'], ['2']], [['3']]], [])))
    with caplog.at_level(logging.WARNING, logger='oxbus.outgoing'):
        invoke(d, LeavesStream.name)
    (meta, _body), = posted_calls(d)
    assert meta['action'] == 'close' and meta['stream'] == 3 and 'tx' not in meta
    assert 'leaves.stream' in caplog.text

    log = []
    d = Dispatcher({EndsEverything.name: EndsEverything},
                   request=FakeServer(sql_handler(log)))
    invoke(d, EndsEverything.name)
    assert log == [('execute', 7, 'A'), 'commit', ('execute', 7, 'B'), 'commit']
    assert d.posted == []


def test_an_async_service_leaving_a_transaction_open():
    class Forgets(Service):
        name = 'forgets.tx'

        async def handle(self):
            tx = self.out.sql['crm'].atransaction()
            await tx.abegin()
            await tx.aexecute('A')

    log = []
    d = Dispatcher({Forgets.name: Forgets}, request=FakeServer(sql_handler(log)))
    invoke(d, Forgets.name, run_async=True)
    (meta, _body), = posted_calls(d)
    assert meta['action'] == 'rollback' and meta['tx'] == 7


# -- cancelled calls -------------------------------------------------------------------


class HeldServer:
    """An ``arequest`` whose REPLYs the test releases: as the worker's, it resolves a
    :class:`_FutureSlot`, so a cancelled waiter's REPLY goes to its orphan hook."""

    def __init__(self, answer):
        self.answer = answer  # meta dict -> (reply meta, reply body)
        self.slots = []       # (call meta, slot)

    async def arequest(self, meta, body=b'', orphan=None):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.slots.append((meta, _FutureSlot(loop, future, orphan)))
        return P.split_call(await future)

    def release(self, i):
        meta, slot = self.slots[i]
        reply_meta, reply_body = self.answer(meta)
        slot.append(reply_payload(reply_meta, reply_body))


def _cancel_midway(make_call, answer):
    """Start ``make_call(out)``, cancel it while it waits, then let its REPLY come."""
    server = HeldServer(answer)
    d = Dispatcher({}, request=FakeServer(), arequest=server.arequest)

    async def run():
        task = asyncio.ensure_future(make_call(d.outgoing))
        for _ in range(100):
            if server.slots or task.done():
                break
            await asyncio.sleep(0)
        assert server.slots, 'the call never went out: %r' % (task.done() and task.exception())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        server.release(0)        # the late REPLY
        for _ in range(3):
            await asyncio.sleep(0)
    asyncio.run(run())
    return d


def test_a_cancelled_abegin_rolls_back_the_transaction_its_reply_opened():
    d = _cancel_midway(lambda out: out.sql['crm'].atransaction().abegin(),
                       lambda meta: ({'status': 200}, {'tx': 12}))
    (meta, _body), = posted_calls(d)
    assert meta['op'] == 'out.sql' and meta['action'] == 'rollback' and meta['tx'] == 12


def test_a_cancelled_astream_closes_the_stream_its_reply_opened():
    async def open_stream(out):
        return await out.sql['crm'].astream('SELECT n')
    d = _cancel_midway(open_stream, lambda meta: ({'status': 200}, {
        'stream': 5, 'columns': ['n'], 'types': ['int'], 'rows': [[1]], 'done': False}))
    (meta, _body), = posted_calls(d)
    assert meta['action'] == 'close' and meta['stream'] == 5

    # A failed begin, or a stream whose only batch was its last, opened nothing.
    d = _cancel_midway(lambda out: out.sql['crm'].atransaction().abegin(),
                       lambda meta: ({'status': 503, 'error': 'pool_full'}, {'error': 'x'}))
    assert d.posted == []
    d = _cancel_midway(open_stream, lambda meta: ({'status': 200}, {
        'stream': 5, 'columns': ['n'], 'types': ['int'], 'rows': [], 'done': True}))
    assert d.posted == []


def test_a_future_slot_of_a_closed_loop_drops_the_reply():
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    seen = []
    slot = _FutureSlot(loop, future, lambda raw, body: seen.append(raw))
    loop.close()
    slot.append(reply_payload({'status': 200}, {}))   # does not raise
    assert not future.done() and seen == []


ASYNC_SERVICES = {'cancelsvc.py': '''
    import asyncio
    from oxbus import Service

    class Cancel(Service):
        """Cancels a begin whose CALL went out, then waits for a REST answer."""
        async def handle(self):
            task = asyncio.ensure_future(self.out.sql['crm'].atransaction().abegin())
            await asyncio.sleep(0)   # the CALL is written before the task first waits
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            await self.out.rest['CRM'].conn.aget(self.cid)
            worker = self._oxbus_dispatcher.outgoing.sql._caller.arequest.__self__
            self.response.payload = {'waiters': len(worker._waiters)}
'''}


def test_a_cancelled_calls_late_reply_is_dropped_and_its_transaction_rolled_back(sup):
    sup.start(ASYNC_SERVICES, threads=2)
    sup.call(1, 'cancelsvc.cancel')
    _k, _f, begin_stream, payload = sup.recv_kind(P.CALL)
    assert P.decode_call(payload)[0]['action'] == 'begin'
    _k, _f, rest_stream, payload = sup.recv_kind(P.CALL)
    assert P.decode_call(payload)[0]['op'] == 'out.rest'
    # The begin's REPLY comes after the task was cancelled, then the REST one.
    sup.conn.sendall(P.encode_reply(begin_stream, {'status': 200}, b'{"tx":31}'))
    sup.conn.sendall(P.encode_reply(rest_stream, {'status': 200, 'headers': []}, b''))
    others = []
    meta, data = sup.replies(1, others=others)[1]
    assert json.loads(data) == {'waiters': 0}   # both waiters were removed
    calls = [f for f in others if f[0] == P.CALL]
    if not calls:
        calls = [sup.recv_kind(P.CALL)]
    (_k, flags, stream, payload), = calls
    assert flags & P.FLAG_ASYNC and stream & P.WORKER_STREAM_BIT
    meta, body = P.decode_call(payload)
    assert meta['op'] == 'out.sql' and meta['conn'] == 'crm'
    assert meta['action'] == 'rollback' and meta['tx'] == 31 and meta['cid'] == 'cid-1'


# -- blocking forms on the event loop ----------------------------------------------------


def test_blocking_forms_refuse_to_run_on_the_event_loop():
    server = FakeServer()
    out = OutgoingAPI(server)

    async def run():
        with pytest.raises(RuntimeError, match='crm: a blocking outgoing call from a '
                                               'coroutine.*afetch_all'):
            out.sql['crm'].fetch_all('SELECT 1')
        with pytest.raises(RuntimeError, match='CRM: .*await conn.aget'):
            out.rest['CRM'].conn.get('c')
    asyncio.run(run())
    assert server.calls == []
    server.answer(*ok())   # outside a loop the same call goes out
    assert out.rest['CRM'].conn.get('c').status_code == 200


# -- values and headers ----------------------------------------------------------------


def test_fetch_value_takes_the_first_column_even_when_names_repeat():
    server = FakeServer()
    db = OutgoingAPI(server, _async_of(server)).sql['crm']
    server.answer(*result(['id', 'id'], ['int', 'int'], [[1, 2]]))
    assert db.fetch_value('SELECT a.id, b.id FROM a, b') == 1
    server.answer(*result(['id', 'id'], ['int', 'int'], []))
    assert db.fetch_value('SELECT a.id, b.id FROM a, b') is None
    server.answer(*result(['v', 'v'], ['decimal', 'text'], [['1.5', 'x']]))
    assert asyncio.run(db.afetch_value('SELECT')) == Decimal('1.5')


def test_session_close_logs_a_failed_rollback_instead_of_raising(caplog):
    def handle(meta, body):
        if meta['action'] == 'begin':
            return {'status': 200}, {'tx': 2}
        if meta['action'] == 'rollback':
            return {'status': 502, 'error': 'io'}, {'error': 'crm: connection lost'}
        return result(['n'], ['int'], [[1]])
    db = OutgoingAPI(FakeServer(handle)).sql['crm']
    with caplog.at_level(logging.WARNING, logger='oxbus.sql'):
        with pytest.raises(KeyError, match='mine'):   # the user's exception goes on
            with db.session() as session:
                session.execute('SELECT 1')
                raise KeyError('mine')
    assert 'rollback of a session on crm failed' in caplog.text
    session = db.session()
    session.execute('SELECT 1')
    with pytest.raises(O.OutgoingConnectionError):   # an explicit rollback still raises
        session.rollback()


def test_decoders_return_what_they_cannot_parse_as_it_came():
    # SQLite holds anything anywhere; PostgreSQL has infinite timestamps and dates.
    assert decode_value('datetime', 1700000000) == 1700000000
    assert decode_value('datetimetz', 1700000000.5) == 1700000000.5
    assert decode_value('datetime', 'infinity') == 'infinity'
    assert decode_value('datetimetz', '-infinity') == '-infinity'
    assert decode_value('date', 'infinity') == 'infinity'
    assert decode_value('datetime', 'yesterday') == 'yesterday'
    assert decode_value('date', 20240102) == 20240102
    assert decode_value('date', '2024-01-02 10:11:12') == dt.date(2024, 1, 2)
    assert decode_value('date', 'soon') == 'soon'
    assert decode_value('time', 'noon') == 'noon' and decode_value('time', 3600) == 3600
    assert decode_value('bytes', 'not base64!') == 'not base64!'
    assert decode_value('bytes', 'YWI=') == b'ab'
    assert decode_value('bytes', 42) == 42
    assert decode_value('uuid', 'nope') == 'nope'
    assert decode_value('decimal', 'abc') == 'abc'
    assert math.isnan(decode_value('float', 'NaN'))
    assert decode_value('float', 'Infinity') == math.inf
    assert decode_value('float', '-Infinity') == -math.inf
    assert decode_value('float', 'lots') == 'lots'
    assert decode_value('datetime[]', [1, '2024-01-02T03:04:05']) == [
        1, dt.datetime(2024, 1, 2, 3, 4, 5)]


def test_nan_floats_are_refused_and_decimal_nan_is_sent_as_text():
    with pytest.raises(ValueError) as e:
        encode_value(float('nan'))
    assert "Decimal('NaN')" in str(e.value) and 'PostgreSQL' in str(e.value)
    with pytest.raises(ValueError, match=r"Decimal\('-Infinity'\)"):
        encode_value(float('-inf'))
    assert encode_value(Decimal('NaN')) == {'$t': 'decimal', 'v': 'NaN'}
    assert encode_value(Decimal('-Infinity')) == {'$t': 'decimal', 'v': '-Infinity'}


def test_bytes_header_values_are_sent_as_their_text():
    server = FakeServer()
    out = OutgoingAPI(server)
    server.answer(*ok())
    out.rest['CRM'].conn.get('c', headers={'X-Raw': b'abc\xe9', b'X-Name': bytearray(b'v'),
                                           'Content-Type': b'text/plain'})
    meta, _body = server.last
    assert meta['headers'] == {'X-Raw': 'abc\u00e9', 'X-Name': 'v'}
    assert meta['content_type'] == 'text/plain'
