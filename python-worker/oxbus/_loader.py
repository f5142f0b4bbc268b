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
    from typing import Any, Dict, List, Tuple, Type

__all__ = ['ImportFailed', 'load_services', 'load_services_dir', 'services_of', 'add_services',
           'service_info']

class ImportFailed(Exception):
    """The services could not be loaded; the message is what the deployer gets to see."""


def _describe(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    return '%s.%s (%s)' % (cls.__module__, cls.__qualname__,
                           getattr(module, '__file__', None) or '?')


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
            failures.append('duplicate service name %r: %s and %s'
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
