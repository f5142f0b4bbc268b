"""A service's answer on its way out: the JSON encoder's mappings, a value it cannot encode
(a 500 naming the key path), and output checked and converted against its declaration
(SimpleIO elements and models; plain and Zato-style services)."""

import dataclasses
import datetime
import decimal
import enum
import logging
import uuid

import pytest

from oxbus import Service
from oxbus import _protocol as P
from oxbus.model import Model
from oxbus.simpleio import Bool, Dict, DictList, Float, Int
from test_service import call


class Color(enum.Enum):
    RED = 'red'


class Size(enum.IntEnum):
    BIG = 3


@dataclasses.dataclass
class Point:
    x: int
    when: datetime.date


@dataclasses.dataclass(init=False)
class Item(Model):
    n: int
    name: str


def answering(payload, **attrs):
    """A plain service whose handler answers ``payload``; ``attrs`` are its declarations."""
    def handle(self):
        self.response.payload = payload
    return type('Answers', (Service,), {'name': 'out.answers', 'handle': handle, **attrs})


def test_the_encoder_maps_the_common_types():
    when = datetime.datetime(2024, 5, 1, 12, 30, 15, tzinfo=datetime.timezone.utc)
    item = Item()
    item.n, item.name = 3, 'x'
    payload = {
        'datetime': when, 'date': when.date(), 'time': datetime.time(8, 5),
        'decimal': decimal.Decimal('1.50'), 'uuid': uuid.UUID(int=1),
        'set': {3, 1, 2}, 'frozenset': frozenset(['b', 'a']), 'mixed': {1, 'a'},
        'enum': Color.RED, 'int_enum': Size.BIG, 'dataclass': Point(1, when.date()),
        'tuple': (1, 'two'), 'model': item, 'nested': [{'in': {Color.RED}}],
    }
    r = call(answering(payload))
    assert r.status == 200, r.body
    doc = r.doc
    assert doc['datetime'] == '2024-05-01T12:30:15+00:00'
    assert doc['date'] == '2024-05-01' and doc['time'] == '08:05:00'
    assert doc['decimal'] == '1.50' and doc['uuid'] == '00000000-0000-0000-0000-000000000001'
    assert doc['set'] == [1, 2, 3] and doc['frozenset'] == ['a', 'b']
    assert sorted(map(str, doc['mixed'])) == ['1', 'a']  # unorderable items: a list anyway
    assert doc['enum'] == 'red' and doc['int_enum'] == 3
    assert doc['dataclass'] == {'x': 1, 'when': '2024-05-01'}
    assert doc['tuple'] == [1, 'two'] and doc['model'] == {'n': 3, 'name': 'x'}
    assert doc['nested'] == [{'in': ['red']}]


def test_a_value_without_a_json_form_is_a_500_naming_its_path(caplog):
    payload = {'items': [{}, {}, {}, {'when': object()}]}
    with caplog.at_level(logging.ERROR):
        r = call(answering(payload))
    assert r.status == 500
    assert r.doc == {'error': 'invalid output: items[3].when: a value of type object has no '
                              'JSON form', 'field': 'items[3].when', 'cid': 'c1d'}
    assert r.meta['exc'] == 'OutputError'
    [record] = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    text = record.getMessage()
    assert 'out.answers' in text and 'items[3].when' in text, text
    # The path says where: no traceback (it would only name oxbus's own encoder).
    assert record.exc_info is None and '_protocol' not in caplog.text


@pytest.mark.parametrize('payload,field,reason', [
    (object(), '', 'a value of type object has no JSON form'),
    ([1, b'raw'], '[1]', 'a value of type bytes has no JSON form'),
    ({'a': {'b': float('nan')}}, 'a.b', 'nan is not a JSON number'),
    ({'a': {(1, 2): 'x'}}, 'a.(1, 2)', 'an object key must be a string, not a tuple'),
    ({'d': decimal.Decimal('NaN')}, 'd',
     'Out of range decimal values are not JSON compliant: NaN'),
    ({'p': Point(1, object())}, 'p.when', 'a value of type object has no JSON form'),
])
def test_the_path_and_the_reason(payload, field, reason):
    r = call(answering(payload))
    assert r.status == 500 and r.doc['field'] == field, r.body
    assert r.doc['error'] == ('invalid output: %s: %s' % (field, reason) if field
                              else 'invalid output: %s' % reason)


