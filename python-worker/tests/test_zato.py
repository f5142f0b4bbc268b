"""Zato 3.2 compatibility: the ``zato.*`` names, Models, the full SimpleIO, environ,
invoke's keyword arguments, user_config and the patterns' argument checks."""

import datetime
import decimal
import json
import threading
import uuid
from dataclasses import dataclass
from typing import List, Optional

import pytest

import oxbus  # noqa: F401 - installs the zato names
from oxbus._dispatch import Dispatcher
from oxbus import _protocol as P
from test_service import call, meta_for

from zato.common.exception import BadRequest as ZBadRequest, NotFound as ZNotFound, ZatoException
from zato.common.typing_ import list_, optional
from zato.server.service import (AsIs, Bool, CSV, Date, DateTime, Decimal, Dict, DictList,
                                 Float, Int, List as SList, Model, Opaque, Secret, Service, Text,
                                 UTC, UUID)


# -- models -----------------------------------------------------------------------------------

@dataclass(init=False)
class Phone(Model):
    imei: str
    owner_id: int


@dataclass(init=False)
class PhoneRequest(Model):
    client_id: int
    phones: list_[Phone]
    note: optional[str]
    since: optional[datetime.date]


@dataclass(init=False)
class PhoneResponse(Model):
    count: int
    phones: list_[Phone]
    first: optional[Phone]


class Phones(Service):
    class SimpleIO:
        input = PhoneRequest
        output = PhoneResponse

    def handle(self):
        req = self.request.input
        assert isinstance(req, PhoneRequest)
        out = PhoneResponse()
        out.count = len(req.phones)
        out.phones = req.phones
        out.first = req.phones[0] if req.phones else None
        self.response.payload = out


def test_model_input_and_output():
    body = {'client_id': '7', 'phones': [{'imei': 'a', 'owner_id': 1}, {'imei': 'b', 'owner_id': 2}]}
    r = call(Phones, body=json.dumps(body).encode())
    assert r.status == 200, r.doc
    assert r.doc == {'count': 2, 'phones': body['phones'], 'first': {'imei': 'a', 'owner_id': 1}}


def test_model_input_reports_every_bad_field_with_its_path():
    body = {'phones': [{'imei': 5}, {'imei': 'x', 'owner_id': 'nope'}], 'since': 'yesterday'}
    r = call(Phones, body=json.dumps(body).encode())
    assert r.status == 400
    fields = [e['field'] for e in r.doc['errors']]
    assert fields == ['client_id', 'phones[0].imei', 'phones[0].owner_id', 'phones[1].owner_id',
                      'since']
    assert r.doc['field'] == 'client_id'
    assert 'missing input: client_id' in r.doc['error']


def test_model_optional_fields_read_as_zato_empties():
    seen = {}

    class Look(Service):
        input = PhoneRequest

        def handle(self):
            seen['note'] = self.request.input.note
            seen['since'] = self.request.input.since

    r = call(Look, body=b'{"client_id":1,"phones":[]}')
    assert r.status == 200
    assert seen == {'note': '', 'since': None}


def test_model_output_missing_required_field_is_a_500_naming_it():
    class Bad(Service):
        output = PhoneResponse

        def handle(self):
            out = PhoneResponse()
            out.phones = []
            self.response.payload = out

    r = call(Bad)
    assert r.status == 500 and r.doc['field'] == 'count'


def test_oxbus_model_with_typing_annotations_and_defaults():
    @dataclass
    class Item(oxbus.Model):
        name: str
        price: decimal.Decimal
        tags: List[str] = None
        qty: int = 1
        ref: Optional[uuid.UUID] = None

    item = Item.from_dict({'name': 'x', 'price': '1.50', 'tags': ['a']})
    assert item.price == decimal.Decimal('1.50') and item.qty == 1 and item.ref is None
    assert item.to_dict() == {'name': 'x', 'price': '1.50', 'tags': ['a'], 'qty': 1,
                              'ref': None}
    with pytest.raises(ValueError) as e:
        Item.from_dict({'name': 1, 'price': 'NaN', 'tags': 'a'})
    assert [p for p, _ in e.value.problems] == ['name', 'price', 'tags']


