#!/usr/bin/env bash
# The whole test suite: Rust (unit, property, golden vectors, integration against the real
# binary and real Python workers) and Python (worker package). README: `bash .ci/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# Layer rules a machine can check (ARCHITECTURE.md): no import cycle between the
# supervisor's top-level modules, none inside the Python worker package.
python3 .ci/modcycles.py
python3 .ci/pycycles.py
# The worker package is typed (py.typed): mypy --strict finds nothing in it, nor in a service
# written against it, for the oldest Python the worker supports and for this one.
for target in 3.9 ""; do
  (cd python-worker && python3 -m mypy --strict ${target:+--python-version "$target"} \
    oxbus examples/typed_service.py)
done
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads="${OXBUS_TEST_THREADS:-2}"
python3 -m pytest -q python-worker/tests
# Other interpreters named in OXBUS_TEST_PYTHONS (.ci/run fills it with pyenv's 3.9 and
# 3.13 when present): the Python suite on each.
for py in ${OXBUS_TEST_PYTHONS:-}; do
  echo "== python-worker tests on $py ($("$py" --version 2>&1))"
  PYTHONPATH=python-worker "$py" -m pytest -q -p no:cacheprovider python-worker/tests
done
