#!/usr/bin/env bash
# Runs README.md's walkthrough ("Ten minutes with curl") against the built binary, so
# the README cannot drift from what works: every ```sh terminal-N block, in order.
# - terminal-1 blocks run in this one shell, as in a person's terminal (variables carry
#   over) and must succeed;
# - terminal-2 and terminal-3 blocks are long-running commands: each replaces the one
#   last started in that terminal (as Ctrl-C and a new command would) and runs in the
#   background until the end.
# It runs in a fresh folder (with the repository's examples/), so the database is new.
# Run by .ci/run after `cargo test`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cargo build --quiet --locked --bin waas
export PATH="$repo/target/debug:$PATH"

work=$(mktemp -d)
declare -A pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" /tmp/waas.toml /tmp/body.json /tmp/send.sh
}
trap cleanup EXIT

# Extract the blocks: NNN-terminal-K.sh, in README order.
mkdir -p "$work/blocks"
awk -v dir="$work/blocks" '
  /^```sh terminal-[0-9]+$/ { n++; split($2, t, "-"); file = sprintf("%s/%03d-terminal-%s.sh", dir, n, t[2]); next }
  /^```$/ { file = ""; next }
  file != "" { print > file }
' README.md
count=$(ls "$work/blocks" | wc -l)
[ "$count" -ge 8 ] || { echo "found only $count walkthrough blocks in README.md"; exit 1; }

ln -s "$repo/examples" "$work/examples"
cd "$work"

wait_for() { # what, command…
  local what=$1; shift
  for _ in $(seq 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "walkthrough: $what never came up"; return 1
}
port_open() { python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$1"; }

for block in "$work"/blocks/*.sh; do
  name=$(basename "$block" .sh)
  terminal=${name##*-}
  echo "== README walkthrough: $name"
  sed 's/^/   | /' "$block"
  if [ "$terminal" = 1 ]; then
    # shellcheck disable=SC1090
    source "$block"
    continue
  fi
  if [ -n "${pids[$terminal]:-}" ]; then
    kill "${pids[$terminal]}" 2>/dev/null || true
    wait "${pids[$terminal]}" 2>/dev/null || true
  fi
  command=$(grep -v '^[[:space:]]*$' "$block")
  bash -c "exec $command" >> "$work/terminal-$terminal.log" 2>&1 &
  pids[$terminal]=$!
  case "$command" in
    *"waas serve"*) wait_for "waas" curl -sf localhost:3010/healthz ;;
    *receiver.py*) wait_for "the receiver" port_open 8000 ;;
  esac
done
echo "== README walkthrough: all $count blocks ran"