def test_a_model_whose_annotations_cannot_be_resolved_fails_the_deploy():
    with pytest.raises(TypeError, match='cannot be resolved'):
        class Broken(oxbus.Model):
            x: 'NoSuchType'  # noqa: F821

        class Uses(Service):
            input = Broken

            def handle(self):
                pass


# -- SimpleIO ---------------------------------------------------------------------------------

class Typed(Service):
    class SimpleIO:
        input_required = (Int('page'), Float('ratio'), Bool('flag'), Date('day'),
                          DateTime('at'), Decimal('amount'), UUID('ref'), SList('items'),
                          CSV('tags'), Dict('address', 'street', '-zip'),
                          DictList('lines', Int('qty')), AsIs('is_raw'), Opaque('blob'),
                          Text('label'), UTC('stamp'), Secret('password'))
        input_optional = (Int('size', default=10), '-page_size=25', 'comment', 'is_new')
        output_required = (Date('day'), Decimal('amount'), UUID('ref'), 'label')
        output_optional = ('size',)

    def handle(self):
        i = self.request.input
        self.environ['seen'] = dict(i)
        self.response.payload = {'day': i.day, 'amount': i.amount, 'ref': i.ref,
                                 'label': i.label, 'size': i.size, 'extra': 1}


GOOD = {'page': '3', 'ratio': 0.5, 'flag': 'yes', 'day': '2024-05-01',
        'at': '2024-05-01T10:00:00Z', 'amount': '10.25',
        'ref': '12345678-1234-5678-1234-567812345678', 'items': 'one', 'tags': 'a,b',
        'address': {'street': 'Main', 'other': 1}, 'lines': [{'qty': '2'}],
        'is_raw': 'maybe', 'blob': {'k': [1]}, 'label': 5,
        'stamp': '2024-05-01T10:00:00+00:00', 'password': 's3cret'}


def test_every_element_type_and_default():
    svc_holder = {}
    orig = Typed.handle

    def handle(self):
        orig(self)
        svc_holder['input'] = self.environ['seen']

    Typed.handle = handle
    try:
        r = call(Typed, body=json.dumps(GOOD).encode())
    finally:
        Typed.handle = orig
    assert r.status == 200, r.doc
    i = svc_holder['input']
    assert i['page'] == 3 and i['ratio'] == 0.5 and i['flag'] is True
    assert i['day'] == datetime.date(2024, 5, 1)
    assert i['at'] == datetime.datetime(2024, 5, 1, 10, tzinfo=datetime.timezone.utc)
    assert i['amount'] == decimal.Decimal('10.25') and isinstance(i['ref'], uuid.UUID)
    assert i['items'] == ['one'] and i['tags'] == ['a', 'b']
    # Keys: as they came (Zato types only top-level names); an absent one reads ''.
    assert i['address'] == {'street': 'Main', 'zip': ''}
    assert i['lines'] == [{'qty': 2}] and i['is_raw'] == 'maybe' and i['blob'] == {'k': [1]}
    assert i['label'] == '5' and i['stamp'] == '2024-05-01T10:00:00'
    assert i['password'] == 's3cret'
    # Defaults: element default=, the '=' form (converted by the name's type), Zato's ''.
    assert i['size'] == 10 and i['page_size'] == 25 and i['comment'] == ''
    assert i['is_new'] is False
    # Output: filtered, typed values written out as Zato does (UUID as 32 hex digits).
    assert r.doc == {'response': {'day': '2024-05-01', 'amount': '10.25',
                                  'ref': '12345678123456781234567812345678', 'label': '5',
                                  'size': '10'}}


