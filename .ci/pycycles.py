#!/usr/bin/env python3
"""Fails when the modules of the worker package (python-worker/oxbus) import each other in a cycle.

Usage: python3 .ci/pycycles.py [PACKAGE_DIR]   (default: python-worker/oxbus)

Every ``*.py`` of the package is parsed with ``ast``; an edge A -> B is any import of the
package's own module B in A, at module level or inside a function or method (a lazy
import still ties the two modules together). Only the package's own modules count:
relative imports (``from .x import y``, ``from . import x``) and ``oxbus``-absolute ones.
``from . import name`` (or ``from oxbus import name``) is an edge to the module ``name``
when the package has one, else to the package itself (``__init__``). Imports under ``if TYPE_CHECKING:`` are left out: they
are never executed, so they cannot form a cycle at run time.

Exit 0 and a one-line summary when there is no cycle; exit 1 naming every cycle found
(``oxbus._runtime -> oxbus._deploy -> oxbus._runtime``).
"""

import ast
import os
import sys

PACKAGE = 'oxbus'


def _module_name(file_name):
    stem = file_name[:-3]
    return PACKAGE if stem == '__init__' else PACKAGE + '.' + stem


def _is_type_checking(test):
    return ((isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING')
            or (isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING'))


def _imports(tree):
    """Every Import/ImportFrom node of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(node, modules):
    """The package's own modules that one import statement executes."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif node.level > 1:  # the package is flat: nothing above it is ours
        names = []
    else:
        # One dot is the package itself (the package is flat).
        module = node.module if node.level == 0 else PACKAGE + ('.' + node.module
                                                                 if node.module else '')
        if module == PACKAGE:  # `from . import x`: the submodule x, or a name of __init__
            names = [PACKAGE + '.' + alias.name for alias in node.names]
            names = [n if n in modules else PACKAGE for n in names]
        else:
            names = [module]
    found = []
    for name in names:
        # `import oxbus.service.x` or `from .service.x import y` would still run oxbus.service.
        while name and name not in modules:
            name = name.rpartition('.')[0]
        if name and name not in found:
            found.append(name)
    return found


def graph(package_dir):
    files = sorted(f for f in os.listdir(package_dir) if f.endswith('.py'))
    modules = {_module_name(f): os.path.join(package_dir, f) for f in files}
    edges = {}
    for name, path in modules.items():
        with open(path, encoding='utf-8') as fh:
            tree = ast.parse(fh.read(), path)
        out = []
        for node in _imports(tree):
            for target in _targets(node, modules):
                if target != name and target not in out:
                    out.append(target)
        edges[name] = sorted(out)
    return edges


def cycles(edges):
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [_path_in(component, edges) for component in components]


def _path_in(component, edges):
    """A closed path through a component: breadth-first back to its smallest module."""
    start = min(component)
    previous = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in edges[v]:
            if w == start:
                path = [v]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return list(reversed(path)) + [start]
            if w in component and w not in previous:
                previous[w] = v
                queue.append(w)
    raise AssertionError('a strongly connected component has a cycle')


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    package_dir = argv[1] if len(argv) > 1 else os.path.join(root, 'python-worker', PACKAGE)
    edges = graph(package_dir)
    found = cycles(edges)
    for path in found:
        print('pycycles: import cycle: %s' % ' -> '.join(path), file=sys.stderr)
    if found:
        return 1
    print('pycycles: %d modules of %s, no import cycle' % (len(edges), package_dir))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
