#!/usr/bin/env bash
# The whole test suite: Rust (unit, property, golden vectors, integration against the real
# binary and real Python workers) and Python (worker package). README: `bash .ci/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads="${OXBUS_TEST_THREADS:-2}"
python3 -m pytest -q python-worker/tests