def test_every_bad_element_is_reported_at_once():
    bad = dict(GOOD, page='x', ratio='NaN', flag='perhaps', day='2024-13-01', amount='abc',
               ref='nope', address={'zip': 1}, lines=[{'qty': 'two'}, 5], label={'a': 1})
    del bad['at']
    r = call(Typed, body=json.dumps(bad).encode())
    assert r.status == 400
    assert [e['field'] for e in r.doc['errors']] == [
        'page', 'ratio', 'flag', 'day', 'at', 'amount', 'ref', 'address.street',
        'lines[0].qty', 'lines[1]', 'label']


@pytest.mark.parametrize('body', [b'{"n": NaN}', b'{"n": Infinity}', b'[-Infinity]'])
def test_nan_and_infinity_are_not_json(body):
    class N(Service):
        input = Float('n')

        def handle(self):
            pass

    r = call(N, body=body)
    assert r.status == 400 and 'malformed JSON' in r.doc['error']


def test_nan_in_the_answer_is_a_500_not_invalid_json():
    class Out(Service):
        def handle(self):
            self.response.payload = {'x': float('inf')}

    r = call(Out)
    assert r.status == 500 and r.doc == {'error': 'invalid output: x: inf is not a JSON number',
                                         'field': 'x', 'cid': r.doc['cid']}


def test_integers_are_64_bit():
    class I(Service):
        input = Int('n')

        def handle(self):
            self.response.payload = {'n': self.request.input.n}

    assert call(I, body=b'{"n": 9223372036854775807}').doc == {'n': 2 ** 63 - 1}
    r = call(I, body=b'{"n": 9223372036854775808}')
    assert r.status == 400 and 'out of range' in r.doc['error']


def test_simpleio_payload_object_and_response_elem_and_skip_empty():
    class Attr(Service):
        class SimpleIO:
            input = 'name', 'type'
            output = 'is_allowed', '-note'
            response_elem = 'response'
            skip_empty_keys = True

        def handle(self):
            self.response.payload.is_allowed = self.request.input.name == 'Wendy'
            self.response.payload.note = ''

    r = call(Attr, body=b'{"name":"Wendy","type":"AXC"}')
    assert r.doc == {'response': {'is_allowed': True}}

    class Rows(Service):
        class SimpleIO:
            output_required = ('id', 'name')
            output_repeated = True

        def handle(self):
            self.response.payload[:] = [{'id': 1, 'name': 'a', 'x': 0}, {'id': '2', 'name': 'b'}]

    # Zato 3.2's default response_elem: an inner SimpleIO's payload object is wrapped.
    assert call(Rows).doc == {'response': [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}]}

    class Unwrapped(Service):
        class SimpleIO:
            output = 'id',
            response_elem = None

        def handle(self):
            self.response.payload.id = 1

    assert call(Unwrapped).doc == {'id': 1}

    class PlainDict(Service):
        class SimpleIO:
            output = 'id',

        def handle(self):
            self.response.payload = {'id': 2, 'x': 1}  # merged into the payload, as in Zato

    assert call(PlainDict).doc == {'response': {'id': 2}}

    class PlainList(Service):
        class SimpleIO:
            output = 'id',

        def handle(self):
            self.response.payload = [{'id': 3}]  # a list of its own: not wrapped

    assert call(PlainList).doc == [{'id': 3}]


def test_simpleio_declaration_errors_fail_the_deploy():
    with pytest.raises(TypeError, match='cannot be given with input_required'):
        class Both(Service):
            class SimpleIO:
                input = 'a'
                input_required = 'b'

            def handle(self):
                pass
    # Zato ignores SimpleIO attributes it does not know (a Zato-style service: a warning);
    # an Oxbus service is told at deploy.
    class Typo(Service):
        class SimpleIO:
            csv_delimiter = ';'

        def handle(self):
            pass

    with pytest.raises(TypeError, match='unknown attribute'):
        class OxbusTypo(oxbus.Service):
            class SimpleIO:
                inptu_required = 'a'

            def handle(self):
                pass
    with pytest.raises(TypeError, match="default 'ten'"):
        class BadDefault(Service):
            input = Int('-n', default='ten')

            def handle(self):
                pass


