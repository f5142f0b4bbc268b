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
* Compiling is most of the cost of a deploy (the check worker and then every worker import
  the same sources; a starting worker imports every stored module). :class:`CodeCache`
  keeps the compiled code on disk, content-addressed, so that one worker compiles a source
  and the others (and later starts) load it with ``marshal``.
* The source lines of an active module stay in ``linecache`` for tracebacks; they leave it
  when the module is replaced or removed (code of an old version that still runs shows
  tracebacks without source lines).

These ops run like a slow ``def handle``: on the leader until the watchdog hands the
socket to another thread, then to completion. Nothing here is on the hot path.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import types

from ._protocol import encode_json, encode_reply
from ._loader import add_services, deploy_warnings, service_info, services_of
from .service import Service

TYPE_CHECKING = False  # see _protocol.py
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Type

__all__ = ['Deployer']

_MISSING: Any = object()
_JSON_META = {'content_type': 'application/json'}
OPS = ('modules.check', 'modules.activate', 'modules.remove')

#: An activate or remove that replaces or drops at least this many modules is followed by
#: a full garbage collection, once its reply is out: the old versions are reference
#: cycles (classes, functions and module dicts), and until the collector's oldest
#: generation comes round several of them would pile up (measured: 1000 one-service
#: modules redeployed 8 times held ~44 KB per service per worker instead of ~23 KB).
COLLECT_AFTER = 64

#: The environment variable that names the code cache directory (the supervisor sets it; a
#: worker without it compiles every time).
CODE_CACHE_ENV = 'OXBUS_CODE_CACHE'


class _Refused(Exception):
    """The op is answered with ``status`` and the JSON ``doc``; nothing has changed."""

    def __init__(self, status: int, doc: Dict[str, Any]) -> None:
        super().__init__(doc.get('error'))
        self.status = status
        self.doc = doc


def _filename(name: str, version: Any, origin: Optional[str] = None) -> str:
    """The file name a deployed module is compiled under: the file its deployer read
    (``origin``: ``oxbus deploy``'s file, the pickup directory's), so that tracebacks and
    ``__file__`` name it; without one, a made-up name in angle brackets (not a file, like
    ``<stdin>``)."""
    if origin:
        return origin
    return '<oxbus:%s@v%s>' % (name, version)


class _CallImporter:
    """Meta-path finder and loader for the modules of one check/activate call.

    Serves only the call's own names and only while the call runs; each module gets a
    fresh module object (``__file__`` the file it was deployed from, when the deploy named
    one, else none; ``__oxbus_version__`` set before its code runs).
    The first module whose execution fails is remembered with a traceback that starts at
    its own code, not in this file or importlib.
    """

    def __init__(self, codes: Dict[str, Tuple[Any, Any, str]], packages: Set[str]) -> None:
        # Both emptied when the call ends (see Deployer._execute).
        self.codes = codes          # name -> (code object, version, filename)
        self.packages = packages    # names that need __path__ (a deployed child exists)
        self.modules: Dict[str, types.ModuleType] = {}
        self.failed: Optional[Tuple[str, str]] = None   # (module, traceback)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        entry = self.codes.get(fullname)
        if entry is None:
            return None
        from importlib.machinery import ModuleSpec
        # No has_location: the module gets no __file__ (there is no file). The loader is
        # this finder itself (create_module, exec_module), duck-typed, not an
        # importlib.abc.Loader subclass.
        return ModuleSpec(fullname, self, origin=entry[2],  # type: ignore[arg-type]
                          is_package=fullname in self.packages)

    def create_module(self, spec: Any) -> Optional[types.ModuleType]:
        return None  # the default: a fresh module object

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__
        entry = self.codes.get(name)
        if entry is None:  # importlib.reload() after the call: the code is gone
            raise ImportError('deployed module %s cannot be reloaded; deploy it again' % name,
                              name=name)
        code, version, filename = entry
        module.__oxbus_version__ = version  # type: ignore[attr-defined]
        if not filename.startswith('<'):  # a real path: resources next to the code work
            module.__file__ = filename
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


