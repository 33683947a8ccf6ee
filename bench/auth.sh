#!/usr/bin/env bash
# Connections a second through authentication, on loopback: the broker with no
# authentication plugin (anonymous clients from loopback), with the gatekeeper test plugin
# (a hook that answers at once: the cost of running client.authenticate on the blocking
# pool), and with emqx_auth_mnesia and each password_hash (sha256, pbkdf2, bcrypt). Each
# case: CLIENTS tasks, each connecting (TCP, CONNECT with username and password, CONNACK,
# DISCONNECT) CONNECTS times in a row (PBKDF2_CONNECTS, BCRYPT_CONNECTS for the slow hashes);
# the median of REPS runs.
#
#   bench/auth.sh                         # needs python3
#   REPS=5 CLIENTS=10 CONNECTS=1000 PBKDF2_CONNECTS=100 BCRYPT_CONNECTS=10 bench/auth.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace >&2
BIN=target/release
REPS=${REPS:-3}
CLIENTS=${CLIENTS:-10}
CONNECTS=${CONNECTS:-1000}
PBKDF2_CONNECTS=${PBKDF2_CONNECTS:-100}
BCRYPT_CONNECTS=${BCRYPT_CONNECTS:-10}
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# shellcheck source=bench/ports.sh
source bench/ports.sh
bench_broker_env default

run_case() { # label plugins hash connects -> prints "label|median|connections"
  local label=$1 plugins=$2 hash=$3 connects=$4 dir port
  dir="$WORK/$(echo "$label" | tr -c 'a-z0-9' _)"
  mkdir -p "$dir"; printf '%s' "$plugins" > "$dir/loaded_plugins"
  printf '[gatekeeper]\ndeny_users = ["nobody"]\n' > "$dir/broker.toml"
  port=$(free_port)
  # No max_conn_rate (default 1000/s): the figure is how fast the broker can authenticate.
  BROKER_AUTH_MNESIA__PASSWORD_HASH="$hash" BROKER_ALLOW_ANONYMOUS=loopback \
    BROKER_MQTT__MAX_CONN_RATE=0 \
    "$BIN/broker" --data-dir "$dir" --listen "127.0.0.1:$port" 2>"$dir/log" &
  PID=$!
  wait_port "$port"
  if [[ $plugins == *emqx_auth_mnesia* ]]; then "$BIN/broker" --data-dir "$dir" ctl users add bench bench-password >/dev/null; fi
  local rates=()
  for _ in $(seq "$REPS"); do
    rates+=("$("$BIN/bench" --scenario connect --port "$port" --clients "$CLIENTS" --messages "$connects" \
      --username bench --password bench-password --json | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["connects_per_sec"]))')")
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  printf '%s|%s|%s\n' "$label" "$(printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" \
    "$((CLIENTS * connects))"
}

echo "| authentication | connects/s (median of $REPS runs, $CLIENTS clients at once) | connections a run |"
echo "|---|---|---|"
while IFS='|' read -r label median total; do echo "| $label | $median | $total |"; done < <(
  run_case "none (anonymous, loopback)" "" sha256 "$CONNECTS"
  run_case "gatekeeper (a hook that answers at once)" "{gatekeeper, true}."$'\n' sha256 "$CONNECTS"
  run_case "emqx_auth_mnesia sha256" "{emqx_auth_mnesia, true}."$'\n' sha256 "$CONNECTS"
  run_case "emqx_auth_mnesia pbkdf2 (4096 rounds)" "{emqx_auth_mnesia, true}."$'\n' pbkdf2 "$PBKDF2_CONNECTS"
  run_case "emqx_auth_mnesia bcrypt (cost 10)" "{emqx_auth_mnesia, true}."$'\n' bcrypt "$BCRYPT_CONNECTS"
)
