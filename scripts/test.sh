#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, then runs formatting,
# lints and every test (unit, SDK conformance, end-to-end against the simulators, and the
# read-back of the tables by an independent reader, Python's `deltalake`).
#
# Usage: scripts/test.sh            (from anywhere in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

# An independent Delta reader for the interop tests, in a private virtualenv.
venv="${TRIBUTARY_TEST_VENV:-target/test-venv}"
# And a real S3-compatible server (moto) for the object-store tests.
if ! "$venv/bin/python" -c 'import deltalake, pyarrow, moto, boto3' 2>/dev/null; then
  echo "Installing the Python deltalake reader and moto into $venv ..."
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'deltalake>=1.0' 'pyarrow>=15' 'moto[server]>=5'
fi
export TRIBUTARY_PYTHON="$PWD/$venv/bin/python"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
