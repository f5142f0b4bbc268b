"""Hot deployment end to end: ``modules.check``, ``modules.activate`` and ``modules.remove``.

A real worker process (through :class:`conftest.FakeSupervisor`) gets module sources in
CALL bodies, exactly as the supervisor sends them (``ipc-protocol/SPEC.md``, "Hot
deployment"); the tests then look at the replies, at what the new services answer and,
through the ``probe`` service, at what the worker's ``sys.modules`` holds.
"""

import itertools
import json
import os
import sys
import textwrap
import time

import pytest

from conftest import wait_until
from oxbus import _protocol as P

BASE = {
    'probe.py': '''
        import importlib
        import sys

        from oxbus import Service

        class Probe(Service):
            """Is module <payload["module"]> in sys.modules, and can it be imported?"""
            name = 'probe'

            def handle(self):
                name = self.request.payload['module']
                loaded = name in sys.modules
                try:
                    importlib.import_module(name)
                    importable = True
                except ImportError:
                    importable = False
                    sys.modules.pop(name, None)
                self.response.payload = {'loaded': loaded, 'importable': importable,
                                         'json_ok': sys.modules['json'].dumps([1]) == '[1]'}
    ''',
    'legacy.py': '''
        from oxbus import Service

        class Legacy(Service):
            name = 'legacy'

            def handle(self):
                self.response.payload = {'from': 'services_dir'}
    ''',
}

PROBE_INFO = {'name': 'probe', 'module': 'probe', 'class': 'Probe', 'async': False,
              'verbs': []}
LEGACY_INFO = {'name': 'legacy', 'module': 'legacy', 'class': 'Legacy', 'async': False,
               'verbs': []}

COUNTER = '''
    import os
    import time

    from oxbus import Service

    COUNT = 0

    class Counter(Service):
        name = 'counter'

        def handle(self):
            global COUNT
            COUNT += 1
            count = COUNT
            doc = self.request.payload or {}
            if doc.get('dir'):   # a long call: wait for <dir>/release
                open(os.path.join(doc['dir'], 'started'), 'w').close()
                give_up = time.monotonic() + 20
                while not os.path.exists(os.path.join(doc['dir'], 'release')):
                    if time.monotonic() > give_up:
                        raise TimeoutError('never released')
                    time.sleep(0.005)
            self.response.payload = {'version': __oxbus_version__, 'tag': TAG,
                                     'count': count, 'pid': os.getpid()}
'''

_streams = itertools.count(1)


class Deploy:
    """The supervisor's side of the module ops, on top of a FakeSupervisor."""

    def __init__(self, sup):
        self.sup = sup

    def op(self, op, modules, timeout=10):
        """modules: [(name, version, source[, origin])]; return (status, reply document)."""
        sources = [textwrap.dedent(m[2]).encode('utf-8') for m in modules]
        meta = {'op': op, 'modules': []}
        for m, b in zip(modules, sources):
            entry = {'name': m[0], 'version': m[1], 'size': len(b)}
            if len(m) > 3:
                entry['origin'] = m[3]
            meta['modules'].append(entry)
        return self.raw(meta, b''.join(sources), timeout)

    def raw(self, meta, body=b'', timeout=10):
        stream = next(_streams)
        self.sup.conn.sendall(P.encode_call(stream, meta, body))
        reply_meta, reply_body = self.sup.replies(1, timeout)[stream]
        assert reply_meta['content_type'] == 'application/json'
        return reply_meta['status'], json.loads(reply_body)

    def check(self, *modules):
        return self.op('modules.check', list(modules))

    def activate(self, *modules):
        return self.op('modules.activate', list(modules))

    def remove(self, *names):
        return self.raw({'op': 'modules.remove', 'modules': list(names)})

    def invoke(self, service, payload=None):
        stream = next(_streams)
        self.sup.call(stream, service, json.dumps(payload).encode() if payload else b'')
        meta, body = self.sup.replies(1)[stream]
        return meta['status'], json.loads(body) if body else None

    def probe(self, module):
        status, doc = self.invoke('probe', {'module': module})
        assert status == 200, doc
        assert doc['json_ok']
        return doc['loaded'], doc['importable']


@pytest.fixture
def dep(sup):
    _hello, ready = sup.start(BASE)
    assert ready['services'] == [LEGACY_INFO, PROBE_INFO]
    return Deploy(sup)


def counter(version, tag):
    return ('counter', version, textwrap.dedent(COUNTER) + 'TAG = %r\n' % tag)


def names(doc):
    return sorted(s['name'] for s in doc['services'])


def wait_for(path, timeout=10.0):
    wait_until(lambda: os.path.exists(path), timeout, path)


