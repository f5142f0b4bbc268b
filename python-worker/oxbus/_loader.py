"""Loading services: importing ``services_dir`` and collecting the services of a module.

Owns the rules both loaders share: which classes of a module are its services
(:func:`services_of`), what a duplicate name is (:func:`add_services`), and the READY entry
that describes a service (:func:`service_info`). The startup loader (:func:`load_services`,
used by :mod:`oxbus._runtime`) and hot deployment (:mod:`oxbus._deploy`) both import it.

It may not touch the socket, the dispatcher or the worker: it only imports modules and
inspects classes, so it must never import ``_runtime`` or ``_deploy``.
"""

from __future__ import annotations

import os
import sys

from .service import Service, describe_input, describe_output

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Dict, List, Set, Tuple, Type

__all__ = ['ImportFailed', 'load_services', 'load_services_dir', 'services_of', 'add_services',
           'service_info', 'deploy_warnings']

class ImportFailed(Exception):
    """The services could not be loaded; the message is what the deployer gets to see."""


def _describe(cls: type) -> str:
    """``module.Class``, and the module's file when it has one (a module deployed without
    an origin path has none: then the module name says it all)."""
    module = sys.modules.get(cls.__module__)
    filename = getattr(module, '__file__', None)
    where = '%s.%s' % (cls.__module__, cls.__qualname__)
    return '%s (%s)' % (where, filename) if filename else where


def load_services(services_dir: str) -> Dict[str, Type[Service]]:
    """Import every ``*.py`` and package in ``services_dir``; return the services by name.

    Every module is attempted even after a failure, so one deploy reports every broken
    file at once. Raises :class:`ImportFailed` with the tracebacks.
    """
    return load_services_dir(services_dir)[0]


def services_of(module: Any, module_name: str) -> List[Type[Service]]:
    """The services a module defines: concrete Service subclasses whose home it is.

    A class merely imported into the module belongs to the module that defines it, so it is
    not counted twice. Shared by the services-dir loader and hot deployment (``_deploy``).
    """
    return [obj for obj in list(vars(module).values())
            if isinstance(obj, type) and issubclass(obj, Service) and obj is not Service
            and obj.__module__ == module_name and not obj._oxbus_abstract]


def add_services(services: Dict[str, Type[Service]], found: List[Type[Service]],
                 failures: List[str]) -> None:
    """Add ``found`` to ``services``, appending a message to ``failures`` for each clash."""
    for cls in found:
        other = services.get(cls.name)
        if other is not None and other is not cls:
            failures.append('duplicate service name %r: class %s and class %s both define '
                            'it; rename one (set its name attribute)'
                            % (cls.name, _describe(other), _describe(cls)))
        services[cls.name] = cls


def load_services_dir(services_dir: str
                       ) -> Tuple[Dict[str, Type[Service]], Dict[str, List[str]]]:
    """:func:`load_services`, plus the ``sys.modules`` names each top-level module owns.

    The second result maps every module or package of the directory to itself and (for a
    package) the submodules its import pulled in: hot deployment may replace or remove
    these by their top-level name, and must then drop all of them.
    """
    import traceback  # needed only on failure; logging imports it anyway

    root = os.path.realpath(services_dir)
    try:
        entries = sorted(os.listdir(root))
    except OSError as e:
        raise ImportFailed('cannot read services_dir %s: %s' % (services_dir, e)) from None
    # First on sys.path, so service modules import each other by their plain names.
    if root not in sys.path:
        sys.path.insert(0, root)

    modules: List[str] = []
    failures: List[str] = []
    for entry in entries:
        path = os.path.join(root, entry)
        if entry.startswith(('.', '__')):
            continue  # hidden files, editor droppings, __pycache__, a stray __init__.py
        if entry.endswith('.py') and os.path.isfile(path):
            name = entry[:-3]
        elif os.path.isfile(os.path.join(path, '__init__.py')):
            name = entry
        else:
            continue
        if not name.isidentifier():
            failures.append('%s: %r is not a valid Python module name' % (path, name))
            continue
        existing = sys.modules.get(name)
        if existing is not None:
            # `import json` would return the stdlib module and the file would be ignored.
            failures.append('%s: the module name %r is already taken by %s; rename the file'
                            % (path, name, getattr(existing, '__file__', None) or 'a built-in'))
            continue
        try:
            __import__(name)
        except (Exception, SystemExit):  # a module may even call sys.exit() on import
            failures.append(traceback.format_exc())
            continue
        modules.append(name)
    if failures:
        raise ImportFailed('\n'.join(failures))

    services: Dict[str, Type[Service]] = {}
    # A package's services may live in its submodules, so every module the import pulled in
    # under that package counts; a class belongs to the module that defines it.
    units: Dict[str, List[str]] = {m: [m] for m in modules}
    prefixes = tuple(m + '.' for m in modules)
    owned = [m for m in list(sys.modules) if m in units or m.startswith(prefixes)]
    for module_name in sorted(owned):
        if module_name not in units:
            units[module_name.partition('.')[0]].append(module_name)
        add_services(services, services_of(sys.modules[module_name], module_name), failures)
    if failures:
        raise ImportFailed('\n'.join(failures))
    return services, units


