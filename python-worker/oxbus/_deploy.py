"""Hot deployment: the supervisor's ``modules.check``, ``modules.activate`` and ``modules.remove``.

``ipc-protocol/SPEC.md`` ("Hot deployment") is the authority. In short: service modules
deployed through the admin API arrive as source code in the body of a ``CALL``; the worker
compiles and executes them in fresh module objects, collects their services and either
throws everything away again (check) or switches to them (activate).

Design:

* A *unit* is what a deploy replaces or removes by name: a deployed module (``crm.util``),
  or a top-level module or package of ``services_dir`` loaded at startup (a package owns
  its submodules). Every service in the table belongs to exactly one unit.
* The modules of one call are executed through the ordinary import system with a
  temporary meta-path finder in front of every other. ``import crm.util`` from another
  module of the same call therefore executes ``crm.util`` on demand, whatever the order of
  the list, and import cycles behave exactly as they do for files.
* Everything the call touches in ``sys.modules`` (its names, the modules of the units it
  replaces, synthetic parent packages, the parent's attribute for the child) is recorded
  first and put back exactly after a check or a failed activate.
* A successful activate switches the dispatcher's service table with one reference
  assignment: ``Dispatcher.run`` reads ``self.services`` once per call, so an invocation
  that already holds an old class finishes on it (its functions keep the old module's
  globals) and every later one gets the new class.
* One lock serialises all three ops, so two deploys never interleave.

These ops run like a slow ``def handle``: on the leader until the watchdog hands the
socket to another thread, then to completion. Nothing here is on the hot path.
"""

from __future__ import annotations

import os
import sys
import threading
import types

from ._protocol import encode_json, encode_reply
from ._runtime import add_services, service_info, services_of
from .service import Service

TYPE_CHECKING = False  # see _protocol.py
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Type

__all__ = ['Deployer']

_MISSING: Any = object()
_JSON_META = {'content_type': 'application/json'}
OPS = ('modules.check', 'modules.activate', 'modules.remove')


class _Refused(Exception):
    """The op is answered with ``status`` and the JSON ``doc``; nothing has changed."""

    def __init__(self, status: int, doc: Dict[str, Any]) -> None:
        super().__init__(doc.get('error'))
        self.status = status
        self.doc = doc


def _filename(name: str, version: Any) -> str:
    # Shown in tracebacks; angle brackets mark it as not a file, like "<stdin>".
    return '<oxbus:%s@v%s>' % (name, version)


class _CallImporter:
    """Meta-path finder and loader for the modules of one check/activate call.

    Serves only the call's own names and only while the call runs; each module gets a
    fresh module object (no ``__file__``; ``__oxbus_version__`` set before its code runs).
    The first module whose execution fails is remembered with a traceback that starts at
    its own code, not in this file or importlib.
    """

    def __init__(self, codes: Dict[str, Tuple[Any, Any, str]], packages: Set[str]) -> None:
        self.codes = codes          # name -> (code object, version, filename)
        self.packages = packages    # names that need __path__ (a deployed child exists)
        self.modules: Dict[str, types.ModuleType] = {}
        self.failed: Optional[Tuple[str, str]] = None   # (module, traceback)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        entry = self.codes.get(fullname)
        if entry is None:
            return None
        from importlib.machinery import ModuleSpec
        # No has_location: the module gets no __file__ (there is no file).
        return ModuleSpec(fullname, self, origin=entry[2],
                          is_package=fullname in self.packages)

    def create_module(self, spec: Any) -> Optional[types.ModuleType]:
        return None  # the default: a fresh module object

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__
        code, version, _origin = self.codes[name]
        module.__oxbus_version__ = version  # type: ignore[attr-defined]
        self.modules[name] = module
        try:
            exec(code, module.__dict__)
        except BaseException as e:
            if self.failed is None:  # the innermost failure is the interesting one
                import traceback
                tb = e.__traceback__
                # Skip this frame: the traceback starts at the module's own code.
                self.failed = (name, ''.join(traceback.format_exception(
                    type(e), e, tb.tb_next if tb is not None else None)))
            raise