# -- modules.check -------------------------------------------------------------------------


def test_check_reports_the_services_and_leaves_nothing_behind(dep):
    status, doc = dep.check(counter(1, 'one'), ('helper', 4, 'VALUE = 1\n'))
    assert status == 200, doc
    assert doc == {'services': [{'name': 'counter', 'module': 'counter', 'class': 'Counter',
                                 'async': False, 'verbs': []}],
                   'warnings': [{'module': 'helper', 'message': 'module helper defines no '
                                 'services (no class deriving from oxbus.Service with a '
                                 'handle method)'}]}
    assert dep.invoke('counter')[0] == 404
    assert dep.probe('counter') == (False, False)
    assert dep.probe('helper') == (False, False)
    # The table is unchanged, and a later activate starts from scratch.
    status, doc = dep.remove()
    assert (status, names(doc)) == (200, ['legacy', 'probe'])


def test_check_warns_of_classes_without_a_handler_and_of_modules_without_services(dep):
    source = '''
        from oxbus import Service

        class Lower(Service):
            def handle_get(self):
                pass

        class Typo(Service):
            def handel(self):
                pass

        class Nothing(Service):
            pass

        class Base(Service):
            def helper(self):
                return 1

        class Real(Base):
            def handle(self):
                pass

            def handle_post(self):
                pass
    '''
    status, doc = dep.check(('shop', 1, source), ('util', 1, 'X = 1\n'))
    assert status == 200, doc
    assert names(doc) == ['shop.real']
    by_class = {w.get('class'): w for w in doc['warnings']}
    assert set(by_class) == {'Lower', 'Nothing', 'Real', 'Typo', None}
    assert 'class shop.Lower defines no handler' in by_class['Lower']['message']
    assert 'handle_get is not a handler: HTTP verbs are upper case (handle_GET)' in \
        by_class['Lower']['message']
    assert 'handel is not a handler: did you mean handle?' in by_class['Typo']['message']
    assert by_class['Nothing']['message'].endswith('so it is not a service and was not '
                                                   'deployed')
    # A service that also has a lower-case verb method: its handle_post never runs.
    assert by_class['Real']['message'] == ('service shop.real (shop.Real): handle_post is '
                                           'not a handler: HTTP verbs are upper case '
                                           '(handle_POST)')
    assert by_class[None] == {'module': 'util', 'message': 'module util defines no services '
                              '(no class deriving from oxbus.Service with a handle method)'}
    assert all(w['module'] in ('shop', 'util') for w in doc['warnings'])
    # Base (subclassed next to it) is abstract on purpose: no warning.
    # A module with only handler-less classes gets the class warnings, not one more.
    status, doc = dep.check(('bases', 1, 'from oxbus import Service\n'
                                         'class Lonely(Service):\n    pass\n'))
    assert [w.get('class') for w in doc['warnings']] == ['Lonely']


def test_a_base_class_of_services_in_another_module_is_not_warned_of(dep):
    base = '''
        from oxbus import Service

        class Base(Service):
            def helper(self):
                return 1

        class Middle(Base):
            pass
    '''
    shop = '''
        from bases import Middle

        class Real(Middle):
            def handle(self):
                self.response.payload = self.helper()
    '''
    status, doc = dep.check(('bases', 1, base), ('shop', 1, shop))
    assert status == 200, doc
    assert names(doc) == ['shop.real']
    assert doc['warnings'] == []
    # Alone, the same base module is warned of.
    status, doc = dep.check(('bases', 1, base))
    assert [w.get('class') for w in doc['warnings']] == ['Middle'], doc


def test_check_of_a_syntax_error_names_module_and_line(dep):
    source = 'from oxbus import Service\n\ndef broken(:\n    pass\n'
    status, doc = dep.check(counter(1, 'one'), ('broken', 2, source))
    assert status == 422
    assert doc['error'] == 'import failed'
    assert doc['module'] == 'broken'
    assert '<oxbus:broken@v2>' in doc['traceback']
    assert 'line 3' in doc['traceback']
    assert 'def broken(:' in doc['traceback']
    assert 'SyntaxError' in doc['traceback']
    assert dep.probe('counter') == (False, False)


def test_check_of_an_import_error_names_module_and_line(dep):
    source = '''
        import os

        x = 1
        import no_such_module_for_oxbus
    '''
    status, doc = dep.check(('badimport', 7, source))
    assert status == 422
    assert (doc['error'], doc['module']) == ('import failed', 'badimport')
    tb = doc['traceback']
    assert 'File "<oxbus:badimport@v7>", line 5, in <module>' in tb
    assert 'import no_such_module_for_oxbus' in tb  # the source line, via linecache
    assert "ModuleNotFoundError: No module named 'no_such_module_for_oxbus'" in tb
    assert '_deploy.py' not in tb and 'importlib' not in tb
    assert dep.probe('badimport') == (False, False)


