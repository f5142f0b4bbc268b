"""``self.secrets`` through the Dispatcher with a fake server: the CALL it sends
(``secret.get`` with the calling service's name) and how each answer maps to Python."""

import asyncio
import json

import pytest

from oxbus import Service
from oxbus._dispatch import Dispatcher
from oxbus.secrets_api import SecretError, Secrets
from test_service import Reply, call, meta_for


class FakeServer:
    """Answers ``secret.get`` as the server does: by name and readers (exact or ``x.*``)."""

    def __init__(self, secrets):
        self.secrets = secrets  # name -> (value, [patterns])
        self.calls = []

    def __call__(self, meta: bytes, body: bytes):
        m = json.loads(meta)
        self.calls.append((m, body))
        assert m['op'] == 'secret.get' and body == b''
        if m['name'] == 'broken':
            return (b'{"status":500,"error":"io"}', b'{"error":"cannot be opened"}')
        if m['name'] not in self.secrets:
            return (b'{"status":404,"error":"unknown_secret"}',
                    json.dumps({'error': 'no secret named %r' % m['name']}).encode())
        value, readers = self.secrets[m['name']]
        ok = any(p == m['service'] or (p.endswith('*') and m['service'].startswith(p[:-1]))
                 for p in readers)
        if not ok:
            msg = 'service %r may not read secret %r' % (m['service'], m['name'])
            return (b'{"status":403,"error":"not_allowed"}', json.dumps({'error': msg}).encode())
        return (b'{"status":200,"content_type":"application/json"}', json.dumps(value).encode())


class Reader(Service):
    name = 'crm.reader'

    def handle(self):
        s = self.secrets
        out = {'key': s['crm.key'], 'opt': s.get('absent', 'dflt'),
               'in': 'crm.key' in s, 'in_absent': 'absent' in s, 'in_other': 'billing' in s}
        try:
            s['absent']
        except KeyError as e:
            out['key_error'] = e.args[0]
        try:
            s['billing']
        except PermissionError as e:
            out['perm'] = str(e)
        try:
            s.get('billing')
        except PermissionError:
            out['get_perm'] = True
        self.response.payload = out


class Other(Service):
    name = 'billing.charge'

    def handle(self):
        self.response.payload = {'billing': self.secrets['billing']}


def test_reads_map_to_python():
    server = FakeServer({'crm.key': ('k-1 é', ['crm.*']), 'billing': ('b', ['billing.charge'])})
    d = Dispatcher({Reader.name: Reader, Other.name: Other}, request=server)
    r = call(Reader, dispatcher=d)
    assert r.status == 200, r.body
    assert r.doc == {'key': 'k-1 é', 'opt': 'dflt', 'in': True, 'in_absent': False,
                     'in_other': False, 'key_error': 'absent',
                     'perm': "service 'crm.reader' may not read secret 'billing'",
                     'get_perm': True}
    # Every call names the calling service.
    assert {m['service'] for m, _ in server.calls} == {'crm.reader'}
    r = call(Other, dispatcher=d)
    assert r.doc == {'billing': 'b'}
    assert server.calls[-1][0] == {'op': 'secret.get', 'name': 'billing',
                                   'service': 'billing.charge'}


def test_async_services_read_through_the_awaitable_forms():
    server = FakeServer({'crm.key': ('k-1', ['crm.*']), 'billing': ('b', ['billing.charge'])})

    def blocking(meta, body):
        raise AssertionError('a blocking call from a coroutine')

    async def arequest(meta, body=b'', orphan=None):
        await asyncio.sleep(0)  # a real suspension point, as the worker's has
        return server(meta, body)

    class AsyncReader(Service):
        name = 'crm.async-reader'

        async def handle(self):
            s = self.secrets
            out = {'key': await s.aget('crm.key'), 'opt': await s.aget('absent', 'dflt'),
                   'in': await s.acontains('crm.key'), 'in_other': await s.acontains('billing'),
                   'in_bad': await s.acontains(3)}
            try:
                await s.aget('billing')
            except PermissionError as e:
                out['perm'] = str(e)
            self.response.payload = out

    d = Dispatcher({AsyncReader.name: AsyncReader}, request=blocking, arequest=arequest)
    frame = asyncio.run(d.run_async(1, meta_for(AsyncReader.name), b''))
    assert Reply(frame, 1).doc == {
        'key': 'k-1', 'opt': 'dflt', 'in': True, 'in_other': False, 'in_bad': False,
        'perm': "service 'crm.async-reader' may not read secret 'billing'"}
    assert {m['service'] for m, _ in server.calls} == {'crm.async-reader'}


def test_other_failures_and_bad_names():
    s = Secrets(FakeServer({}), 'x')
    with pytest.raises(SecretError, match='cannot be opened'):
        s['broken']
    with pytest.raises(TypeError):
        s[3]
    assert 3 not in s


def test_outside_a_worker():
    with pytest.raises(RuntimeError, match='not running inside an oxbus worker'):
        Reader().secrets
