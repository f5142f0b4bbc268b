"""self.out.redis / self.kvdb.conn (oxbus.kvdb) against a fake server speaking out.redis.

The fake decodes each CALL's body as ipc-protocol/SPEC.md ("out.redis") defines it and
answers from a canned reply (encoded as the server encodes one); the real server and Redis
are integration/tests/out_redis.rs's.
"""

import asyncio
import datetime as dt
import json
import struct

import pytest

from oxbus import _protocol as P
from oxbus.kvdb import KVDB, Pipeline, Redis
from oxbus.outgoing import (InvalidCall, OutgoingAPI, OutgoingConnectionError,
                            OutgoingTimeout, RedisError, UnknownConnection)


def decode_commands(body, n):
    out, at = [], 0
    for _ in range(n):
        argc, = struct.unpack_from('>I', body, at)
        at += 4
        args = []
        for _ in range(argc):
            ln, = struct.unpack_from('>I', body, at)
            args.append(body[at + 4:at + 4 + ln])
            at += 4 + ln
        out.append(args)
    assert at == len(body)
    return out


def enc(v):
    """A reply value as the server encodes it; ('+', s) a simple string, ('-', m) an
    error element."""
    if v is None:
        return b'_'
    if isinstance(v, tuple) and v[0] == '+':
        b = v[1].encode()
        return b'+' + struct.pack('>I', len(b)) + b
    if isinstance(v, tuple) and v[0] == '-':
        b = v[1].encode()
        return b'-' + struct.pack('>I', len(b)) + b
    if isinstance(v, int):
        return b':' + struct.pack('>q', v)
    if isinstance(v, bytes):
        return b'$' + struct.pack('>I', len(v)) + v
    if isinstance(v, list):
        return b'*' + struct.pack('>I', len(v)) + b''.join(enc(x) for x in v)
    raise TypeError(v)


class Fake:
    """A ``request``: records (meta, commands), answers the next canned reply."""

    def __init__(self):
        self.calls = []
        self.replies = []

    def __call__(self, meta, body=b''):
        if isinstance(meta, bytes):
            meta = json.loads(meta)
        P.encode_call(P.WORKER_STREAM_BIT | 1, meta, body)
        assert meta['op'] == 'out.redis'
        self.calls.append((meta, decode_commands(body, meta.get('n', 1))))
        reply = self.replies.pop(0)
        if isinstance(reply, tuple) and reply[0] == 'error':
            _, code, doc = reply
            return json.dumps({'status': 400, 'error': code}).encode(), json.dumps(doc).encode()
        return b'{"status": 200}', enc(reply)

    @property
    def last(self):
        return self.calls[-1]


@pytest.fixture
def fake():
    return Fake()


@pytest.fixture
def out(fake):
    async def arequest(meta, body=b'', orphan=None):
        return fake(meta, body)
    return OutgoingAPI(fake, arequest)


def test_commands_go_as_argument_lists_bytes_exact(out, fake):
    r = out.redis['cache']
    fake.replies += [('+', 'OK'), b'\x00\xff\n', None]
    assert r.set(b'k\x00', b'\x00\xff\n', ex=dt.timedelta(seconds=5), nx=True) is True
    assert fake.last[1] == [[b'SET', b'k\x00', b'\x00\xff\n', b'EX', b'5', b'NX']]
    assert fake.last[0]['conn'] == 'cache' and 'n' not in fake.last[0]
    assert r.get(b'k\x00') == b'\x00\xff\n'
    assert r.set('k', 'v', px=1500, xx=True) is None  # XX kept it from being set
    assert fake.last[1] == [[b'SET', b'k', b'v', b'PX', b'1500', b'XX']]
    fake.replies += [3, 7, -2]
    assert r.incr('n', 3) == 3 and fake.last[1] == [[b'INCRBY', b'n', b'3']]
    assert r.execute('INCRBYFLOAT', 'f', 1.5) == 7 and fake.last[1][0][2] == b'1.5'
    assert r.ttl('gone') == -2
    with pytest.raises(InvalidCall, match="not NoneType"):
        r.set('k', None)
    with pytest.raises(InvalidCall, match="not bool"):
        r.set('k', True)