def test_a_failure_in_an_imported_module_of_the_call_is_reported_against_it(dep):
    status, doc = dep.check(('outer', 1, 'import inner\n'),
                            ('inner', 1, 'X = 1\nraise RuntimeError("boom")\n'))
    assert status == 422
    assert doc['module'] == 'inner'
    assert '<oxbus:inner@v1>", line 2' in doc['traceback']
    assert 'RuntimeError: boom' in doc['traceback']
    assert dep.probe('outer') == (False, False)
    assert dep.probe('inner') == (False, False)


# -- modules.activate ----------------------------------------------------------------------


def test_activate_then_redeploy_runs_the_new_code_with_fresh_state(dep, sup):
    status, doc = dep.activate(counter(1, 'one'))
    assert status == 200, doc
    assert names(doc) == ['counter', 'legacy', 'probe']
    assert dep.probe('counter') == (True, True)
    pid = sup.proc.pid
    assert dep.invoke('counter') == (200, {'version': 1, 'tag': 'one', 'count': 1, 'pid': pid})
    assert dep.invoke('counter')[1]['count'] == 2

    status, doc = dep.activate(counter(2, 'two'))
    assert (status, names(doc)) == (200, ['counter', 'legacy', 'probe'])
    assert dep.invoke('counter') == (200, {'version': 2, 'tag': 'two', 'count': 1, 'pid': pid})
    assert sup.proc.poll() is None


def test_an_invocation_started_on_v1_finishes_on_v1(dep, sup):
    assert dep.activate(counter(1, 'one'))[0] == 200
    slow = next(_streams)
    sup.call(slow, 'counter', json.dumps({'dir': sup.dir}).encode())
    wait_for(os.path.join(sup.dir, 'started'))

    assert dep.activate(counter(2, 'two'))[0] == 200
    assert dep.invoke('counter')[1] == {'version': 2, 'tag': 'two', 'count': 1,
                                        'pid': sup.proc.pid}
    open(os.path.join(sup.dir, 'release'), 'w').close()
    meta, body = sup.replies(1)[slow]
    assert meta['status'] == 200
    assert json.loads(body)['version'] == 1 and json.loads(body)['tag'] == 'one'


def test_modules_of_one_call_import_each_other_in_any_order(dep):
    customers = '''
        from crm import util          # listed after this module
        from oxbus import Service

        NAME = 'customers'

        class Customers(Service):
            name = 'crm.customers'

            def handle(self):
                self.response.payload = {'greeting': util.greet('ann'),
                                         'util': util.__oxbus_version__}
    '''
    util = '''
        import crm.customers          # a cycle: used only at call time

        def greet(who):
            return 'hello %s from %s' % (who, crm.customers.NAME)
    '''
    status, doc = dep.activate(('crm.customers', 3, customers), ('crm.util', 7, util))
    assert status == 200, doc
    assert dep.invoke('crm.customers') == (200, {'greeting': 'hello ann from customers',
                                                 'util': 7})
    assert dep.probe('crm.util') == (True, True)
    assert dep.probe('crm') == (True, True)

    # Remove one, then the other: the made-up parent package goes with the last.
    assert dep.remove('crm.customers')[0] == 200
    assert dep.probe('crm.util') == (True, True)
    assert dep.remove('crm.util')[0] == 200
    assert dep.probe('crm') == (False, False)


def test_a_duplicate_service_name_is_refused_and_the_old_version_keeps_serving(dep):
    assert dep.activate(counter(1, 'one'))[0] == 200

    # Against a service of a module the call does not replace.
    other = '''
        from oxbus import Service

        class Copy(Service):
            name = 'counter'

            def handle(self):
                self.response.payload = 'copy'
    '''
    status, doc = dep.activate(('copycat', 1, other))
    assert status == 422
    assert doc['module'] == 'copycat'
    # Once (no traceback that repeats it), naming both classes, and no "(?)" for a module
    # that has no file.
    assert doc == {'module': 'copycat', 'error': "duplicate service name 'counter': class "
                   "counter.Counter and class copycat.Copy both define it; rename one (set "
                   "its name attribute)"}
    assert dep.probe('copycat') == (False, False)

    # Within one call, while replacing the module that owns the name.
    status, doc = dep.activate(counter(2, 'two'), ('copycat', 1, other))
    assert status == 422
    assert "duplicate service name 'counter'" in doc['error']
    assert dep.invoke('counter')[1]['tag'] == 'one'
    assert dep.invoke('counter')[1]['count'] == 2   # same module object, state kept

    # check validates the same way.
    assert dep.check(('copycat', 1, other))[0] == 422


