#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, then runs formatting,
# lints and every test (unit, SDK conformance, end-to-end against the simulators, and the
# read-back of the tables by independent readers: DuckDB with its delta extension, and
# Python's `deltalake`).
#
# Usage: scripts/test.sh            (from anywhere in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

# Independent Delta readers for the interop tests (DuckDB + its delta extension, both from
# PyPI so no extension download is needed; Python deltalake), in a private virtualenv.
venv="${TRIBUTARY_TEST_VENV:-target/test-venv}"
# And a real S3-compatible server (moto) for the object-store tests.
if ! "$venv/bin/python" -c 'import deltalake, pyarrow, moto, boto3, duckdb, duckdb_extension_delta' 2>/dev/null; then
  echo "Installing DuckDB, the Python deltalake reader and moto into $venv ..."
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'deltalake>=1.0' 'pyarrow>=15' 'moto[server]>=5' \
    'duckdb==1.5.5' 'duckdb-extension-delta==1.5.5'
fi
export TRIBUTARY_PYTHON="$PWD/$venv/bin/python"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
