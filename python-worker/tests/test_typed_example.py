"""python-worker/examples/typed_service.py: the service CI also checks with ``mypy --strict`` (.ci/test.sh)
run as documented."""

import importlib.util
import json
import os
import sys

from oxbus._dispatch import Dispatcher
from test_service import call

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'examples')


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, name + '.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_typed_example_answers_its_model():
    example = load('typed_service')
    asked = []

    def request(meta, body):
        asked.append(json.loads(meta) if isinstance(meta, bytes) else meta)
        return b'{"status":200}', b'["order:1","order:2"]'

    cls = example.GetOrder
    assert cls.name == 'examples.get-order'  # an annotated name (name: str = ...) is the name
    r = call(cls, dispatcher=Dispatcher({cls.name: cls}, request=request),
             query='order_id=7', headers=[['x-tenant', 'acme']])
    assert r.status == 200, r.body
    assert r.doc == {'order_id': 7, 'total': '9.90', 'placed': '2024-05-01', 'tenant': 'acme'}
    assert asked and asked[0]['op'] == 'cache.keys'
    # Without the header, Headers.get gives None (typed Optional[str]).
    r = call(cls, dispatcher=Dispatcher({cls.name: cls}, request=request), query='order_id=8')
    assert r.doc['tenant'] is None