def test_a_failed_activate_changes_nothing(dep):
    assert dep.activate(counter(1, 'one'))[0] == 200
    status, doc = dep.activate(counter(2, 'two'), ('bad', 1, 'raise ValueError("no")\n'))
    assert (status, doc['module']) == (422, 'bad')
    assert dep.invoke('counter')[1] == {'version': 1, 'tag': 'one', 'count': 1,
                                        'pid': dep.sup.proc.pid}


def test_a_deploy_may_replace_a_services_dir_module(dep):
    source = '''
        from oxbus import Service

        class Legacy(Service):
            name = 'legacy'

            def handle(self):
                self.response.payload = {'from': 'deploy'}
    '''
    assert dep.invoke('legacy') == (200, {'from': 'services_dir'})
    status, doc = dep.activate(('legacy', 5, source))
    assert (status, names(doc)) == (200, ['legacy', 'probe'])
    assert dep.invoke('legacy') == (200, {'from': 'deploy'})
    assert dep.remove('legacy')[0] == 200
    assert dep.invoke('legacy')[0] == 404


TYPED = """
from oxbus import Service

class Typed(Service):
    name = 'typed'
    input = 'customer_id', '-needs_details', '-comment'
    output = 'name', '-email', '-is_vip'

    def handle(self):
        pass

class Untyped(Service):
    name = 'untyped'
    input = ()

    def handle(self):
        pass
"""

TYPED_INFO = {
    'name': 'typed', 'module': 'typed', 'class': 'Typed', 'async': False, 'verbs': [],
    'input': [{'name': 'customer_id', 'required': True, 'type': 'integer'},
              {'name': 'needs_details', 'required': False, 'type': 'boolean'},
              {'name': 'comment', 'required': False, 'type': 'any'}],
    'output': [{'name': 'name', 'required': True, 'type': 'any'},
               {'name': 'email', 'required': False, 'type': 'any'},
               {'name': 'is_vip', 'required': False, 'type': 'boolean'}],
}
# An empty declaration behaves as none, so it is reported as none.
UNTYPED_INFO = {'name': 'untyped', 'module': 'typed', 'class': 'Untyped', 'async': False,
                'verbs': []}


def test_check_activate_and_remove_report_the_simpleio_declarations(dep):
    status, doc = dep.check(('typed', 1, TYPED))
    assert status == 200, doc
    assert doc == {'services': [TYPED_INFO, UNTYPED_INFO], 'warnings': []}
    status, doc = dep.activate(('typed', 1, TYPED))
    assert status == 200, doc
    by_name = {s['name']: s for s in doc['services']}
    assert by_name['typed'] == TYPED_INFO and by_name['untyped'] == UNTYPED_INFO
    assert by_name['probe'] == PROBE_INFO
    # Redeployed with other declarations: the activate reply has the new ones.
    status, doc = dep.activate(('typed', 2, TYPED.replace("'-comment'", "'comment_count'")))
    assert status == 200, doc
    (typed,) = [s for s in doc['services'] if s['name'] == 'typed']
    assert typed['input'][2] == {'name': 'comment_count', 'required': True, 'type': 'integer'}
    # remove answers with the complete table: the other services keep their declarations.
    status, doc = dep.remove('never.deployed')
    assert status == 200
    assert [s['input'] for s in doc['services'] if s['name'] == 'typed'] == [typed['input']]


def test_remove_drops_the_services_and_the_module(dep):
    assert dep.activate(counter(1, 'one'))[0] == 200
    status, doc = dep.remove('counter', 'never.deployed')
    assert (status, names(doc)) == (200, ['legacy', 'probe'])
    assert dep.invoke('counter')[0] == 404
    assert dep.probe('counter') == (False, False)


def test_an_async_service_arriving_by_deploy_starts_the_event_loop(dep):
    source = '''
        import asyncio

        from oxbus import Service

        class Sleepy(Service):
            name = 'sleepy'

            async def handle(self):
                await asyncio.sleep(0.01)
                self.response.payload = {'async': True}
    '''
    status, doc = dep.activate(('sleepy', 1, source))
    assert status == 200
    assert [s['async'] for s in doc['services'] if s['name'] == 'sleepy'] == [True]
    assert dep.invoke('sleepy') == (200, {'async': True})