def test_params_priority():
    class P1(Service):
        class SimpleIO:
            input = 'id', 'name'

        def handle(self):
            self.response.payload = dict(self.request.input)

    body = b'{"id": 1, "name": "body"}'
    # Zato-style: channel params win by default; undeclared params are in the input too.
    r = call(P1, body=body, params={'id': '2', 'extra': 'p'}, query='name=q&more=1')
    assert r.doc == {'id': 2, 'name': 'q', 'extra': 'p', 'more': '1'}
    r = call(P1, body=body, params={'id': '2'}, params_priority='msg-over-channel-params')
    assert r.doc['id'] == 1

    class P2(oxbus.Service):
        input = 'id', 'name'

        def handle(self):
            self.response.payload = dict(self.request.input)

    # An Oxbus service: the body wins unless the channel says otherwise.
    assert call(P2, body=body, params={'id': '2'}).doc == {'id': 1, 'name': 'body'}
    assert call(P2, body=body, params={'id': '2'},
                params_priority='channel-params-over-msg').doc == {'id': 2, 'name': 'body'}


# -- hooks, environ, invoke ------------------------------------------------------------------

def test_environ_is_shared_by_the_hooks_and_zato_hooks_run_in_order():
    order = []

    class Hooks(Service):
        def accept(self):
            order.append('accept')
            self.environ.started = True
            return True

        def before_handle(self):
            order.append('before')

        def validate_input(self):
            order.append('validate_input')

        def handle(self):
            order.append('handle')
            self.environ['n'] = 1

        def validate_output(self):
            order.append('validate_output')

        def after_handle(self):
            order.append('after')
            self.response.payload = dict(self.environ)

        def finalize_handle(self):
            order.append('finalize')

    r = call(Hooks)
    assert r.doc == {'started': True, 'n': 1}
    assert order == ['accept', 'before', 'validate_input', 'handle', 'validate_output', 'after',
                     'finalize']

    class Refuses(Service):
        def accept(self):
            return False

        def handle(self):
            raise AssertionError('not reached')

    assert call(Refuses).status == 400


def test_invoke_keyword_arguments():
    class Callee(Service):
        class SimpleIO:
            input = Int('n'), '-who', '-name'
            output = 'n', 'env'

        def handle(self):
            self.response.payload.n = self.request.input.n * 2
            self.response.payload.env = self.environ.get('from')

    class ModelCallee(Service):
        output = PhoneResponse

        def handle(self):
            out = PhoneResponse()
            out.count, out.phones, out.first = 0, [], None
            self.response.payload = out

    results = {}

    class Caller(Service):
        def handle(self):
            results['bunch'] = self.invoke('demo.callee', {'n': 2}, as_bunch=True,
                                           environ={'from': 'caller'}).response
            results['skip'] = self.invoke('demo.callee', {'n': 2}, skip_response_elem=True)
            results['positional'] = self.invoke('demo.callee', {'n': 5}, 'invoke', 'json', '',
                                                False, False, 0, True)
            results['kwargs'] = self.invoke(Callee, n=3, name='x')['response']
            results['text'] = self.invoke('demo.callee', {'n': 1}, serialize=True)
            results['model'] = self.invoke('demo.model-callee')
            results['ignored'] = self.invoke('demo.callee', {'n': 1}, channel='x',
                                             data_format='json', transport='y')

    Callee.name, ModelCallee.name = 'demo.callee', 'demo.model-callee'
    r = call([Caller, Callee, ModelCallee])
    assert r.status == 200, r.doc
    # Untyped output names are Zato's Text: numbers go out as their text, as in Zato.
    assert results['bunch'].n == '4' and results['bunch'].env == 'caller'
    assert results['kwargs'] == {'n': '6', 'env': None}
    assert results['skip'] == {'n': '4', 'env': None}
    assert results['positional'] == {'response': {'n': '10', 'env': None}}
    assert json.loads(results['text']) == {'response': {'n': '2', 'env': None}}
    assert results['model'] == {'count': 0, 'phones': [], 'first': None}
    assert results['ignored']['response']['n'] == '2'