def test_a_circular_answer_is_named_not_a_crash():
    loop = {'a': []}
    loop['a'].append(loop)
    r = call(answering(loop))
    assert r.status == 500 and r.doc['field'] == 'a[0]'
    assert 'circular' in r.doc['error']
    assert P.find_unencodable({'ok': [1, 2.5, None, 'x']}) == (
        '', 'the value cannot be encoded as JSON')


def test_a_model_nested_in_an_answer_names_its_field_under_the_key():
    item = Item()
    item.name = 'x'  # n is required and missing
    r = call(answering({'items': [item]}))
    assert r.status == 500 and r.doc['field'] == 'items[0].n', r.body


def test_declared_output_is_converted_to_what_openapi_says():
    r = call(answering({'n': '5', 'flag': 'yes', 'f': '1.5', 'user_id': '7', 'is_ok': 0,
                        'extra': 'dropped'},
                       output=(Int('n'), Bool('flag'), Float('f'), 'user_id', 'is_ok')))
    assert r.status == 200 and r.doc == {'n': 5, 'flag': True, 'f': 1.5, 'user_id': 7,
                                         'is_ok': False}


def test_a_declared_element_in_a_list_names_the_item():
    class Rows(Service):
        name = 'out.rows'
        output = Int('n'), '-is_ok'

        def handle(self):
            self.response.payload = [{'n': 1}, {'n': '2', 'is_ok': 'maybe'}]

    r = call(Rows)
    assert r.status == 500 and r.doc['field'] == '[1].is_ok', r.body
    assert r.doc['error'] == 'invalid output: [1].is_ok: expected a boolean'


@pytest.mark.parametrize('elem,value,reason', [
    (Dict('address'), 'Main Street 1', 'expected an object'),
    (DictList('rows'), [{'a': 1}, 'x'], 'expected a list of objects'),
    (DictList('rows'), {'a': 1}, 'expected a list of objects'),
])
def test_dict_elements_take_objects_only(elem, value, reason):
    class Out(Service):
        name = 'out.dicts'
        output = elem

        def handle(self):
            self.response.payload = {elem.name: value}

    r = call(Out)
    assert r.status == 500 and r.doc['error'] == 'invalid output: %s: %s' % (elem.name, reason)

    class Good(Service):
        name = 'out.dicts-good'
        output = elem

        def handle(self):
            self.response.payload = {elem.name: [{'a': 1}] if isinstance(elem, DictList)
                                     else {'a': 1}}

    assert call(Good).status == 200


def test_zato_style_output_is_checked_and_converted():
    import oxbus.zato_compat  # noqa: F401 - the zato.* names
    from zato.server.service import Service as ZatoService

    class Good(ZatoService):
        name = 'out.zato-good'

        class SimpleIO:
            output = 'user_id', 'is_active', 'name', 'when'

        def handle(self):
            self.response.payload.user_id = '7'
            self.response.payload.is_active = 'true'
            self.response.payload.name = 5
            self.response.payload.when = datetime.date(2024, 5, 1)

    r = call(Good)
    assert r.status == 200
    assert r.doc == {'response': {'user_id': 7, 'is_active': True, 'name': '5',
                                  'when': '2024-05-01'}}

    class Bad(ZatoService):
        name = 'out.zato-bad'

        class SimpleIO:
            output = 'user_id',

        def handle(self):
            self.response.payload = {'user_id': 'seven'}

    r = call(Bad)
    assert r.status == 500 and r.doc['field'] == 'user_id'

    class Unencodable(ZatoService):
        name = 'out.zato-unencodable'

        def handle(self):
            self.response.payload = {'rows': [{'at': object()}]}

    r = call(Unencodable)
    assert r.status == 500 and r.doc['field'] == 'rows[0].at'