@pytest.mark.parametrize('name, fragment', [
    ('json', "the module name 'json' is already taken"),
    ('json.tool2', "its parent package 'json' is already taken"),
    ('oxbus.evil', "its parent package 'oxbus' is already taken"),
    ('tabnanny', "'tabnanny' is already taken by the standard library"),
    ('1abc', 'invalid module name'),
    ('a..b', 'invalid module name'),
    ('class', 'invalid module name'),
])
def test_a_name_that_is_not_ours_is_refused(dep, name, fragment):
    source = 'from oxbus import Service\nclass X(Service):\n    name = "x"\n' \
             '    def handle(self):\n        pass\n'
    for op in ('modules.check', 'modules.activate'):
        status, doc = dep.op(op, [(name, 1, source)])
        assert status == 422
        assert fragment in doc['error'], doc
        assert doc['module'] == name
    assert dep.invoke('x')[0] == 404
    assert dep.probe('json') == (True, True)   # probe also checks json still works


def test_malformed_calls_are_400(dep):
    assert dep.raw({'op': 'modules.check', 'modules': 'x'})[0] == 400
    assert dep.raw({'op': 'modules.check',
                    'modules': [{'name': 'a', 'version': 1, 'size': 10}]}, b'short')[0] == 400
    assert dep.raw({'op': 'modules.activate',
                    'modules': [{'name': 'a', 'version': 1, 'size': 1}]}, b'xx')[0] == 400
    assert dep.raw({'op': 'modules.remove', 'modules': [1]})[0] == 400


def test_pipelined_activates_are_serialised_and_the_last_one_wins(dep, sup):
    frames = []
    streams = []
    for version in range(1, 6):
        source = (textwrap.dedent(COUNTER) + 'TAG = %r\n' % ('v%d' % version)).encode()
        stream = next(_streams)
        streams.append(stream)
        frames.append(P.encode_call(stream, {'op': 'modules.activate', 'modules': [
            {'name': 'counter', 'version': version, 'size': len(source)}]}, source))
    sup.conn.sendall(b''.join(frames))
    got = sup.replies(len(streams))
    assert all(got[s][0]['status'] == 200 for s in streams)
    assert dep.invoke('counter')[1]['tag'] == 'v5'


def test_a_runtime_traceback_of_a_deployed_module_shows_its_source(dep, sup):
    source = '''
        from oxbus import Service

        class Boom(Service):
            name = 'boom'

            def handle(self):
                raise KeyError('deployed-boom')
    '''
    assert dep.activate(('boom', 9, source))[0] == 200
    stream = next(_streams)
    sup.call(stream, 'boom')
    logs = []
    meta, _body = sup.replies(1, others=logs)[stream]
    assert meta['status'] == 500
    while not any(kind == P.LOG for kind, *_ in logs):
        logs.append(sup.recv())
    text = ''.join(json.loads(p)['msg'] for kind, _f, _s, p in logs if kind == P.LOG)
    assert 'File "<oxbus:boom@v9>", line 8, in handle' in text
    assert "raise KeyError('deployed-boom')" in text


def test_a_module_deployed_from_a_file_is_that_file_in_tracebacks_and_file(dep, sup, tmp_path):
    # The deployer's file: a resource beside it is found through __file__.
    origin = str(tmp_path / 'shop.py')
    (tmp_path / 'prices.json').write_text('{"tea": 3}')
    source = '''
        import json
        import os

        from oxbus import Service

        class Prices(Service):
            name = 'prices'

            def handle(self):
                with open(os.path.join(os.path.dirname(__file__), 'prices.json')) as f:
                    self.response.payload = {'file': __file__, 'prices': json.load(f)}

        class Boom(Service):
            name = 'shop.boom'

            def handle(self):
                raise KeyError('from-the-file')
    '''
    # The file on disk need not hold the deployed source (or exist at all): the lines shown
    # are the deployed ones.
    status, doc = dep.check(('shop', 0, source, origin))
    assert status == 200, doc
    assert dep.activate(('shop', 4, source, origin))[0] == 200
    assert dep.invoke('prices') == (200, {'file': origin, 'prices': {'tea': 3}})
    stream = next(_streams)
    sup.call(stream, 'shop.boom')
    logs = []
    meta, _body = sup.replies(1, others=logs)[stream]
    assert meta['status'] == 500
    while not any(kind == P.LOG for kind, *_ in logs):
        logs.append(sup.recv())
    text = ''.join(json.loads(p)['msg'] for kind, _f, _s, p in logs if kind == P.LOG)
    assert 'File "%s", line 18, in handle' % origin in text
    assert "raise KeyError('from-the-file')" in text
    # An import error names the file too.
    status, doc = dep.check(('shop', 0, 'import os\nraise ValueError("bad")\n', origin))
    assert status == 422
    assert 'File "%s", line 2' % origin in doc['traceback']
    # A duplicate service name names the file of the module that has one.
    status, doc = dep.check(('other', 0, '''
        from oxbus import Service

        class Prices(Service):
            name = 'prices'

            def handle(self):
                pass
    '''))
    assert status == 422
    assert doc['error'].startswith("duplicate service name 'prices': class shop.Prices (%s) "
                                   "and class other.Prices both" % origin), doc
    # Without an origin: the made-up name, and no __file__.
    assert dep.activate(('shop', 5, source))[0] == 200
    status, doc = dep.invoke('prices')
    assert status == 500


