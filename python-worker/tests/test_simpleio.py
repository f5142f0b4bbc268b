"""SimpleIO: declaration parsing, Zato name typing, lookup order and output filtering."""

import pytest

from oxbus import BadRequest
from oxbus.simpleio import (Bunch, OutputError, describe, filter_output, parse_input, parse_spec,
                            to_bool, to_int)


def no_query():
    raise AssertionError('the query string must not be parsed when not needed')


def test_parse_spec_forms():
    assert parse_spec(None, 'x') == ()
    (one,) = parse_spec('customer_id', 'x')
    assert (one.name, one.required, one.convert) == ('customer_id', True, to_int)
    a, b, c = parse_spec(('name', '-is_active', '-id'), 'x')
    assert (a.name, a.required, a.convert) == ('name', True, None)
    assert (b.name, b.required, b.convert) == ('is_active', False, to_bool)
    assert (c.name, c.required, c.convert) == ('id', False, to_int)
    assert [e.name for e in parse_spec(['a', 'b'], 'x')] == ['a', 'b']


@pytest.mark.parametrize('bad', [5, ('a', 5), ('a', '-a'), ('-',), ('',)])
def test_parse_spec_rejects_bad_declarations(bad):
    with pytest.raises(TypeError) as e:
        parse_spec(bad, 'svc.input')
    assert 'svc.input' in str(e.value)


@pytest.mark.parametrize('name,typed', [
    ('id', 'int'), ('customer_id', 'int'), ('item_count', 'int'), ('page_size', 'int'),
    ('read_timeout', 'int'), ('is_active', 'bool'), ('has_children', 'bool'),
    ('needs_details', 'bool'), ('should_notify', 'bool'), ('name', None), ('idea', None),
    ('identity', None), ('this_is', None), ('void', None),
])
def test_zato_name_typing(name, typed):
    (elem,) = parse_spec(name, 'x')
    assert elem.convert is {'int': to_int, 'bool': to_bool, None: None}[typed]
    # The type reported to the supervisor (and its OpenAPI document) is the converter's.
    assert elem.type == {'int': 'integer', 'bool': 'boolean', None: 'any'}[typed]


def test_describe_is_the_wire_form_in_declaration_order():
    elems = parse_spec(('name', '-is_active', 'customer_id', '-note'), 'x')
    assert describe(elems) == [
        {'name': 'name', 'required': True, 'type': 'any'},
        {'name': 'is_active', 'required': False, 'type': 'boolean'},
        {'name': 'customer_id', 'required': True, 'type': 'integer'},
        {'name': 'note', 'required': False, 'type': 'any'},
    ]
    assert describe(parse_spec(None, 'x')) == []


@pytest.mark.parametrize('value,expected', [
    (7, 7), (0, 0), (-3, -3), ('7', 7), ('007', 7), ('-12', -12), ('+5', 5),
    (2 ** 63 - 1, 2 ** 63 - 1), (-2 ** 63, -2 ** 63), (str(2 ** 63 - 1), 2 ** 63 - 1),
])
def test_to_int_accepts(value, expected):
    assert to_int(value) == expected


@pytest.mark.parametrize('value', [True, False, 1.5, 2.0, '1.5', '', ' 7', '7 ', 'x', '1_000',
                                   '٣', None, [1], '-'])
def test_to_int_rejects(value):
    with pytest.raises(ValueError, match='expected an integer'):
        to_int(value)


@pytest.mark.parametrize('value', [2 ** 63, -2 ** 63 - 1, 10 ** 20, str(10 ** 20), '9' * 5000])
def test_to_int_refuses_integers_past_64_bits(value):
    with pytest.raises(ValueError, match='expected an integer|out of range'):
        to_int(value)


@pytest.mark.parametrize('value,expected', [
    (True, True), (False, False), (1, True), (0, False), ('true', True), ('FALSE', False),
    ('1', True), ('0', False), ('yes', True), ('No', False), ('on', True), ('OFF', False),
])
def test_to_bool_accepts(value, expected):
    assert to_bool(value) is expected


@pytest.mark.parametrize('value', [2, -1, 1.0, 'maybe', '', 'y', None, [True]])
def test_to_bool_rejects(value):
    with pytest.raises(ValueError, match='expected a boolean'):
        to_bool(value)