def test_invoke_timeout():
    release = threading.Event()

    class Slow(Service):
        name = 'demo.slow'

        def handle(self):
            release.wait(5)

    seen = {}

    class Caller(Service):
        def handle(self):
            seen['none'] = self.invoke('demo.slow', timeout=0.05, raise_timeout=False)
            try:
                self.invoke('demo.slow', timeout=0.05)
            except TimeoutError as e:
                seen['raised'] = str(e)

    call([Caller, Slow])
    release.set()
    assert seen['none'] is None and 'timed out' in seen['raised']


def test_invoke_errors_of_zato_services_are_the_callers_500(caplog):
    # As for Oxbus services: a missing callee or one refusing its input is the calling
    # service's 500 with the cause in the log; the callee's own raise reaches the client.
    class Callee(Service):
        name = 'demo.z-callee'

        class SimpleIO:
            input_required = Int('n')

        def handle(self):
            if self.request.input.n < 0:
                raise ZNotFound(self.cid, 'no such n')

    class Caller(Service):
        name = 'demo.z-caller'

        def handle(self):
            self.invoke(self.request.payload['target'], self.request.payload.get('payload'))

    cases = [({'target': 'demo.nope'}, 'demo.z-caller invoked demo.nope: no such service'),
             ({'target': 'demo.z-callee', 'payload': {'n': 'x'}},
              'demo.z-caller invoked demo.z-callee with input it refused: invalid input: n: '
              'expected an integer')]
    for body, cause in cases:
        caplog.clear()
        r = call([Caller, Callee], body=json.dumps(body).encode())
        assert (r.status, r.doc) == (500, {'error': 'internal error', 'cid': 'c1d'})
        assert [rec.getMessage() for rec in caplog.records if rec.name == Caller.name] == [
            'demo.z-caller failed: InvokeError: ' + cause]
    r = call([Caller, Callee], body=b'{"target": "demo.z-callee", "payload": {"n": -1}}')
    assert (r.status, r.doc['error']) == (404, 'no such n')


def test_zato_exceptions():
    class Raises(Service):
        def handle(self):
            kind = self.request.payload['kind']
            if kind == 'bad':
                raise ZBadRequest(self.cid)
            if kind == 'bad-msg':
                raise ZBadRequest(self.cid, 'no such customer')
            if kind == 'missing':
                raise ZNotFound(self.cid, 'gone')
            raise ZatoException(self.cid, 'internal detail')

    assert call(Raises, body=b'{"kind":"bad"}').doc['error'] == 'Bad request'
    r = call(Raises, body=b'{"kind":"bad-msg"}')
    assert (r.status, r.doc['error']) == (400, 'no such customer')
    assert call(Raises, body=b'{"kind":"missing"}').status == 404
    r = call(Raises, body=b'{"kind":"other"}')
    assert r.status == 500 and r.doc['error'] == 'internal error'


# -- user_config ------------------------------------------------------------------------------

