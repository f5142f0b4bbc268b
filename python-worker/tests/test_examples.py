"""The examples in python-worker/examples run as part of the suite, and the README shows
them as they are (README, "Testing a service"), so neither can rot."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import PKG_ROOT

EXAMPLES = os.path.join(PKG_ROOT, 'examples')
README = os.path.join(os.path.dirname(PKG_ROOT), 'README.md')


def _load(name: str):
    # The examples import each other by plain name, as a user's tests next to their
    # services do (pytest puts a test file's folder on sys.path).
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_greeter_tests = _load('test_greeter')


@pytest.mark.parametrize('name', sorted(n for n in vars(_greeter_tests) if n.startswith('test_')))
def test_greeter_example(name):
    getattr(_greeter_tests, name)()


def test_the_example_tests_are_there():
    assert len([n for n in vars(_greeter_tests) if n.startswith('test_')]) == 3


@pytest.mark.parametrize('name', ['greeter.py', 'test_greeter.py'])
def test_the_readme_shows_the_example_files_as_they_are(name):
    with open(README, encoding='utf-8') as f:
        readme = f.read()
    section = readme[readme.index('\n## Testing a service\n'):]
    section = section[:section.index('\n## ', 1)]
    with open(os.path.join(EXAMPLES, name), encoding='utf-8') as f:
        source = f.read()
    assert '```python\n' + source + '```\n' in section, (
        'README.md, "Testing a service": its copy of python-worker/examples/%s differs from '
        'the file; paste the file in again' % name)


def test_the_readmes_command_runs_the_example_tests():
    # As the README says, from the repository's root, with only the package on the path;
    # a collection warning (pytest taking TestClient for a test class) is an error here.
    root = os.path.dirname(PKG_ROOT)
    env = dict(os.environ, PYTHONPATH='python-worker')
    run = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                          '-W', 'error::pytest.PytestCollectionWarning',
                          'python-worker/examples'], cwd=root, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert '3 passed' in run.stdout
