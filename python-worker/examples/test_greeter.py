"""The unit test of greeter.py (README, "Testing a service"): no server needed."""

from oxbus.testing import HTTPAnswer, TestClient

from greeter import Greet


def crm(call):
    """The CRM connection's stub: what the remote system would answer."""
    if call.params['name'] == 'Ann':
        return {'title': 'Dr'}
    return HTTPAnswer(404, json={'error': 'not found'})


def test_greets_and_counts_visits():
    client = TestClient(Greet, outgoing={'CRM': crm}, cache={'visits:Ann': 41})
    r = client.post({'name': 'Ann', 'greeting': 'Hi'})
    assert r.status == 200
    assert r.json == {'text': 'Hi, Dr Ann!', 'visits': 42}
    assert client.cache.default.get('visits:Ann') == 42
    assert client.outgoing_calls[0].method == 'GET'


def test_an_unknown_customer_is_a_404():
    r = TestClient(Greet, outgoing={'CRM': crm}).get(query={'name': 'Bob'})
    assert r.status == 404
    assert r.json['error'] == 'no customer named Bob'


def test_the_name_is_required():
    r = TestClient(Greet, outgoing={'CRM': crm}).post({})
    assert r.status == 400
    assert r.json['error'] == 'missing input: name'