def test_user_config_reads_through_the_server_op_once_per_invocation():
    asked = []

    def request(meta, body):
        meta = json.loads(meta)
        asked.append(meta)
        if meta['name'] == 'crm':
            return (b'{"status":200,"content_type":"application/json"}',
                    b'{"api":{"timeout":5}}')
        return (b'{"status":404,"error":"unknown_user_config"}', b'{"error":"no such"}')

    seen = {}

    class Reads(Service):
        def handle(self):
            seen['t'] = self.user_config.crm.api.timeout
            seen['again'] = self.user_config['crm']['api']['timeout']
            seen['none'] = self.user_config.get('other')
            seen['in'] = 'other' in self.user_config
            try:
                self.user_config.other
            except AttributeError as e:
                seen['err'] = str(e)

    d = Dispatcher({Reads.name: Reads}, request=request)
    call(Reads, dispatcher=d)
    assert seen == {'t': 5, 'again': 5, 'none': None, 'in': False,
                    'err': "no user config named 'other'"}
    # A name the server has none of is remembered for the invocation too: asked once.
    assert [m['name'] for m in asked] == ['crm', 'other']
    assert asked[0] == {'op': 'user_config.get', 'name': 'crm'}


def test_user_config_has_an_awaitable_read():
    asked = []

    def blocking(meta, body):
        raise AssertionError('a blocking call from a coroutine')

    async def arequest(meta, body=b'', orphan=None):
        meta = json.loads(meta)
        asked.append(meta)
        if meta['name'] == 'crm':
            return (b'{"status":200,"content_type":"application/json"}',
                    b'{"api":{"timeout":5}}')
        return (b'{"status":404,"error":"unknown_user_config"}', b'{"error":"no such"}')

    seen = {}

    class AsyncReads(Service):
        async def handle(self):
            seen['crm'] = (await self.user_config.aget('crm')).api.timeout
            # Once read, the name reads from the invocation's copy: no call, no blocking.
            seen['attr'] = self.user_config.crm.api.timeout
            seen['none'] = await self.user_config.aget('other')
            seen['dflt'] = await self.user_config.aget('other', 'x')
            # So is a name the server has none of: the blocking reads answer from memory.
            seen['get'] = self.user_config.get('other', 'y')
            seen['in'] = 'other' in self.user_config

    import asyncio
    d = Dispatcher({AsyncReads.name: AsyncReads}, request=blocking, arequest=arequest)
    asyncio.run(d.run_async(1, meta_for(AsyncReads.name), b''))
    assert seen == {'crm': 5, 'attr': 5, 'none': None, 'dflt': 'x', 'get': 'y', 'in': False}
    assert [m['name'] for m in asked] == ['crm', 'other']


# -- patterns (argument checks; the runs are tested against a real server) -------------------

def test_pattern_arguments_are_checked():
    errors = []

    class Uses(Service):
        def handle(self):
            for bad in (dict(repeats=0, seconds=1), dict(repeats=2),
                        dict(repeats=2, seconds=1, minutes=1),
                        dict(repeats=1, seconds=1, async_fallback=True),
                        dict(repeats=1, seconds=1, async_fallback=True, callback='nope')):
                try:
                    self.patterns.invoke_retry.invoke('x', None, **bad)
                except ValueError as e:
                    errors.append(str(e))
            for call_ in (lambda: self.patterns.fanout.invoke({}, on_final='a'),
                          lambda: self.patterns.fanout.invoke({'a': 1}, on_final=None),
                          lambda: self.patterns.parallel.invoke({'a': object()}, None)):
                try:
                    call_()
                except (ValueError, TypeError) as e:
                    errors.append(str(e))

    call(Uses)
    assert len(errors) == 8, errors


def test_zato_names_are_importable_and_typing_aliases_are_typing():
    import zato.common.api as api
    import zato.common.typing_ as t
    assert t.list_[int] == List[int] and t.strnone == Optional[str]
    assert api.CHANNEL.HTTP_SOAP == 'rest' and api.PARAMS_PRIORITY.DEFAULT == \
        'channel-params-over-msg'
    from zato.common.json_internal import dumps, loads
    assert loads(dumps({'a': 1})) == {'a': 1}
    assert t.from_dict(Phone, {'imei': 'x', 'owner_id': 1}).owner_id == 1