class Deployer:
    """The worker's deployed modules and the three ops that change them."""

    def __init__(self, worker: Any, units: Dict[str, List[str]]) -> None:
        self._worker = worker
        self._lock = threading.Lock()
        # unit -> the sys.modules names it owns; module name -> its unit.
        self._units: Dict[str, List[str]] = {u: list(m) for u, m in units.items()}
        self._module_unit: Dict[str, str] = {m: u for u, ms in units.items() for m in ms}
        # Empty packages made up for the parents of deployed dotted names (``crm`` of
        # ``crm.util`` when nobody deployed ``crm``).
        self._parents: Set[str] = set()

    def ops(self) -> Dict[str, Callable[[int, Dict[str, Any], bytes], bytes]]:
        """The Dispatcher.ops entries this deployer answers."""
        return dict.fromkeys(OPS, self.handle)

    # -- entry point -------------------------------------------------------------------

    def handle(self, stream: int, meta: Dict[str, Any], body: bytes) -> bytes:
        """Run one op; return its REPLY frame. Never raises."""
        op = meta.get('op')
        try:
            with self._lock:
                if op == 'modules.remove':
                    doc = self._remove(meta, body)
                else:
                    doc = self._deploy(meta, body, activate=op == 'modules.activate')
            status = 200
        except _Refused as e:
            status, doc = e.status, e.doc
        except BaseException:  # a bug here must not take the worker down
            import logging
            logging.getLogger('oxbus.worker').exception('%s failed', op)
            status, doc = 500, {'error': 'internal error'}
        return encode_reply(stream, dict(_JSON_META, status=status), encode_json(doc))

    # -- the ops -----------------------------------------------------------------------

    def _table(self) -> Dict[str, Any]:
        services = self._worker.dispatcher.services
        return {'services': [service_info(cls) for cls in services.values()]}

    def _unit_of(self, cls: Type[Service]) -> Optional[str]:
        return self._module_unit.get(cls.__module__)

    def _deploy(self, meta: Dict[str, Any], body: bytes, activate: bool) -> Dict[str, Any]:
        listed = self._parse(meta, body)
        names = [name for name, _v, _s in listed]
        for name in names:
            self._check_name(name)

        import linecache
        # Compile everything first: a syntax error anywhere means nothing gets executed.
        codes: Dict[str, Tuple[Any, Any, str]] = {}
        saved_lines: Dict[str, Any] = {}
        try:
            for name, version, source in listed:
                filename = _filename(name, version)
                saved_lines[filename] = linecache.cache.get(filename, _MISSING)
                # mtime None: linecache.checkcache() leaves the entry alone (no file).
                linecache.cache[filename] = (len(source), None, source.splitlines(True),
                                             filename)
                try:
                    codes[name] = (compile(source, filename, 'exec', dont_inherit=True),
                                   version, filename)
                except (SyntaxError, ValueError) as e:  # ValueError: a NUL byte
                    import traceback
                    raise _Refused(422, {'error': 'import failed', 'module': name,
                                         'traceback': ''.join(
                                             traceback.format_exception_only(type(e), e))})
            result = self._execute(names, codes, activate)
        except BaseException:
            _restore_lines(linecache, saved_lines)
            raise
        if not activate:
            _restore_lines(linecache, saved_lines)
        return result

    def _execute(self, names: List[str], codes: Dict[str, Tuple[Any, Any, str]],
                 activate: bool) -> Dict[str, Any]:
        modules = sys.modules
        replaced = [n for n in names if n in self._units]
        # Everything this call may change in sys.modules, as it is now.
        displaced = set(names)
        for unit in replaced:
            displaced.update(self._units[unit])
        new_parents = []
        for name in names:
            parts = name.split('.')
            for i in range(1, len(parts)):
                parent = '.'.join(parts[:i])
                if parent not in modules and parent not in codes and parent not in new_parents:
                    new_parents.append(parent)
        saved = {n: modules.get(n, _MISSING) for n in displaced.union(new_parents)}
        # A child import sets an attribute on its parent package; remember the old one.
        parent_attrs = []
        for name in names:
            parent, _, child = name.rpartition('.')
            if parent and parent in modules and parent not in displaced:
                parent_attrs.append((modules[parent], child,
                                     getattr(modules[parent], child, _MISSING)))
        # A deployed name with deployed children must be a package for them to import.
        deployed = set(self._module_unit).union(names)
        packages = {n for n in names if any(d.startswith(n + '.') for d in deployed)}

        importer = _CallImporter(codes, packages)
        ok = False
        try:
            for name in displaced:
                modules.pop(name, None)
            for parent in new_parents:
                modules[parent] = _synthetic_package(parent)
            sys.meta_path.insert(0, importer)
            try:
                import importlib
                for name in names:
                    if name not in importer.modules:
                        importlib.import_module(name)
            except (Exception, SystemExit) as e:
                failed = importer.failed
                if failed is None:  # failed outside any module's code (a parent import...)
                    import traceback
                    failed = (name, ''.join(traceback.format_exception_only(type(e), e)))
                raise _Refused(422, {'error': 'import failed', 'module': failed[0],
                                     'traceback': failed[1]}) from None
            finally:
                sys.meta_path.remove(importer)

            found: Dict[str, Type[Service]] = {}
            owner: Dict[str, str] = {}
            failures: List[str] = []
            for name in names:
                for cls in services_of(importer.modules[name], name):
                    add_services(found, [cls], failures)
                    owner.setdefault(cls.name, name)
                    if failures:
                        raise _Refused(422, _duplicate(name, failures[0]))
            current = self._worker.dispatcher.services
            # A listed name may also be a submodule of a services_dir package: its services
            # are replaced too.
            kept = {s: cls for s, cls in current.items()
                    if self._unit_of(cls) not in names and cls.__module__ not in names}
            for service, cls in found.items():
                other = kept.get(service)
                if other is not None:
                    add_services({service: other}, [cls], failures)
                    raise _Refused(422, _duplicate(owner[service], failures[0]))
            if not activate:
                return {'services': [service_info(cls) for cls in found.values()]}

            # -- the switch -------------------------------------------------------------
            if self._worker._loop is None and any(c._oxbus_async for c in found.values()):
                # Before the table switch, or the leader would run the first call of an
                # async service on a thread.
                self._worker.start_loop()
            for name in names:
                new = importer.modules[name]
                # A module that swapped itself out of sys.modules keeps the object it put
                # there, as a plain import would.
                modules.setdefault(name, new)
                for other in deployed:  # existing children stay reachable as attributes
                    if other.rpartition('.')[0] == name and other in modules:
                        setattr(new, other.rpartition('.')[2], modules[other])
            for unit in replaced:
                for module in self._units.pop(unit):
                    self._module_unit.pop(module, None)
            for name in names:
                previous = self._module_unit.get(name)
                if previous is not None and previous != name:
                    self._units[previous].remove(name)  # now a unit of its own
                self._units[name] = [name]
                self._module_unit[name] = name
                self._parents.discard(name)
            self._parents.update(new_parents)
            table = dict(kept)
            table.update(found)
            self._worker.dispatcher.services = table  # the one-step switch
            ok = True
            return self._table()
        finally:
            if not ok:
                _restore_modules(saved)
                for parent_module, child, value in parent_attrs:
                    _restore_attr(parent_module, child, value)

    def _remove(self, meta: Dict[str, Any], body: bytes) -> Dict[str, Any]:
        names = meta.get('modules')
        if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                or body):
            raise _Refused(400, {'error': 'modules.remove wants "modules": [names] and no '
                                          'body'})
        gone = [n for n in names if n in self._units]
        if not gone:
            return self._table()
        current = self._worker.dispatcher.services
        table = {s: cls for s, cls in current.items() if self._unit_of(cls) not in gone}
        self._worker.dispatcher.services = table  # the one-step switch
        modules = sys.modules
        for unit in gone:
            for name in self._units.pop(unit):
                self._module_unit.pop(name, None)
                module = modules.pop(name, None)
                parent, _, child = name.rpartition('.')
                if module is not None and parent in modules and \
                        getattr(modules[parent], child, None) is module:
                    _restore_attr(modules[parent], child, _MISSING)
        # A removed package may leave deployed children behind: give them a made-up parent.
        for name in sorted(self._module_unit):
            parts = name.split('.')
            for i in range(1, len(parts)):
                parent = '.'.join(parts[:i])
                if parent not in modules:
                    modules[parent] = _synthetic_package(parent)
                    self._parents.add(parent)
                    if i > 1:
                        setattr(modules['.'.join(parts[:i - 1])], parts[i - 1],
                                modules[parent])
                if i == len(parts) - 1 and name in modules:
                    _restore_attr(modules[parent], parts[-1], modules[name])
        # Made-up parents with nothing deployed under them any more go too, deepest first.
        for parent in sorted(self._parents, key=len, reverse=True):
            if not any(m.startswith(parent + '.') for m in self._module_unit) and \
                    not any(p.startswith(parent + '.') for p in self._parents):
                self._parents.discard(parent)
                modules.pop(parent, None)
        return self._table()

    # -- validation --------------------------------------------------------------------

    def _parse(self, meta: Dict[str, Any], body: bytes) -> List[Tuple[str, Any, str]]:
        """(name, version, source) of every listed module; 400 on a malformed call."""
        listed = meta.get('modules')
        if not isinstance(listed, list):
            raise _Refused(400, {'error': '"modules" must be a list'})
        result: List[Tuple[str, Any, str]] = []
        seen: Set[str] = set()
        offset = 0
        for entry in listed:
            name = entry.get('name') if isinstance(entry, dict) else None
            size = entry.get('size') if isinstance(entry, dict) else None
            if (not isinstance(name, str) or not isinstance(size, int)
                    or isinstance(size, bool) or size < 0):
                raise _Refused(400, {'error': 'each module needs a "name" string and a '
                                              '"size" >= 0, got %s' % (entry,)})
            if name in seen:
                raise _Refused(400, {'error': 'module %s is listed twice' % name,
                                     'module': name})
            seen.add(name)
            chunk = body[offset:offset + size]
            offset += size
            if len(chunk) != size:
                raise _Refused(400, {'error': 'the body is shorter than the module sizes '
                                              'add up to', 'module': name})
            try:
                source = bytes(chunk).decode('utf-8')
            except UnicodeDecodeError as e:
                raise _Refused(422, {'error': 'import failed', 'module': name,
                                     'traceback': 'the source is not UTF-8: %s' % e}) from None
            result.append((name, entry.get('version'), source))
        if offset != len(body):
            raise _Refused(400, {'error': 'the body is longer than the module sizes add up to'})
        return result

    def _ours(self, name: str) -> bool:
        return name in self._module_unit or name in self._parents

    def _check_name(self, name: str) -> None:
        """Refuse a name that is not a module name, or that belongs to someone else."""
        import keyword
        parts = name.split('.')
        if not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
            raise _Refused(422, {'error': 'invalid module name %r: it must be a dotted Python '
                                          'identifier' % name, 'module': name})
        for i in range(1, len(parts) + 1):
            prefix = '.'.join(parts[:i])
            if self._ours(prefix):
                continue
            taken = self._taken_by(prefix)
            if taken:
                what = 'the module name' if prefix == name else 'its parent package'
                raise _Refused(422, {
                    'error': '%s %r is already taken by %s, which is not an oxbus service '
                             'module; rename the module' % (what, prefix, taken),
                    'module': name})

    @staticmethod
    def _taken_by(name: str) -> Optional[str]:
        """What else answers ``import name`` (loaded or not), or None."""
        existing = sys.modules.get(name)
        if existing is not None:
            return getattr(existing, '__file__', None) or 'a built-in module'
        if '.' in name:
            return None  # its parent is ours or new (checked first): nothing else can answer
        # sys.stdlib_module_names is 3.10+; on 3.9 find_spec below finds the stdlib anyway.
        if (name in getattr(sys, 'stdlib_module_names', ())
                or name in sys.builtin_module_names):
            return 'the standard library'
        try:
            import importlib.util
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        origin = spec.origin or ''
        if origin and _in_stdlib_dir(origin):
            return 'the standard library'  # 3.9: no sys.stdlib_module_names
        return origin or 'an installed package'