def test_an_origin_must_be_a_path(dep):
    for bad in ('', '<oxbus:x@v1>', 7):
        status, doc = dep.check(('shop', 0, 'X = 1\n', bad))
        assert status == 400, doc
        assert doc['error'].startswith('module shop: "origin" must be a file path'), doc


def test_a_module_keeps_the_version_of_another_it_imported_until_redeployed_itself(dep):
    """The documented rule for modules that import each other across deploys."""
    util = '''
        VALUE = %r
    '''
    user = '''
        import shared_util
        from shared_util import VALUE
        from oxbus import Service

        class User(Service):
            name = 'user.value'

            def handle(self):
                self.response.payload = {'imported_name': VALUE,
                                         'via_module': shared_util.VALUE}
    '''
    assert dep.activate(('shared_util', 1, util % 'one'), ('user_mod', 1, user))[0] == 200
    assert dep.invoke('user.value') == (200, {'imported_name': 'one', 'via_module': 'one'})
    # util alone: user_mod still holds the module object (and the name) it imported.
    assert dep.activate(('shared_util', 2, util % 'two'))[0] == 200
    assert dep.invoke('user.value') == (200, {'imported_name': 'one', 'via_module': 'one'})
    # user_mod again: it imports the current util.
    assert dep.activate(('user_mod', 2, user))[0] == 200
    assert dep.invoke('user.value') == (200, {'imported_name': 'two', 'via_module': 'two'})


# -- the compiled-code cache ---------------------------------------------------------------

from conftest import write_services  # noqa: E402

from oxbus._deploy import COLLECT_AFTER, CodeCache, _PathNames, _renamed  # noqa: E402