def test_job_hooks_run_for_scheduled_runs_only():
    order = []

    class Job(Service):
        def before_job(self):
            order.append('before_job')

        def before_interval_based_job(self):
            order.append('before_interval')

        def before_cron_style_job(self):
            order.append('before_cron')

        def before_handle(self):
            order.append('before')

        def handle(self):
            order.append('handle:' + self.job_type)

        def after_handle(self):
            order.append('after')

        def after_job(self):
            order.append('after_job')

        def after_interval_based_job(self):
            order.append('after_interval')

    call(Job, channel='scheduler', job_type='interval_based')
    assert order == ['before_job', 'before_interval', 'before', 'handle:interval_based',
                     'after', 'after_job', 'after_interval']
    order.clear()
    call(Job)
    assert order == ['before', 'handle:', 'after']


# -- what review found ------------------------------------------------------------------------

def test_a_huge_bad_input_gives_a_bounded_400():
    @dataclass(init=False)
    class Many(Model):
        items: list_[int]

    class M(Service):
        input = Many

        def handle(self):
            pass

    r = call(M, body=json.dumps({'items': ['x'] * 100000}).encode())
    assert r.status == 400 and r.doc['truncated'] is True
    assert len(r.doc['errors']) == 50 and len(r.body) < 10000
    assert r.doc['error'].endswith('and more (the first 50 are in errors)')

    class D(Service):
        input = DictList('rows', 'a')

        def handle(self):
            pass

    r = call(D, body=json.dumps({'rows': [1] * 100000}).encode())
    assert r.status == 400 and len(r.doc['errors']) == 50 and r.doc['truncated'] is True


@pytest.mark.parametrize('body', [b'{"a": 1e400}', b'{"a": -1e999}'])
def test_numbers_past_a_double(body):
    class Typed(Service):
        input = Float('a')

        def handle(self):
            pass

    r = call(Typed, body=body)
    assert r.status == 400 and r.doc['error'] == 'invalid input: a: expected a finite number'

    class Echo(Service):
        def handle(self):
            self.response.payload = self.request.payload

    # Untyped, it reaches the service as infinity; the answer cannot carry it: a 500, never
    # invalid JSON.
    r = call(Echo, body=body)
    assert r.status == 500 and r.doc['field'] == 'a'
    assert r.doc['error'].startswith('invalid output: a: ') and 'not a JSON number' in r.doc['error']


def test_decimal_exponents_are_bounded():
    class D(Service):
        input = Decimal('amount')

        def handle(self):
            pass

    assert call(D, body=b'{"amount": "1e999999999999999"}').status == 400
    assert call(D, body=b'{"amount": "1.5e10"}').status == 200


def test_mutable_defaults_are_never_shared():
    class Plain(oxbus.Model):  # not a dataclass: the class attribute is the default
        tags: List[str] = []

    seen = []

    class P(Service):
        input = Plain

        def handle(self):
            self.request.input.tags.append('x')
            seen.append(list(self.request.input.tags))

    call(P, body=b'{}')
    call(P, body=b'{}')
    assert seen == [['x'], ['x']]


def test_declared_elements_are_never_changed():
    page = Int('page', default=10)

    class A(Service):
        class SimpleIO:
            input_optional = page
            output_required = page

        def handle(self):
            pass

    assert page.required is True
    assert A._oxbus_output[0].required is True and A._oxbus_input[0].required is False


def test_equal_but_different_defaults_are_not_mixed_up():
    class Zero(Service):
        class SimpleIO:
            input = '-a'
            default_value = 0

        def handle(self):
            self.response.payload = {'a': self.request.input.a}

    class No(Service):
        class SimpleIO:
            input = '-a'
            default_value = False

        def handle(self):
            self.response.payload = {'a': self.request.input.a}

    assert call(Zero).body == b'{"a":0}' and call(No).body == b'{"a":false}'


def test_async_hooks_of_a_zato_style_service_fail_the_deploy():
    with pytest.raises(TypeError, match='plain functions'):
        class A(Service):
            async def before_handle(self):
                pass

            async def handle(self):
                pass