def service_info(cls: Type[Service]) -> Dict[str, Any]:
    """The READY entry (``ServiceInfo`` in SPEC.md) that describes one service.

    ``input`` and ``output`` are the SimpleIO declarations, left out when there is none
    (an empty declaration behaves as no declaration, so it is left out too).
    """
    info = {'name': cls.name, 'module': cls.__module__, 'class': cls.__qualname__,
            'async': cls._oxbus_async, 'verbs': sorted(cls._oxbus_verbs)}
    if cls._oxbus_input or cls._oxbus_input_model is not None:
        info['input'] = describe_input(cls)
    if cls._oxbus_output or cls._oxbus_output_model is not None:
        info['output'] = describe_output(cls)
    return info


#: Hook names of Service that look like ``handle`` but are not meant as handlers.
_NOT_HANDLERS = frozenset(('handle', 'before_handle', 'after_handle'))

#: The verbs a ``handle_<verb>`` written in the wrong case most likely meant (a helper
#: named ``handle_reply`` is nobody's typo).
_VERBS = frozenset(('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'))


def _near_misses(cls: type, typos: bool) -> List[str]:
    """What the class itself defines that looks like a handler but is not one: a
    ``handle_get`` (an HTTP verb not in upper case) and, with ``typos`` (for a class that
    has no handler at all), a misspelt or miscased ``handle`` (``handel``, ``Handle``)."""
    found = []
    for attr in sorted(vars(cls)):
        value = vars(cls)[attr]
        if not callable(value) and not isinstance(value, (staticmethod, classmethod)):
            continue
        if attr[:7] == 'handle_':
            verb = attr[7:]
            if verb.upper() in _VERBS and not verb.isupper():
                found.append('%s is not a handler: HTTP verbs are upper case (handle_%s)'
                             % (attr, verb.upper()))
        elif typos and attr not in _NOT_HANDLERS and not attr.startswith('_'):
            import difflib
            if difflib.SequenceMatcher(None, attr.lower(), 'handle').ratio() >= 0.8:
                found.append('%s is not a handler: did you mean handle?' % attr)
    return found


def _has_service_subclass(cls: type) -> bool:
    """Whether a class derived from ``cls`` (at any depth) has a handler."""
    todo = list(cls.__subclasses__())
    seen: Set[type] = set()
    while todo:
        sub = todo.pop()
        if sub in seen:
            continue
        seen.add(sub)
        if not getattr(sub, '_oxbus_abstract', True):
            return True
        todo.extend(sub.__subclasses__())
    return False


def deploy_warnings(module: Any, module_name: str) -> List[Dict[str, str]]:
    """What a deploy of ``module`` should be told although nothing fails: each Service
    subclass it defines that has no handler and is not the base of another class of the
    module nor of a service elsewhere (it is then taken as an abstract base and silently not
    deployed), each method
    that looks like a handler but is not one, and a module that defines no service at all.
    One entry per finding: ``{"module", "class"?, "message"}``. Run by a deploy's check,
    never per request.
    """
    classes = [obj for obj in list(vars(module).values())
               if isinstance(obj, type) and issubclass(obj, Service) and obj is not Service
               and obj.__module__ == module_name]
    warnings: List[Dict[str, str]] = []
    bases = False
    for cls in classes:
        where = '%s.%s' % (module_name, cls.__qualname__)
        misses = _near_misses(cls, typos=cls._oxbus_abstract)
        if cls._oxbus_abstract:
            if any(other is not cls and issubclass(other, cls) for other in classes):
                continue  # a base class of services next to it: abstract on purpose
            if _has_service_subclass(cls):
                # The base of services elsewhere (another module of the deploy, or one
                # deployed before against this very class): abstract on purpose.
                bases = True
                continue
            message = ('class %s defines no handler (handle, or handle_GET, handle_POST... '
                       'with an upper-case verb), so it is not a service and was not '
                       'deployed' % where)
            if misses:
                message += ': ' + '; '.join(misses)
        elif misses:
            message = 'service %s (%s): %s' % (cls.name, where, '; '.join(misses))
        else:
            continue
        warnings.append({'module': module_name, 'class': cls.__qualname__,
                         'message': message})
    if not warnings and not bases and not any(not cls._oxbus_abstract for cls in classes):
        warnings.append({'module': module_name,
                         'message': 'module %s defines no services (no class deriving from '
                                    'oxbus.Service with a handle method)' % module_name})
    return warnings