class CodeCache:
    """Compiled deployed modules on disk, shared by the workers of a server and its restarts.

    A deploy imports the same sources in the checking worker and then in every worker, and a
    starting worker imports every stored module; compiling is most of that work, and
    ``marshal.loads`` of the result costs a few percent of it. So a call that compiled
    anything writes one *pack*: ``marshal.dumps`` of ``{key: code object}`` for every module
    of the call, where a module's key is the SHA-256 of the interpreter's bytecode magic
    number, its optimisation level and the source (a code object can only ever be found for
    exactly that source and a compatible interpreter). The pack is named after the SHA-256
    of its sorted keys, so the ``modules.activate`` that follows a ``modules.check`` of the
    same sources, in every worker, finds it with one read; an activate that finds no such
    pack (a starting worker loads every stored module at once) looks through the others.
    (One file per call rather than per module: creating a file costs 0.1-1 ms on the
    machines measured, a read of a pack of 1000 modules a few ms.)

    Tracebacks name ``<oxbus:NAME@vVERSION>``; the version is not part of the key (a check
    does not know it yet) and is put into the loaded code objects instead. Packs are written
    under a temporary name and renamed into place; one that does not load is ignored and the
    sources are compiled again. Only code that passed a check or an activation is written.
    The newest ``keep`` packs stay (a pack that is read counts as new), older ones are
    deleted when a pack is written. The directory is the server's (created 0700): whoever
    can write to it can already change the ``oxbus`` package the workers run.
    """

    #: Calls with less source than this leave the cache alone: compiling a few KB costs
    #: less than creating a file (0.1-1 ms, in the checking worker, before anything else
    #: can go on), however many workers compile it again.
    MIN_BYTES = 8192

    def __init__(self, directory: Optional[str], keep: int = 16,
                 min_bytes: int = MIN_BYTES) -> None:
        self.directory = directory or None
        self.keep = keep
        self.min_bytes = min_bytes
        self._prefix = b''

    @classmethod
    def from_env(cls) -> 'CodeCache':
        import os
        return cls(os.environ.get(CODE_CACHE_ENV))

    def key(self, source: str) -> str:
        if not self._prefix:
            from importlib.util import MAGIC_NUMBER
            self._prefix = MAGIC_NUMBER + bytes((sys.flags.optimize,))
        import hashlib
        return hashlib.sha256(self._prefix + source.encode('utf-8', 'surrogatepass')
                              ).hexdigest()

    def _path(self, keys: List[str]) -> str:
        import hashlib
        pack = hashlib.sha256(''.join(sorted(set(keys))).encode('ascii')).hexdigest()
        return '%s/%s.pack' % (self.directory, pack)

    def load(self, keys: List[str], search: bool = False
             ) -> Tuple[Dict[str, types.CodeType], bool]:
        """The code objects for ``keys`` (key -> code; some or all may be missing), and
        whether they came from the pack of exactly these keys. With ``search``, when that
        pack is missing the other packs are searched too, newest first: a starting worker
        gets every stored module in one call, which no deploy may have sent as such."""
        if self.directory is None or not keys:
            return {}, False
        exact = self._path(keys)
        found = self._read(exact)
        if found or not search:
            return found, bool(found)
        import os
        wanted = set(keys)
        try:
            packs = sorted(((e.stat().st_mtime, e.path) for e in os.scandir(self.directory)
                            if e.name.endswith('.pack')), reverse=True)
        except OSError:
            return {}, False
        for _mtime, path in packs:
            for key, code in self._read(path).items():
                if key in wanted:
                    found[key] = code
            if len(found) == len(wanted):
                break
        return found, False

    @staticmethod
    def _read(path: str) -> Dict[str, types.CodeType]:
        import marshal
        import os
        try:
            with open(path, 'rb') as f:
                pack = marshal.loads(f.read())
            os.utime(path)  # recently used: spared by pruning
        except (OSError, EOFError, ValueError, TypeError):
            return {}
        if not isinstance(pack, dict):
            return {}
        return {k: c for k, c in pack.items()
                if isinstance(k, str) and isinstance(c, types.CodeType)}

    def store(self, codes: Dict[str, types.CodeType]) -> None:
        """Write the pack of ``codes`` (key -> code object); errors only cost speed."""
        if self.directory is None or not codes:
            return
        import marshal
        import os
        path = self._path(list(codes))
        tmp = '%s.%d.%d.tmp' % (path, os.getpid(), threading.get_ident())
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            # 0600 whatever the worker's umask (the operator's): this is compiled code of
            # the store's modules, as private as the store itself.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, 'wb') as f:
                f.write(marshal.dumps(codes))
            os.replace(tmp, path)
        except (OSError, ValueError):
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        self._prune()

    def _prune(self) -> None:
        import os
        import time
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return
        packs = []
        now = time.time()
        for e in entries:
            try:
                mtime = e.stat().st_mtime
            except OSError:
                continue
            if e.name.endswith('.pack'):
                packs.append((mtime, e.path))
            elif e.name.endswith('.tmp') and now - mtime > 3600:  # left by a crash
                packs.append((0.0, e.path))
        packs.sort(reverse=True)
        for _mtime, path in packs[self.keep:]:
            try:
                os.unlink(path)
            except OSError:
                pass


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    """``code`` and every code object nested in it, with ``co_filename`` = ``filename``."""
    if code.co_filename == filename:
        return code
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