def test_zato_names():
    from oxbus.service import zato_name
    assert zato_name('sio_example', 'MyService') == 'sio-example.my-service'
    assert zato_name('demo', 'My_Service') == 'demo.my_service'
    assert zato_name('myApi', 'Get') == 'my-api.get'
    assert zato_name('api', 'GetHTTPData') == 'api.get-http-data'
    assert zato_name('a', 'Get2FA') == 'a.get2fa' and zato_name('Api', 'ABC') == 'api.abc'

    class GetClient(Service):
        def handle(self):
            pass

    assert GetClient.name == 'test-zato.get-client'


def test_a_required_element_wins_over_an_inherited_optional_one():
    class Base(Service):
        class SimpleIO:
            input_optional = ('name',)

        def handle(self):
            self.response.payload = {'name': self.request.input.name}

    class Strict(Base):
        class SimpleIO(Base.SimpleIO):
            input_required = ('name',)

    assert [(e.name, e.required) for e in Strict._oxbus_input] == [('name', True)]
    assert call(Strict, body=b'{}').status == 400


def test_models_run_post_init_and_nested_annotations_resolve_at_deploy():
    @dataclass
    class Lower(oxbus.Model):
        email: str

        def __post_init__(self):
            self.email = self.email.lower()

    assert Lower.from_dict({'email': 'A@X.COM'}).email == 'a@x.com'

    class Inner(oxbus.Model):
        imei: 'NoSuchName'  # noqa: F821

    class Outer(oxbus.Model):
        items: List[Inner]

    with pytest.raises(TypeError, match='Inner'):
        class S(Service):
            input = Outer

            def handle(self):
                pass


def test_zato_datetime_with_zone_is_a_datetime():
    from zato.common.typing_ import datetimez

    @dataclass(init=False)
    class T(Model):
        at: datetimez

    t = T.from_dict({'at': '2024-01-02T03:04:05Z'})
    assert isinstance(t.at, datetime.datetime)
    assert P.encode_json({'t': datetimez(2024, 1, 2)}) == b'{"t":"2024-01-02T00:00:00"}'


def test_zato_exception_hierarchy_and_zato_common():
    from zato.common import DATA_FORMAT
    from zato.common.exception import Reportable as ZReportable
    assert DATA_FORMAT.JSON == 'json'
    e = ZBadRequest('c', 'msg')
    assert isinstance(e, ZatoException) and isinstance(e, ZReportable)
    assert isinstance(e, oxbus.BadRequest) and e.status_code == 400


@pytest.mark.skipif(not hasattr(__import__('types'), 'UnionType'),
                    reason='`X | None` annotations exist from Python 3.10')
def test_union_type_annotations_are_optional():
    ns = {}
    exec('from oxbus import Model\n'
         'class U(Model):\n'
         '    note: "str | None"\n'
         '    n: "int | None" = 5\n', ns)
    u = ns['U'].from_dict({})
    assert u.note is None and u.n == 5
    with pytest.raises(ValueError):
        ns['U'].from_dict({'note': 7})


def test_dataclass_fields_outside_init_and_dict_keys_as_they_came():
    import dataclasses

    @dataclasses.dataclass
    class Order(oxbus.Model):
        qty: int
        total: int = dataclasses.field(init=False, default=0)

        def __post_init__(self):
            self.total = self.qty * 2

    o = Order.from_dict({'qty': 3})
    assert (o.qty, o.total) == (3, 6)

    class K(Service):
        input = Dict('address', 'street', 'tags', 'zip_id')

        def handle(self):
            self.response.payload = dict(self.request.input.address)

    r = call(K, body=b'{"address": {"street": 5, "tags": ["a"], "zip_id": "A-1"}}')
    assert r.status == 200 and r.doc == {'street': 5, 'tags': ['a'], 'zip_id': 'A-1'}
