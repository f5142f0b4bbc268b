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
# mypy (pinned in .ci/requirements-mypy.txt) runs on Python 3.10+ only, though it checks
# for 3.9 too: its venv is made with python3 when that is 3.10 or newer, else with the first
# of python3.13 to python3.10 on PATH that runs and has venv.
mypy_python=
for py in python3 python3.13 python3.12 python3.11 python3.10; do
  if "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null
  then
    mypy_python=$py
    break
  fi
done
[[ -n "$mypy_python" ]] || missing+=("a Python 3.10 or newer with venv, for mypy: python3 itself \
or python3.10 to python3.13 on PATH (Debian/Ubuntu: apt-get install python3.11 python3.11-venv; \
or pyenv install 3.12)")
# PostgreSQL client tools: the store tests create and drop their databases with psql and
# read a store with pg_dump (integration/src/pg.rs); sqlite3 reads a SQLite store's rows
# (integration/tests/audit.rs); the dashboard's browser tests drive Debian's Chromium and
# chromedriver; promtool checks /metrics. .ci/run installs these (not PostgreSQL 15's
# server programs).
command -v psql >/dev/null && command -v pg_dump >/dev/null ||
  missing+=("psql and pg_dump (Debian/Ubuntu: apt-get install postgresql-client)")
command -v sqlite3 >/dev/null || missing+=("sqlite3 (Debian/Ubuntu: apt-get install sqlite3)")
command -v chromium >/dev/null && command -v chromedriver >/dev/null ||
  missing+=("chromium and chromedriver (Debian/Ubuntu: apt-get install chromium chromium-driver)")
command -v promtool >/dev/null || [[ -n "${OXBUS_PROMTOOL:-}" ]] ||
  missing+=("promtool (Debian/Ubuntu: apt-get install prometheus; or set OXBUS_PROMTOOL)")
[[ -x /usr/lib/postgresql/15/bin/initdb ]] ||
  missing+=("PostgreSQL 15's server programs, for the tests' own servers (apt-get install postgresql-15)")
# The servers the integration tests talk to on this machine, which .ci/run starts when they
# are installed (it installs none of them). PostgreSQL: OXBUS_TEST_PG, when set, names
# another one (integration/src/pg.rs), and 5432 is not checked.
port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
[[ -v OXBUS_TEST_PG ]] || port_up 5432 ||
  missing+=("a PostgreSQL server on 127.0.0.1:5432 (trust auth, database test; or set OXBUS_TEST_PG)")
port_up 3306 || missing+=("a MariaDB server on 127.0.0.1:3306 (root, empty password, database test)")
port_up 6379 || missing+=("a Redis server on 127.0.0.1:6379")
port_up 5672 || missing+=("a RabbitMQ server on 127.0.0.1:5672 (guest/guest)")
port_up 1883 || missing+=("a Mosquitto MQTT broker on 127.0.0.1:1883")
if ((${#missing[@]})); then
  echo "test.sh: this machine lacks what the test suite needs:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  echo "(on Debian/Ubuntu, .ci/run installs some of it: cmake, postgresql-client, sqlite3," \
    "python3-venv, chromium, chromium-driver, prometheus; it starts the servers when they" \
    "are installed, and then runs this script)" >&2
  exit 1
fi
# The Python tools of the requirements file `reqs`, in a venv of the suite's own made with
# `python` in `dir`: reused while its marker (`dir`/installed: the interpreter, its version,
# the requirements) matches and its pip runs, else made anew. The marker is written last,
# so a creation cut short is redone on the next run.
test_venv() { # python dir reqs
  local py=$1 dir=$2 reqs=$3 want
  want="$("$py" -c 'import os, sys; print(os.path.realpath(sys.executable), sys.version.split()[0])')
$(<"$reqs")"
  if [[ "$(cat "$dir/installed" 2>/dev/null)" == "$want" ]] &&
    "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
    return
  fi
  rm -rf "$dir"
  "$py" -m venv "$dir" || {
    echo "test.sh: $py -m venv $dir failed (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
  }
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs" || {
    echo "test.sh: installing $reqs into $dir failed (needs PyPI)" >&2
    exit 1
  }
  printf '%s\n' "$want" >"$dir/installed"
}
test_venv python3 target/test-venv .ci/requirements-test.txt
# Each other interpreter of OXBUS_TEST_PYTHONS (below) gets one too.
extra_venv() { echo "target/test-venv-$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; }
for py in ${OXBUS_TEST_PYTHONS:-}; do
  test_venv "$py" "$(extra_venv "$py")" .ci/requirements-test.txt
done
# mypy in one of its own, made with a Python 3.10+ (above).
test_venv "$mypy_python" target/mypy-venv .ci/requirements-mypy.txt
# First on PATH: every `python3 -m pytest` here, and each `python3` the Rust tests start
# (the workers, the OpenAPI validator), is the venv's interpreter.
PATH="$PWD/target/test-venv/bin:$PATH"
export PATH
# `--setup-only`: the checks and the venvs, no test.
if [[ "${1:-}" == "--setup-only" ]]; then
  echo "test.sh: set up: $(command -v python3) ($(python3 --version), $(python3 -m pytest --version 2>&1))"
  echo "test.sh: set up: target/mypy-venv, made with $mypy_python ($(target/mypy-venv/bin/python -m mypy --version))"
  exit 0
fi
# Layer rules a machine can check (ARCHITECTURE.md): no import cycle between the
# supervisor's top-level modules, none inside the Python worker package.
python3 .ci/modcycles.py
python3 .ci/pycycles.py
# The worker package is typed (py.typed): mypy --strict finds nothing in it, nor in a service
# written against it, for the oldest Python the worker supports and for python3's version
# (mypy itself runs from target/mypy-venv, on a 3.10+).
for target in $(printf '%s\n' 3.9 "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" |
  sort -uV); do
  (cd python-worker && ../target/mypy-venv/bin/python -m mypy --strict --python-version "$target" \
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
