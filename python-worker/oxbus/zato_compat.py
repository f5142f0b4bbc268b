"""Zato's import names for deployed modules: ``from zato.server.service import Service``.

Services written against Zato 3.2's documented API import from ``zato.*``. This module maps
those names onto the Oxbus package, so such modules deploy unchanged and nothing has to be
installed: ``zato.server.service`` (:mod:`oxbus._zato_service`), ``zato.common.exception``
(:mod:`oxbus._zato_exception`), ``zato.common.typing_`` (:mod:`oxbus._zato_typing`),
``zato.common.api`` and ``zato.common.json_internal`` (:mod:`oxbus._zato_api`), and the
packages above them. docs/ZATO.md lists what each offers and what it does not.

:func:`install` puts a finder at the *end* of ``sys.meta_path``: it answers only for those
names and only when no installed package did, so a real ``zato`` distribution, if one is
installed, still wins. ``import oxbus`` installs it, so the worker and a unit test that
imports ``oxbus`` both see the names.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Optional

__all__ = ['install', 'MODULES']

#: Zato module name -> the Oxbus module whose public names it offers (None: a package).
MODULES: Dict[str, Optional[str]] = {
    'zato': None,
    'zato.server': None,
    # A package that also offers zato.common.api's names, as Zato's __init__ re-exports them.
    'zato.common': 'oxbus._zato_api',
    'zato.server.service': 'oxbus._zato_service',
    'zato.common.exception': 'oxbus._zato_exception',
    'zato.common.typing_': 'oxbus._zato_typing',
    'zato.common.api': 'oxbus._zato_api',
    'zato.common.json_internal': 'oxbus._zato_api',
}


class _ZatoFinder:
    """A meta path finder and loader for the names in :data:`MODULES`."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in MODULES:
            return None
        from importlib.machinery import ModuleSpec
        package = MODULES[name] is None or any(m.startswith(name + '.') for m in MODULES)
        # This finder is the loader too (duck-typed, not an importlib.abc.Loader).
        spec = ModuleSpec(name, self, is_package=package)  # type: ignore[arg-type]
        if package:
            spec.submodule_search_locations = []
        return spec

    def create_module(self, spec: Any) -> Any:
        return None  # the default module object

    def exec_module(self, module: Any) -> None:
        source = MODULES[module.__name__]
        if source is None:
            module.__doc__ = 'Zato compatibility package of Oxbus (oxbus.zato_compat).'
            return
        import importlib
        target = importlib.import_module(source)
        names = getattr(target, '__all__', None) or [n for n in vars(target)
                                                     if not n.startswith('_')]
        for n in names:
            setattr(module, n, getattr(target, n))
        module.__doc__ = target.__doc__
        module.__all__ = list(names)

    def __repr__(self) -> str:
        return '<oxbus zato compatibility finder>'


_finder = _ZatoFinder()


def install() -> None:
    """Put the finder at the end of ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _ZatoFinder) for f in sys.meta_path):
        sys.meta_path.append(_finder)
