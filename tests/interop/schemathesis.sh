#!/usr/bin/env bash
# Fuzzes a running waas (the built debug binary, mock puppet) with schemathesis against
# its own /openapi.json: fails on any 5xx or any answer the description does not allow.
# Run by .ci/run after `cargo test`; see docs/API.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
hook=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
token="schemathesis-token-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
cat > "$work/waas.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
request_timeout = "3s"
[storage]
url = "sqlite://$work/waas.db"
[auth]
tokens = ["$token"]
[[webhooks]]
name = "bot"
url = "http://127.0.0.1:$hook/hook"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
TOML

python3 examples/receiver.py --port "$hook" > "$work/receiver.log" 2>&1 &
pids+=($!)
cargo build --quiet --locked --bin waas
target/debug/waas serve --config "$work/waas.toml" > "$work/waas.log" 2>&1 &
pids+=($!)
ready() {
  python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "http://127.0.0.1:$port/readyz" 2>/dev/null
}
for _ in $(seq 100); do ready && break; sleep 0.1; done
ready || { echo "waas did not become ready:"; cat "$work/waas.log"; exit 1; }

status=0
schemathesis run "http://127.0.0.1:$port/openapi.json" \
  -H "Authorization: Bearer $token" \
  --checks all --max-examples 100 --seed 1 \
  --exclude-path /v1/events/stream --request-timeout 10 \
  --no-color || status=$?
if grep -q "panicked" "$work/waas.log"; then
  echo "waas panicked during the run:"; grep -A5 "panicked" "$work/waas.log"; status=1
fi
exit "$status"