class Deployer:
    """The worker's deployed modules and the three ops that change them."""

    def __init__(self, worker: Any, units: Dict[str, List[str]],
                 cache: Optional[CodeCache] = None) -> None:
        self._worker = worker
        self._cache = cache if cache is not None else CodeCache.from_env()
        # Deployed module name -> the traceback filename of its active version, whose
        # source lines are in linecache.
        self._filenames: Dict[str, str] = {}
        # Traceback filename -> the deployed modules whose active version has it: two
        # modules deployed (one after the other) from one file share its linecache entry,
        # which goes when the last of them does.
        self._line_users: Dict[str, Set[str]] = {}
        # Deployed module name -> the linecache entry of its active version's source: put
        # back when another module of the same file name leaves.
        self._line_entries: Dict[str, Any] = {}
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
        # A deploy allocates tens of thousands of objects (classes, functions, dicts), which
        # would set off several collections of every generation, each walking the whole
        # heap; the garbage of a replaced version is collected after, as usual.
        gc_was_enabled = gc.isenabled()
        gc.disable()
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
        finally:
            if gc_was_enabled:
                gc.enable()
        return encode_reply(stream, dict(_JSON_META, status=status), encode_json(doc))

    # -- the ops -----------------------------------------------------------------------

    def _table(self) -> Dict[str, Any]:
        services = self._worker.dispatcher.services
        return {'services': [service_info(cls) for cls in services.values()]}

    def _unit_of(self, cls: Type[Service]) -> Optional[str]:
        return self._module_unit.get(cls.__module__)

    def _deploy(self, meta: Dict[str, Any], body: bytes, activate: bool) -> Dict[str, Any]:
        listed = self._parse(meta, body)
        names = [entry[0] for entry in listed]
        path_names = _PathNames()
        for name in names:
            self._check_name(name, path_names)

        import linecache
        # Compile everything first: a syntax error anywhere means nothing gets executed.
        codes: Dict[str, Tuple[Any, Any, str]] = {}
        cache = self._cache
        if cache.directory is not None and \
                sum(len(entry[2]) for entry in listed) >= cache.min_bytes:
            keys = [cache.key(entry[2]) for entry in listed]
            # A check is of new code (nothing to search for); an activate follows a check
            # of the same sources, or loads a new worker, whose modules may be in several
            # packs.
            cached, exact = cache.load(keys, search=activate)
        else:
            keys, cached, exact = [], {}, False
        compiled = False
        saved_lines: Dict[str, Any] = {}
        try:
            for i, (name, version, source, origin) in enumerate(listed):
                filename = _filename(name, version, origin)
                saved_lines[filename] = linecache.cache.get(filename, _MISSING)
                # mtime None: linecache.checkcache() leaves the entry alone (no file).
                linecache.cache[filename] = (len(source), None, source.splitlines(True),
                                             filename)
                code = cached.get(keys[i]) if keys else None
                if code is not None:
                    code = _renamed(code, filename)
                else:
                    try:
                        code = compile(source, filename, 'exec', dont_inherit=True)
                    except (SyntaxError, ValueError) as e:  # ValueError: a NUL byte
                        import traceback
                        raise _Refused(422, {'error': 'import failed', 'module': name,
                                             'traceback': ''.join(
                                                 traceback.format_exception_only(type(e), e))})
                    compiled = True
                codes[name] = (code, version, filename)
            result = self._execute(names, codes, activate)
        except BaseException:
            _restore_lines(linecache, saved_lines)
            raise
        if not activate:
            _restore_lines(linecache, saved_lines)
        if keys and (compiled or not exact):
            # The pack for exactly this call, so that the next worker finds it at once.
            cache.store({key: codes[name][0] for name, key in zip(names, keys)})
        return result

    def _collect_later(self) -> None:
        after_reply = getattr(self._worker, 'after_reply', None)
        if after_reply is not None:
            after_reply(gc.collect)

    def _forget_lines(self, name: str, keep: str = '') -> None:
        """A deployed module leaves (replaced or removed): drop its source lines from
        linecache when no other active module has its file name, unless they are
        ``keep``'s (the same version activated again)."""
        filename = self._filenames.pop(name, None)
        entry = self._line_entries.pop(name, None)
        if filename is None:
            return
        import linecache
        users = self._line_users.get(filename)
        if users is not None:
            users.discard(name)
            if users:
                if filename != keep and linecache.cache.get(filename) is entry:
                    # Its lines were there: another user's go back.
                    linecache.cache[filename] = self._line_entries[min(users)]
                return
            del self._line_users[filename]
        if filename != keep:
            linecache.cache.pop(filename, None)

    def _use_lines(self, name: str, filename: str) -> None:
        """``name``'s active version has ``filename`` (its lines are in linecache)."""
        import linecache
        self._filenames[name] = filename
        self._line_entries[name] = linecache.cache.get(filename)
        self._line_users.setdefault(filename, set()).add(name)

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
        # Indexed by parent rather than searched per name: a deploy of 1000 modules next to
        # 1000 others would otherwise cost a million prefix tests.
        children: Dict[str, List[str]] = {}
        for other in set(self._module_unit).union(names):
            parent = other.rpartition('.')[0]
            while parent:
                children.setdefault(parent, [])
                parent = parent.rpartition('.')[0]
            if '.' in other:
                children[other.rpartition('.')[0]].append(other)
        packages = {n for n in names if n in children}

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
            listed = set(names)
            kept = {s: cls for s, cls in current.items()
                    if self._unit_of(cls) not in listed and cls.__module__ not in listed}
            for service, cls in found.items():
                kept_cls = kept.get(service)
                if kept_cls is not None:
                    add_services({service: kept_cls}, [cls], failures)
                    raise _Refused(422, _duplicate(owner[service], failures[0]))
            if not activate:
                # What the deployer should hear although nothing failed (a class with no
                # handler, a module with no service): the check's answer only.
                warnings = [w for name in names
                            for w in deploy_warnings(importer.modules[name], name)]
                return {'services': [service_info(cls) for cls in found.values()],
                        'warnings': warnings}

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
                for other in children.get(name, ()):  # children stay reachable as attributes
                    if other in modules:
                        setattr(new, other.rpartition('.')[2], modules[other])
            if len(replaced) >= COLLECT_AFTER:
                self._collect_later()
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
                filename = codes[name][2]
                self._forget_lines(name, keep=filename)
                self._use_lines(name, filename)
            self._parents.update(new_parents)
            table = dict(kept)
            table.update(found)
            self._worker.dispatcher.services = table  # the one-step switch
            ok = True
            return self._table()
        finally:
            # Every module of the call has this importer as its __loader__: what it holds
            # would live as long as any of them does, old versions of the others included.
            importer.modules.clear()
            importer.codes = {}
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
        if len(gone) >= COLLECT_AFTER:
            self._collect_later()
        current = self._worker.dispatcher.services
        table = {s: cls for s, cls in current.items() if self._unit_of(cls) not in gone}
        self._worker.dispatcher.services = table  # the one-step switch
        modules = sys.modules
        for unit in gone:
            for name in self._units.pop(unit):
                self._module_unit.pop(name, None)
                self._forget_lines(name)
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

    def _parse(self, meta: Dict[str, Any], body: bytes
               ) -> List[Tuple[str, Any, str, Optional[str]]]:
        """(name, version, source, origin) of every listed module; 400 on a malformed
        call."""
        listed = meta.get('modules')
        if not isinstance(listed, list):
            raise _Refused(400, {'error': '"modules" must be a list'})
        result: List[Tuple[str, Any, str, Optional[str]]] = []
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
            origin = entry.get('origin')
            if origin is not None and (not isinstance(origin, str) or not origin
                                       or origin.startswith('<')):
                raise _Refused(400, {'error': 'module %s: "origin" must be a file path, got '
                                              '%r' % (name, origin), 'module': name})
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
            result.append((name, entry.get('version'), source, origin))
        if offset != len(body):
            raise _Refused(400, {'error': 'the body is longer than the module sizes add up to'})
        return result

    def _ours(self, name: str) -> bool:
        return name in self._module_unit or name in self._parents

    def _check_name(self, name: str, path_names: Optional[_PathNames] = None) -> None:
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
            taken = self._taken_by(prefix, path_names)
            if taken:
                what = 'the module name' if prefix == name else 'its parent package'
                raise _Refused(422, {
                    'error': '%s %r is already taken by %s, which is not an oxbus service '
                             'module; rename the module' % (what, prefix, taken),
                    'module': name})

    @staticmethod
    def _taken_by(name: str, path_names: Optional[_PathNames] = None) -> Optional[str]:
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
        if path_names is not None and path_names.surely_absent(name):
            return None
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


