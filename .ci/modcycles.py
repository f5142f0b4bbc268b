#!/usr/bin/env python3
"""Fails (exit 1) when the supervisor's top-level modules import each other in a cycle.

A top-level module is a file or folder directly under `supervisor/src` (`edge/`, `store/`,
`config.rs`, ...). Module A depends on module B when any file under A names `crate::B`
(in a `use`, a path or a doc link; comments other than doc links are ignored). The layer
rules in ARCHITECTURE.md say which way each edge may go; this check enforces the part of
them that a machine can: no cycles. Usage: `python3 .ci/modcycles.py [--graph]`.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "supervisor", "src")
SKIP = {"lib.rs", "main.rs"}  # the crate roots wire modules together; they are not modules


def top_modules():
    mods = {}
    for entry in sorted(os.listdir(ROOT)):
        path = os.path.join(ROOT, entry)
        if entry in SKIP:
            continue
        if os.path.isdir(path):
            files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".rs")]
            mods[entry] = files
        elif entry.endswith(".rs"):
            mods[entry[:-3]] = [path]
    return mods


LINE_COMMENT = re.compile(r"^\s*//(?![/!])")
REF = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")


def deps(files, names):
    out = {}
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if LINE_COMMENT.match(line):
                    continue
                for m in REF.finditer(line):
                    if m.group(1) in names:
                        out.setdefault(m.group(1), f"{os.path.relpath(f, ROOT)}:{n}")
    return out


def find_cycle(graph):
    color = {n: 0 for n in graph}
    stack = []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if color[m] == 1:
                return stack[stack.index(m):] + [m]
            if color[m] == 0:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        color[n] = 2
        return None

    for n in sorted(graph):
        if color[n] == 0:
            c = visit(n)
            if c:
                return c
    return None


def main():
    mods = top_modules()
    names = set(mods)
    graph, where = {}, {}
    for name, files in mods.items():
        d = deps(files, names)
        d.pop(name, None)
        graph[name] = set(d)
        for dep, loc in d.items():
            where[(name, dep)] = loc
    if "--graph" in sys.argv:
        for n in sorted(graph):
            print(f"{n} -> {', '.join(sorted(graph[n])) or '(nothing)'}")
    cycle = find_cycle(graph)
    if cycle:
        print("import cycle between the supervisor's top-level modules:", file=sys.stderr)
        for a, b in zip(cycle, cycle[1:]):
            print(f"  {a} -> {b}   (first at supervisor/src/{where[(a, b)]})", file=sys.stderr)
        return 1
    print(f"supervisor modules: no import cycle ({len(graph)} modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
