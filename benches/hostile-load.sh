#!/usr/bin/env bash
# Measurements of the server under hostile load, from outside (h2load, from
# Debian's nghttp2-client), against a release build:
#
#   bash benches/hostile-load.sh noisy [SECONDS]   one tenant's key floods CreateItem on
#                                                  4 connections x 64 streams while another
#                                                  tenant reads one call at a time: the quiet
#                                                  tenant's mean latency alone and during the
#                                                  flood, and how much the log grew
#   bash benches/hostile-load.sh watches           100,000 health watches asked for on 2
#                                                  connections, with no credential: resident
#                                                  memory before, at its peak, and after
#   bash benches/hostile-load.sh idle              3,500 idle connections under a 3,400
#                                                  descriptor limit: CPU the server spends on
#                                                  them, and whether tenants still open
#   bash benches/hostile-load.sh hot [SECONDS] [TENANTS]
#                                                  not hostile: the hot path from outside, GetItem of
#                                                  an existing item against Health/Check, each on
#                                                  8 connections x 16 streams spread over TENANTS
#                                                  (1, 2, 4 or 8), alternated twice
#
# BIN names another binary to measure (an older build, say) the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/tenantry}
CLI=${CLI:-target/release/tenantry}
[ -x "$BIN" ] || cargo build --release --locked
command -v h2load >/dev/null || { echo "h2load is missing: apt-get install nghttp2-client" >&2; exit 2; }

DIR=$(mktemp -d)
export TENANTRY_ADMIN_TOKEN=hostile-load-admin-token-0123456789
PORT=$((40000 + RANDOM % 20000))
ADDR=127.0.0.1:$PORT
SERVER=
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null && wait $SERVER 2>/dev/null; rm -rf "$DIR"' EXIT

# Starts the server, after running "$1" in its shell (a ulimit), with "${@:2}".
start() {
  local setup=$1
  shift
  sh -c "$setup exec \"\$0\" \"\$@\"" "$BIN" serve --listen $ADDR --data-dir "$DIR/data" "$@" \
    2>"$DIR/server.log" &
  SERVER=$!
  for _ in $(seq 100); do "$CLI" health --addr $ADDR >/dev/null 2>&1 && return; sleep 0.1; done
  echo "the server did not start:" >&2
  cat "$DIR/server.log" >&2
  exit 1
}

tenant() { "$CLI" tenants create "$1" --addr $ADDR -o json | python3 -c 'import sys, json; print(json.load(sys.stdin)["id"])'; }
key() { "$CLI" keys create "$1" --addr $ADDR -o json 2>/dev/null | python3 -c 'import sys, json; print(json.load(sys.stdin)["secret"])'; }
rss() { grep "$1" /proc/$SERVER/status | awk '{print $2 " kB"}'; }
cpu() { awk '{print $14 + $15}' /proc/$SERVER/stat; }

# gRPC request bodies, framed: CreateItem{item{title}}, GetItem{id} of an
# item that does not exist (a point read all the same), an empty message.
python3 - "$DIR" <<'PY'
import struct, sys, uuid
d = sys.argv[1]
frame = lambda body: b"\0" + struct.pack(">I", len(body)) + body
field = lambda n, data: bytes([(n << 3) | 2, len(data)]) + data
open(d + "/create.bin", "wb").write(frame(field(1, field(2, b"flooding the server"))))
open(d + "/get.bin", "wb").write(frame(field(1, str(uuid.uuid4()).encode())))
open(d + "/empty.bin", "wb").write(frame(b""))
PY