class _PathNames:
    """Which top-level names ``sys.path`` may offer, listed once per call.

    ``importlib.util.find_spec`` asks every finder on ``sys.meta_path``, and the path finder
    asks the finder of every ``sys.path`` entry, which tries every file suffix: some 0.1 ms
    per name, 0.1 s for a call that brings 1000 new modules (a starting worker does that with
    every stored module). A directory's ``FileFinder`` only ever finds a name that is the
    stem of one of the directory's entries, so one listing per directory rules most names
    out at once; a name that may be there, and every name when some entry or finder is of
    another kind (a zip file, an editable install's finder...), still gets ``find_spec``.
    The first few names of a call get ``find_spec`` anyway: listing site-packages costs
    more than that.
    """

    #: Names asked with find_spec before the directories are listed.
    FIRST = 8

    def __init__(self) -> None:
        self._stems: Optional[Set[str]] = None
        self._others: List[Any] = []  # meta-path finders other than the standard ones
        self._listed = False
        self._asked = 0

    def _list(self) -> Optional[Set[str]]:
        import importlib.machinery as m
        import os
        standard = (m.BuiltinImporter, m.FrozenImporter)
        if m.PathFinder not in sys.meta_path:
            return None
        self._others = [f for f in sys.meta_path
                        if f not in standard and f is not m.PathFinder
                        and not isinstance(f, _CallImporter)]
        stems: Set[str] = set()
        for entry in sys.path:
            if not isinstance(entry, str):
                return None
            entry = entry or os.getcwd()  # what the path finder does with ''
            finder = sys.path_importer_cache.get(entry, _MISSING)
            if finder is _MISSING:  # not seen yet: let the path hooks make its finder
                m.PathFinder.find_spec('_oxbus_no_such_module_', [entry])
                finder = sys.path_importer_cache.get(entry, _MISSING)
            if finder is None:
                continue  # nothing importable there (a missing directory)
            if type(finder) is not m.FileFinder:
                return None  # a zip file, a custom hook: ask find_spec
            try:
                listing = os.listdir(entry)
            except OSError:
                return None
            for item in listing:
                stems.add(item.partition('.')[0].lower())
        return stems

    def surely_absent(self, name: str) -> bool:
        """True when no ``sys.path`` entry can answer ``import name``."""
        self._asked += 1
        if self._asked <= self.FIRST:
            return False
        if not self._listed:
            self._stems = self._list()
            self._listed = True
        if self._stems is None or name.lower() in self._stems:
            return False
        for finder in self._others:  # e.g. setuptools' _distutils_hack: cheap to ask
            try:
                if finder.find_spec(name, None) is not None:
                    return False
            except Exception:  # noqa: BLE001 - someone else's finder: let find_spec judge
                return False
        return True


def _synthetic_package(name: str) -> types.ModuleType:
    """An empty package standing in for the parent of a deployed dotted module name."""
    from importlib.machinery import ModuleSpec
    module = types.ModuleType(name, 'parent package of deployed oxbus modules')
    module.__path__ = []
    module.__package__ = name
    module.__spec__ = ModuleSpec(name, None, is_package=True)
    return module


def _duplicate(module: str, message: str) -> Dict[str, Any]:
    # No traceback: there is none, and clients print a traceback beside the error.
    return {'error': message, 'module': module}


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
