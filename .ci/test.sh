#!/usr/bin/env bash
# The whole test suite: Rust (unit, property, golden vectors, integration against the real
# binary and real Python workers) and Python (worker package). README: `bash .ci/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# What a machine needs before anything runs: the Rust toolchain, python3 with venv, cmake
# (README "Try it"). The rest the suite installs itself (the Python tools below) or, for the
# few programs that only a system package manager has, names in one message up front.
missing=()
command -v cargo >/dev/null || missing+=("cargo (the Rust toolchain: https://rustup.rs)")
command -v cmake >/dev/null || missing+=("cmake (Debian/Ubuntu: apt-get install cmake)")
if ! command -v python3 >/dev/null; then
  missing+=("python3 3.9+ (Debian/Ubuntu: apt-get install python3 python3-venv)")
elif ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=("python3's venv and ensurepip (Debian/Ubuntu: apt-get install python3-venv)")
fi
# PostgreSQL client tools: the store tests create and drop their databases with psql and
# read a store with pg_dump (integration/src/pg.rs); sqlite3 reads a SQLite store's rows
# (integration/tests/audit.rs); the dashboard's browser tests drive Debian's Chromium and
# chromedriver; promtool checks /metrics. .ci/run installs them all.
command -v psql >/dev/null && command -v pg_dump >/dev/null ||
  missing+=("psql and pg_dump (Debian/Ubuntu: apt-get install postgresql-client)")
command -v sqlite3 >/dev/null || missing+=("sqlite3 (Debian/Ubuntu: apt-get install sqlite3)")
command -v chromium >/dev/null && command -v chromedriver >/dev/null ||
  missing+=("chromium and chromedriver (Debian/Ubuntu: apt-get install chromium chromium-driver)")
command -v promtool >/dev/null || [[ -n "${OXBUS_PROMTOOL:-}" ]] ||
  missing+=("promtool (Debian/Ubuntu: apt-get install prometheus; or set OXBUS_PROMTOOL)")
[[ -x /usr/lib/postgresql/15/bin/initdb ]] ||
  missing+=("PostgreSQL 15's server programs, for the tests' own servers (apt-get install postgresql-15)")
# The servers the integration tests talk to on this machine, which .ci/run starts.
port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_up 5432 || missing+=("a PostgreSQL server on 127.0.0.1:5432 (trust auth, database test)")
port_up 3306 || missing+=("a MariaDB server on 127.0.0.1:3306 (root, empty password, database test)")
port_up 6379 || missing+=("a Redis server on 127.0.0.1:6379")
port_up 5672 || missing+=("a RabbitMQ server on 127.0.0.1:5672 (guest/guest)")
port_up 1883 || missing+=("a Mosquitto MQTT broker on 127.0.0.1:1883")
if ((${#missing[@]})); then
  echo "test.sh: this machine lacks what the test suite needs:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  echo "(.ci/run installs and starts all of it on Debian/Ubuntu, then runs this script)" >&2
  exit 1
fi
# The Python tools of .ci/requirements-test.txt, in a venv of the suite's own made with
# `python` in `dir` (created, or reused while the file is unchanged).
test_venv() { # python dir
  local py=$1 dir=$2
  if [[ ! -x "$dir/bin/python" ]]; then
    rm -rf "$dir"
    "$py" -m venv "$dir" || {
      echo "test.sh: $py -m venv $dir failed (Debian/Ubuntu: apt-get install python3-venv)" >&2
      exit 1
    }
  fi
  if ! cmp -s .ci/requirements-test.txt "$dir/requirements-test.txt"; then
    "$dir/bin/python" -m pip install -q --disable-pip-version-check -r .ci/requirements-test.txt
    cp .ci/requirements-test.txt "$dir/requirements-test.txt"
  fi
}
test_venv python3 target/test-venv
# Each other interpreter of OXBUS_TEST_PYTHONS (below) gets one too.
extra_venv() { echo "target/test-venv-$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; }
for py in ${OXBUS_TEST_PYTHONS:-}; do
  test_venv "$py" "$(extra_venv "$py")"
done
# First on PATH: every `python3 -m pytest` here, and each `python3` the Rust tests start
# (the workers, the OpenAPI validator), is the venv's interpreter.
PATH="$PWD/target/test-venv/bin:$PATH"
export PATH
# `--setup-only`: the checks and the venvs, no test.
if [[ "${1:-}" == "--setup-only" ]]; then
  echo "test.sh: set up: $(command -v python3) ($(python3 --version), $(python3 -m pytest --version 2>&1))"
  exit 0
fi
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
# 3.13 when present): the Python suite on each, from a venv of its own with the same tools.
for py in ${OXBUS_TEST_PYTHONS:-}; do
  echo "== python-worker tests on $py ($("$py" --version 2>&1))"
  PYTHONPATH=python-worker "$(extra_venv "$py")/bin/python" -m pytest -q -p no:cacheprovider \
    python-worker/tests
done