noisy() {
  local seconds=${1:-20}
  start ""
  local flood flood_key quiet quiet_key
  flood=$(tenant flood); flood_key=$(key "$flood")
  quiet=$(tenant quiet); quiet_key=$(key "$quiet")
  local grpc=(-H 'content-type: application/grpc' -H 'te: trailers')
  local reader=(h2load -c1 -m1 "${grpc[@]}" -H "authorization: Bearer $quiet_key" -H "x-tenant-id: $quiet"
    -d "$DIR/get.bin" http://$ADDR/tenantry.v1.ItemService/GetItem)
  echo "quiet tenant alone:"
  "${reader[@]}" -D 5 | grep -E "^time for request|^ +min"
  local lines bytes
  lines=$(wc -l <"$DIR/server.log"); bytes=$(wc -c <"$DIR/server.log")
  h2load -c4 -m64 -D "$seconds" "${grpc[@]}" -H "authorization: Bearer $flood_key" -H "x-tenant-id: $flood" \
    -d "$DIR/create.bin" http://$ADDR/tenantry.v1.ItemService/CreateItem >"$DIR/flood.txt" &
  local flooder=$!
  sleep 1
  echo "quiet tenant during the flood:"
  "${reader[@]}" -D $((seconds - 3)) | grep -E "^time for request|^ +min"
  wait $flooder
  echo "the flood: $(grep -E '^finished in' "$DIR/flood.txt")"
  echo "the log grew by $(($(wc -l <"$DIR/server.log") - lines)) lines, $(($(wc -c <"$DIR/server.log") - bytes)) bytes"
}

watches() {
  start ""
  echo "resident memory before: $(rss VmRSS)"
  timeout "${1:-20}" h2load -c 2 -m 100000 -n 200000 -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$DIR/empty.bin" http://$ADDR/grpc.health.v1.Health/Watch >/dev/null 2>&1 || true
  echo "at its peak: $(rss VmHWM)"
  sleep 2
  echo "after: $(rss VmRSS)"
}

idle() {
  start "ulimit -Sn 3400 && ulimit -Hn 3400 &&" --max-open-tenants 500
  python3 - "$ADDR" 3500 <<'PY' &
import socket, sys, time
host, port = sys.argv[1].split(":")
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(); s.settimeout(0.2)
    try:
        s.connect((host, int(port))); held.append(s)
    except OSError:
        pass
print(f"{len(held)} idle connections open", flush=True)
time.sleep(30)
PY
  local holder=$!
  sleep 4
  local before after
  before=$(cpu); sleep 5; after=$(cpu)
  echo "CPU spent on them in 5 s: $(python3 -c "print(($after - $before) / 100)") s"
  local made=0 failed=0 id
  for n in 1 2 3 4 5; do
    if id=$(tenant "during-$n" 2>/dev/null) && "$CLI" backup "$id" --addr $ADDR --timeout 5s >/dev/null 2>&1; then
      made=$((made + 1))
    else
      failed=$((failed + 1))
    fi
  done
  echo "tenants created and backed up meanwhile: $made, failed: $failed"
  kill $holder 2>/dev/null || true
}

hot() {
  local seconds=${1:-10} tenants=${2:-1}
  # All streams on one tenant would meet its limit on calls in flight (32
  # by default), and each refusal is a 200 to h2load.
  start "" --tenant-max-concurrent-calls 256
  local grpc=(-H 'content-type: application/grpc' -H 'te: trailers')
  local n t tenant_id tenant_key item
  # h2load sends the same headers on every stream: one h2load process per
  # tenant, 8 connections x 16 streams in all, the same for Health/Check.
  local per=$((8 / tenants))
  for n in $(seq "$tenants"); do
    tenant_id=$(tenant "hot-$n"); tenant_key=$(key "$tenant_id")
    printf '%s\n%s\n' "$tenant_id" "$tenant_key" >"$DIR/tenant-$n"
    # One item, made with curl (HTTP/2 without TLS), its id read from the
    # answer: a gRPC frame of an Item whose first field is the id.
    item=$(curl -s --http2-prior-knowledge "${grpc[@]}" -H "authorization: Bearer $tenant_key" \
      -H "x-tenant-id: $tenant_id" --data-binary @"$DIR/create.bin" \
      http://$ADDR/tenantry.v1.ItemService/CreateItem |
      python3 -c 'import sys; b = sys.stdin.buffer.read()[5:]; assert b[0] == 0x0a; print(b[2:2 + b[1]].decode())')
    python3 - "$DIR/get-$n.bin" "$item" <<'PY'
import struct, sys
body = b"\x0a" + bytes([len(sys.argv[2])]) + sys.argv[2].encode()
open(sys.argv[1], "wb").write(b"\0" + struct.pack(">I", len(body)) + body)
PY
    # The frames h2load sends are answered with the item (h2load itself
    # sees only the HTTP status, 200 for any gRPC answer).
    curl -s --http2-prior-knowledge "${grpc[@]}" -H "authorization: Bearer $tenant_key" \
      -H "x-tenant-id: $tenant_id" --data-binary @"$DIR/get-$n.bin" \
      http://$ADDR/tenantry.v1.ItemService/GetItem | grep -q "$item" ||
      { echo "GetItem does not answer with the item" >&2; exit 1; }
  done
  # Runs h2load once per tenant at once, on METHOD with each tenant's
  # frame (or FRAME for all); the sum of their rates.
  load() {
    local method=$1 frame=${2:-}
    for n in $(seq "$tenants"); do
      { read -r t; read -r k; } <"$DIR/tenant-$n"
      h2load -c"$per" -m16 -D "$seconds" --warm-up-time=2 "${grpc[@]}" \
        -H "authorization: Bearer $k" -H "x-tenant-id: $t" -d "${frame:-$DIR/get-$n.bin}" \
        "http://$ADDR/$method" >"$DIR/load-$n.txt" &
    done
    wait
    cat "$DIR"/load-*.txt | awk '/^finished in/ {sum += $4} END {printf "%.0f", sum}'
  }
  local health get
  for round in 1 2; do
    health=$(load grpc.health.v1.Health/Check "$DIR/empty.bin")
    get=$(load tenantry.v1.ItemService/GetItem)
    echo "round $round, $tenants tenant(s): Health/Check $health req/s, GetItem $get req/s: $(python3 -c "print(f'{$get / $health:.2f}')") of Health/Check"
  done
}

case "${1:-}" in
  noisy) noisy "${2:-20}" ;;
  watches) watches "${2:-20}" ;;
  idle) idle ;;
  hot) hot "${2:-10}" "${3:-1}" ;;
  *) sed -n '2,23p' "$0"; exit 2 ;;
esac