def _in_stdlib_dir(path: str) -> bool:
    """True for a file of the interpreter's own library (not its site-packages)."""
    import sysconfig
    paths = sysconfig.get_paths()
    stdlib = os.path.join(os.path.realpath(paths['stdlib']), '')
    real = os.path.realpath(path)
    return (real.startswith(stdlib)
            and not any(real.startswith(os.path.join(os.path.realpath(paths[k]), ''))
                        for k in ('purelib', 'platlib')))


def _synthetic_package(name: str) -> types.ModuleType:
    """An empty package standing in for the parent of a deployed dotted module name."""
    from importlib.machinery import ModuleSpec
    module = types.ModuleType(name, 'parent package of deployed oxbus modules')
    module.__path__ = []  # type: ignore[attr-defined]
    module.__package__ = name
    module.__spec__ = ModuleSpec(name, None, is_package=True)
    return module


def _duplicate(module: str, message: str) -> Dict[str, Any]:
    return {'error': message, 'module': module, 'traceback': message}


def _restore_modules(saved: Dict[str, Any]) -> None:
    modules = sys.modules
    for name, module in saved.items():
        if module is _MISSING:
            modules.pop(name, None)
        else:
            modules[name] = module


def _restore_attr(obj: Any, attr: str, value: Any) -> None:
    try:
        if value is _MISSING:
            if attr in vars(obj):
                delattr(obj, attr)
        else:
            setattr(obj, attr, value)
    except (AttributeError, TypeError):
        pass  # a module that forbids it; nothing more we can do


def _restore_lines(linecache: Any, saved: Dict[str, Any]) -> None:
    for filename, entry in saved.items():
        if entry is _MISSING:
            linecache.cache.pop(filename, None)
        else:
            linecache.cache[filename] = entry