def test_replies_keep_their_types_and_methods_shape_them(out, fake):
    r = out.redis['cache']
    fake.replies += [[b'f', b'1', b'g', b'2'], [b'a', b'b'], 1, 0, b'2.5', None,
                     [b'm', b'1', b'n', b'2.5'], [b'17', [b'k1', b'k2']], ('+', 'PONG'),
                     [None, 5, ('+', 'OK'), [b'x']]]
    assert r.hgetall('h') == {b'f': b'1', b'g': b'2'}
    assert r.smembers('s') == {b'a', b'b'}
    assert r.sismember('s', 'a') is True
    assert r.expire('k', dt.timedelta(minutes=1)) is False
    assert fake.last[1] == [[b'EXPIRE', b'k', b'60']]
    assert r.zscore('z', 'm') == 2.5
    assert r.zscore('z', 'x') is None
    assert r.zrange('z', 0, -1, withscores=True) == [(b'm', 1.0), (b'n', 2.5)]
    assert r.scan(0, match='p:*', count=10) == (17, [b'k1', b'k2'])
    assert fake.last[1] == [[b'SCAN', b'0', b'MATCH', b'p:*', b'COUNT', b'10']]
    assert r.ping() is True
    assert r.execute('X') == [None, 5, 'OK', [b'x']]


def test_decode_responses_gives_str_and_kvdb_is_the_servers_pick(out, fake):
    s = out.redis.get('cache', decode_responses=True)
    assert s is out.redis.get('cache', decode_responses=True)
    assert s is not out.redis['cache']
    fake.replies += [[b'a', b'\xc3\xa9'], b'v']
    assert s.lrange('l', 0, -1) == ['a', 'é']
    kvdb = out.redis.kvdb
    assert isinstance(kvdb, KVDB)
    assert kvdb.conn.get('k') == 'v'
    meta = fake.last[0]
    assert meta['kvdb'] is True and 'conn' not in meta


def test_errors_are_exceptions_naming_the_connection(out, fake):
    r = out.redis['cache']
    fake.replies += [
        ('error', 'redis', {'error': 'Redis connection "cache" (redis://h:6379): WRONGTYPE '
                                     'Operation against a key holding the wrong kind of value',
                            'message': 'WRONGTYPE Operation against a key holding the wrong '
                                       'kind of value', 'code': 'WRONGTYPE'}),
        ('error', 'timeout', {'error': 'Redis connection "cache": no answer within 50 ms'}),
        ('error', 'connect', {'error': 'Redis connection "cache": connect: refused'}),
        ('error', 'unknown_conn', {'error': 'no Redis connection "nope"'}),
        ('error', 'invalid', {'error': 'Redis connection "cache": SELECT is refused: ...'}),
    ]
    with pytest.raises(RedisError) as e:
        r.lpush('str', 'x')
    assert e.value.message.startswith('WRONGTYPE Operation') and e.value.code == 'WRONGTYPE'
    assert 'cache' in str(e.value) and e.value.conn == 'cache'
    with pytest.raises(OutgoingTimeout, match='50 ms'):
        r.get('k')
    with pytest.raises(OutgoingConnectionError, match='refused'):
        r.get('k')
    with pytest.raises(UnknownConnection):
        out.redis['nope'].get('k')
    with pytest.raises(InvalidCall, match='SELECT is refused'):
        r.execute('SELECT', 1)