#: A module big enough for the code cache (CodeCache.MIN_BYTES of source per call).
PADDING = '# %s\n' % ('padding ' * 20) * (CodeCache.MIN_BYTES // 160 + 1)

TAGGED = '''
    from oxbus import Service

    class Tagged(Service):
        name = 'tagged'

        def handle(self):
            self.response.payload = {'tag': TAG, 'version': __oxbus_version__}

        def fail(self):
            raise KeyError('tagged-boom')
'''


def tagged(tag, version=1):
    return ('tagged', version, textwrap.dedent(TAGGED) + 'TAG = %r\n' % tag + PADDING)


@pytest.fixture
def cached(sup):
    """A worker whose code cache is <tmp>/code; returns (Deploy, cache directory)."""
    code = os.path.join(sup.dir, 'code')
    write_services(sup.services_dir, BASE)
    sup.spawn(env={'OXBUS_CODE_CACHE': code})
    sup.handshake()
    return Deploy(sup), code


def packs(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith('.pack')) \
        if os.path.isdir(directory) else []


def test_an_activate_after_a_check_loads_the_checked_code_from_the_cache(cached):
    dep, code = cached
    assert dep.check(tagged('from-source'))[0] == 200
    assert len(packs(code)) == 1
    # Put other code under the same key: if the activate compiled the source again it
    # would answer 'from-source'.
    source = tagged('from-source')[2]
    poisoned = textwrap.dedent(TAGGED) + "TAG = 'from-cache'\n" + PADDING
    cache = CodeCache(code)
    cache.store({cache.key(source): compile(poisoned, '<oxbus:tagged@v0>', 'exec')})
    assert dep.activate(tagged('from-source', version=7))[0] == 200
    assert dep.invoke('tagged') == (200, {'tag': 'from-cache', 'version': 7})


def test_cached_code_names_the_activated_version_in_tracebacks(cached, sup):
    dep, code = cached
    source = textwrap.dedent('''
        from oxbus import Service

        class Boom(Service):
            name = 'boom'

            def handle(self):
                raise KeyError('deployed-boom')
    ''') + PADDING
    assert dep.check(('boom', 0, source))[0] == 200
    assert len(packs(code)) == 1
    assert dep.activate(('boom', 9, source))[0] == 200
    stream = next(_streams)
    sup.call(stream, 'boom')
    logs = []
    meta, _body = sup.replies(1, others=logs)[stream]
    assert meta['status'] == 500
    while not any(kind == P.LOG for kind, *_ in logs):
        logs.append(sup.recv())
    text = ''.join(json.loads(p)['msg'] for kind, _f, _s, p in logs if kind == P.LOG)
    assert 'File "<oxbus:boom@v9>", line 8, in handle' in text
    assert "raise KeyError('deployed-boom')" in text


def test_a_refused_or_small_call_writes_no_code(cached):
    dep, code = cached
    broken = ('broken', 1, 'import no_such_module_for_oxbus\n' + PADDING)
    assert dep.check(broken)[0] == 422
    assert dep.activate(broken)[0] == 422
    assert dep.check(('syntax', 1, 'def f(:\n' + PADDING))[0] == 422
    assert dep.activate(counter(1, 'small'))[0] == 200  # below MIN_BYTES: no file I/O
    assert packs(code) == []


def test_a_damaged_pack_is_ignored(cached):
    dep, code = cached
    assert dep.check(tagged('one'))[0] == 200
    (name,) = packs(code)
    with open(os.path.join(code, name), 'wb') as f:
        f.write(b'\xe3not marshal data')
    assert dep.activate(tagged('one', version=2))[0] == 200
    assert dep.invoke('tagged') == (200, {'tag': 'one', 'version': 2})


def test_the_cache_finds_modules_in_other_packs_and_keeps_the_newest(tmp_path):
    cache = CodeCache(str(tmp_path), keep=3)
    a, b = cache.key('A = 1\n'), cache.key('B = 2\n')
    cache.store({a: compile('A = 1\n', '<a>', 'exec')})
    cache.store({b: compile('B = 2\n', '<b>', 'exec')})
    assert cache.load([a, b]) == ({}, False)  # no pack of exactly these two
    found, exact = cache.load([a, b], search=True)
    assert (sorted(found) == sorted([a, b]), exact) == (True, False)
    ns = {}
    exec(found[b], ns)
    assert ns['B'] == 2
    found, exact = cache.load([a])
    assert (list(found), exact) == ([a], True)
    for i in range(5):
        cache.store({cache.key('C = %d\n' % i): compile('C = 1\n', '<c>', 'exec')})
    assert len(packs(str(tmp_path))) == 3
    assert CodeCache(None).load([a]) == ({}, False)


def test_renamed_code_carries_the_new_filename_all_the_way_down():
    code = compile('class A:\n    def f(self):\n        return [x for x in ()]\n',
                   '<oxbus:m@v0>', 'exec')
    renamed = _renamed(code, '<oxbus:m@v4>')
    seen = []

    def walk(c):
        seen.append(c.co_filename)
        for const in c.co_consts:
            if isinstance(const, type(code)):
                walk(const)
    walk(renamed)
    assert len(seen) >= 3 and set(seen) == {'<oxbus:m@v4>'}


def test_a_replaced_module_leaves_linecache(dep):
    lines = '''
        import linecache

        from oxbus import Service

        class Lines(Service):
            name = 'lines'

            def handle(self):
                self.response.payload = sorted(
                    k for k in linecache.cache if k.startswith('<oxbus:'))
    '''
    assert dep.activate(('lines', 1, lines), counter(1, 'one'))[0] == 200
    assert dep.invoke('lines')[1] == ['<oxbus:counter@v1>', '<oxbus:lines@v1>']
    assert dep.activate(counter(2, 'two'))[0] == 200
    assert dep.activate(counter(2, 'two again'))[0] == 200  # the same version again
    assert dep.invoke('lines')[1] == ['<oxbus:counter@v2>', '<oxbus:lines@v1>']
    assert dep.check(counter(3, 'checked only'))[0] == 200
    assert dep.remove('counter')[0] == 200
    assert dep.invoke('lines')[1] == ['<oxbus:lines@v1>']



def test_two_modules_of_one_origin_share_its_linecache_entry(dep):
    """A file's lines stay in linecache while any module deployed from it is active."""
    lines = '''
        import linecache

        from oxbus import Service

        class Lines(Service):
            name = 'lines'

            def handle(self):
                self.response.payload = sorted(
                    [k, ''.join(linecache.cache[k][2])]
                    for k in linecache.cache if k.startswith('/srv/'))
    '''
    shared = '/srv/app/shared.py'
    assert dep.activate(('lines', 1, lines))[0] == 200
    assert dep.activate(('first', 1, 'A = 1\n', shared))[0] == 200
    assert dep.activate(('second', 1, 'B = 2\n', shared))[0] == 200
    assert dep.invoke('lines')[1] == [[shared, 'B = 2\n']]
    # The one whose lines are there goes: the other's lines, not the file from disk.
    assert dep.remove('second')[0] == 200
    assert dep.invoke('lines')[1] == [[shared, 'A = 1\n']]
    assert dep.activate(('second', 2, 'B = 3\n', shared))[0] == 200
    # The other one goes: the entry stays, with the lines of the one still there.
    assert dep.remove('first')[0] == 200
    assert dep.invoke('lines')[1] == [[shared, 'B = 3\n']]
    # The last one goes: so does the entry.
    assert dep.remove('second')[0] == 200
    assert dep.invoke('lines')[1] == []
    # Replaced by a version from another file: the old file's entry goes.
    assert dep.activate(('first', 2, 'A = 2\n', '/srv/app/one.py'))[0] == 200
    assert dep.activate(('first', 3, 'A = 3\n', '/srv/app/two.py'))[0] == 200
    assert [k for k, _ in dep.invoke('lines')[1]] == ['/srv/app/two.py']


WATCHER = '''
    import gc
    import sys
    import weakref

    from oxbus import Service

    REF = []

    class Watch(Service):
        """Keep a weak reference to a class of a deployed module; say if it lives."""
        name = 'watch'

        def handle(self):
            module = self.request.payload.get('module')  # else: just look
            if module:
                REF[:] = [weakref.ref(sys.modules[module].S)]
            if self.request.payload.get('collect'):
                gc.collect()
            self.response.payload = {'alive': REF[0]() is not None}
'''


def test_a_replaced_module_does_not_outlive_its_replacement(dep):
    # a and b arrive in one call, so they share an importer (their __loader__); b is then
    # replaced alone, and the still active a must not keep the old b alive through it.
    a = 'X = 1\n'
    b = 'from oxbus import Service\n\nclass S(Service):\n    def handle(self):\n        pass\n'
    assert dep.activate(('watcher', 1, WATCHER), ('a', 1, a), ('b', 1, b))[0] == 200
    assert dep.invoke('watch', {'module': 'b'})[1] == {'alive': True}
    assert dep.activate(('b', 2, b))[0] == 200
    assert dep.invoke('watch', {'collect': True})[1] == {'alive': False}


def test_a_big_redeploy_is_followed_by_a_full_collection(dep):
    watcher = WATCHER
    many = [('many%d' % i, 1, 'from oxbus import Service\n\nclass S(Service):\n'
             '    name = "many.%d"\n\n    def handle(self):\n        pass\n' % i)
            for i in range(COLLECT_AFTER)]
    assert dep.activate(('watcher', 1, watcher), *many)[0] == 200
    assert dep.invoke('watch', {'module': 'many0'})[1] == {'alive': True}
    # The old classes are reference cycles: only the cyclic collector frees them.
    assert dep.activate(*[(n, 2, s) for n, _v, s in many])[0] == 200
    wait_until(lambda: not dep.invoke('watch', {'look': True})[1]['alive'], 5,
               'the replaced version to be collected')


# -- finding names that are taken ----------------------------------------------------------


def test_a_taken_name_is_found_among_many_new_ones(dep):
    source = 'X = 1\n'
    fresh = [('fresh%d' % i, 1, source) for i in range(_PathNames.FIRST + 4)]
    status, doc = dep.check(*fresh, ('pytest', 1, source))  # installed, not imported
    assert status == 422
    assert "the module name 'pytest' is already taken" in doc['error'], doc
    assert dep.check(*fresh)[0] == 200


def test_path_names_lists_directories_once_and_asks_other_finders(tmp_path, monkeypatch):
    (tmp_path / 'present.py').write_text('')
    (tmp_path / 'pkgdir').mkdir()
    (tmp_path / 'ext.cpython-311-x86_64-linux-gnu.so').write_text('')
    monkeypatch.syspath_prepend(str(tmp_path))

    class Claims:
        @staticmethod
        def find_spec(name, path=None, target=None):
            from importlib.machinery import ModuleSpec
            return ModuleSpec(name, None) if name == 'claimed' else None

    monkeypatch.setattr(sys, 'meta_path', [Claims] + sys.meta_path)
    names = _PathNames()
    names.FIRST = 0
    assert not names.surely_absent('present')
    assert not names.surely_absent('pkgdir')
    assert not names.surely_absent('ext')
    assert not names.surely_absent('claimed')
    assert names.surely_absent('nowhere_to_be_found')
    # An entry that is not a plain directory (a zip file): no shortcut at all.
    monkeypatch.syspath_prepend(str(tmp_path / 'lib.zip'))
    sys.path_importer_cache[str(tmp_path / 'lib.zip')] = object()
    names = _PathNames()
    names.FIRST = 0
    assert not names.surely_absent('nowhere_to_be_found')