def test_input_lookup_order_payload_then_params_then_query():
    elems = parse_spec(('a', 'b', 'c', '-d'), 'x')
    result = parse_input(elems, {'a': 'body'}, {'a': 'param', 'b': 'param'},
                         lambda: {'a': 'q', 'b': 'q', 'c': 'q'})
    assert result == {'a': 'body', 'b': 'param', 'c': 'q', 'd': None}
    assert result.a == 'body' and result['c'] == 'q' and result.get('d') is None
    assert isinstance(result, Bunch)


def test_query_is_only_parsed_when_needed():
    elems = parse_spec(('customer_id',), 'x')
    assert parse_input(elems, {'customer_id': '5'}, None, no_query) == {'customer_id': 5}


def test_missing_required_input_names_the_field():
    elems = parse_spec(('customer_id', '-needs_details'), 'x')
    with pytest.raises(BadRequest) as e:
        parse_input(elems, {}, None, dict)
    assert e.value.status_code == 400
    assert e.value.msg == 'missing input: customer_id'
    assert e.value.details == {'field': 'customer_id', 'errors': [
        {'field': 'customer_id', 'error': 'missing input: customer_id'}]}


def test_null_counts_as_missing():
    elems = parse_spec(('customer_id', '-note'), 'x')
    with pytest.raises(BadRequest, match='missing input: customer_id'):
        parse_input(elems, {'customer_id': None}, None, dict)
    assert parse_input(elems, {'customer_id': 1, 'note': None}, None, dict).note is None


def test_invalid_input_names_the_field_and_the_reason():
    elems = parse_spec(('customer_id', 'is_active'), 'x')
    with pytest.raises(BadRequest) as e:
        parse_input(elems, {'customer_id': True, 'is_active': 'perhaps'}, None, dict)
    assert e.value.msg == ('invalid input: customer_id: expected an integer; '
                           'invalid input: is_active: expected a boolean')
    assert e.value.details == {'field': 'customer_id', 'errors': [
        {'field': 'customer_id', 'error': 'invalid input: customer_id: expected an integer'},
        {'field': 'is_active', 'error': 'invalid input: is_active: expected a boolean'}]}
    with pytest.raises(BadRequest) as e:
        parse_input(elems, {'customer_id': 1, 'is_active': 'perhaps'}, None, dict)
    assert e.value.msg == 'invalid input: is_active: expected a boolean'


def test_typed_values_from_path_and_query_strings():
    elems = parse_spec(('id', 'is_new'), 'x')
    assert parse_input(elems, None, {'id': '42'}, lambda: {'is_new': 'yes'}) == {
        'id': 42, 'is_new': True}


def test_payload_must_be_an_object_when_input_is_declared():
    elems = parse_spec(('a',), 'x')
    for payload in ([1, 2], 'text', 5):
        with pytest.raises(BadRequest, match='expected a JSON object'):
            parse_input(elems, payload, None, dict)
    # No body at all is fine: values may come from the path or the query.
    assert parse_input(elems, None, {'a': 'p'}, dict) == {'a': 'p'}
    # A raw (non-JSON) body is not searched, and not refused.
    assert parse_input(elems, b'{"a":1}', {'a': 'p'}, dict, json_body=False) == {'a': 'p'}


def test_output_filtering():
    elems = parse_spec(('name', '-email'), 'x')
    assert filter_output(elems, {'name': 'Ann', 'email': 'a@x', 'secret': 1}) == {
        'name': 'Ann', 'email': 'a@x'}
    assert filter_output(elems, {'name': 'Ann'}) == {'name': 'Ann'}
    assert filter_output(elems, [{'name': 'A', 'x': 1}, {'name': 'B'}]) == [
        {'name': 'A'}, {'name': 'B'}]
    assert filter_output(elems, 'text') == 'text'
    assert filter_output(elems, None) is None
    with pytest.raises(OutputError) as e:
        filter_output(elems, {'email': 'a@x'})
    assert e.value.field == 'name'
    with pytest.raises(OutputError):
        filter_output(elems, [{'name': 'A'}, {'email': 'b'}])


def test_bunch():
    b = Bunch(a=1)
    b.c = 3
    assert b == {'a': 1, 'c': 3} and b.a == 1
    assert not hasattr(b, 'missing')  # AttributeError, not KeyError
    del b.c
    assert 'c' not in b