def test_a_pipeline_is_one_call_and_raises_after_all_ran(out, fake):
    r = out.redis['cache']
    with r.pipeline(transaction=False) as p:
        assert isinstance(p, Pipeline)
        assert p.set('a', 1).incr('a').hgetall('h') is p
        assert len(p) == 3
        fake.replies.append([('+', 'OK'), 2, [b'f', b'v']])
        assert p.execute() == [True, 2, {b'f': b'v'}]
        assert len(p) == 0
    meta, cmds = fake.last
    assert meta['n'] == 3 and 'transaction' not in meta
    assert cmds == [[b'SET', b'a', b'1'], [b'INCRBY', b'a', b'1'], [b'HGETALL', b'h']]

    p = r.pipeline()  # a transaction by default, as redis-py and Zato
    p.incr('n').lpush('str', 'x').get('n')
    fake.replies.append([1, ('-', 'WRONGTYPE Operation against a key'), b'1'])
    with pytest.raises(RedisError, match='command 1 .LPUSH. of the transaction') as e:
        p.execute()
    assert e.value.message == 'WRONGTYPE Operation against a key'
    assert fake.last[0]['transaction'] is True
    p.incr('n').lpush('str', 'x')
    fake.replies.append([2, ('-', 'WRONGTYPE x')])
    got = p.execute(raise_on_error=False)
    assert got[0] == 2 and isinstance(got[1], RedisError)
    assert p.execute() == [] and len(fake.calls) == 3


def test_awaitable_forms(out, fake):
    r = out.redis['cache']
    fake.replies += [b'v', 4, [1, 2]]

    async def main():
        assert await r.aget('k') == b'v'
        assert await r.aexecute('STRLEN', 'k') == 4
        p = r.pipeline().incr('a').incr('b')
        return await p.aexecute()

    assert asyncio.run(main()) == [1, 2]
    assert fake.last[1] == [[b'INCRBY', b'a', b'1'], [b'INCRBY', b'b', b'1']]


def test_scan_iter_follows_the_cursor(out, fake):
    fake.replies += [[b'5', [b'a']], [b'0', [b'b', b'c']]]
    assert list(out.redis['cache'].scan_iter(match='*')) == [b'a', b'b', b'c']
    assert fake.calls[1][1][0][:2] == [b'SCAN', b'5']


def test_blocking_calls_from_a_coroutine_are_refused(out):
    async def main():
        out.redis['cache'].get('k')

    with pytest.raises(RuntimeError, match='stall the event loop'):
        asyncio.run(main())


def test_repr_and_names():
    r = Redis(None, 'x')
    assert repr(r) == "<Redis 'x'>" and r.name == 'x' and not r.decode_responses


def test_zatos_zadd_form_and_zrange_desc_as_zrevrange(out, fake):
    r = out.redis['cache']
    fake.replies += [1, 2, 1, [b'n', b'm'], [b'n', b'2', b'm', b'1']]
    assert r.zadd('z', {'m': 1}) == 1
    assert fake.last[1] == [[b'ZADD', b'z', b'1', b'm']]
    # Zato 3.2 (redis-py 2.x StrictRedis): score, member pairs; member=score keywords.
    assert r.zadd('z', 1, 'm', 2.5, 'n') == 2
    assert fake.last[1] == [[b'ZADD', b'z', b'1', b'm', b'2.5', b'n']]
    assert r.zadd('z', o=3) == 1
    assert fake.last[1] == [[b'ZADD', b'z', b'3', b'o']]
    with pytest.raises(TypeError, match='pairs'):
        r.zadd('z', 1)
    assert r.zrange('z', 0, -1, desc=True) == [b'n', b'm']
    assert fake.last[1] == [[b'ZREVRANGE', b'z', b'0', b'-1']]
    assert r.zrange('z', 0, 1, desc=True, withscores=True) == [(b'n', 2.0), (b'm', 1.0)]
    assert fake.last[1] == [[b'ZREVRANGE', b'z', b'0', b'1', b'WITHSCORES']]


def test_a_handles_timeout_is_sent_as_deadline_ms(out, fake):
    fake.replies += [b'v', [b'v']]
    assert out.redis.get('cache', timeout=0.25).get('k') == b'v'
    assert fake.last[0]['deadline_ms'] == 250
    p = out.redis.get('cache', timeout=2).pipeline()
    p.get('k')
    assert p.execute() == [b'v'] and fake.last[0]['deadline_ms'] == 2000
    assert 'deadline_ms' not in json.loads(out.redis['cache']._one)
    with pytest.raises(ValueError, match='positive'):
        out.redis.get('cache', timeout=0)
