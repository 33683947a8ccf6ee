#!/usr/bin/env bash
# emqx_mod_delayed's pace: N messages (default 2000) published to `$delayed/2/dl/x` with
# mosquitto_pub -l (QoS 1), all due within the same second or so, and a mosquitto_sub on
# `dl/#` that prints when each arrived (%U). Prints, REPS times (default 3), how long the
# publishing took (each $delayed/ message is stored before its PUBACK: in a cluster, in NATS),
# the time from the first delivered to the last (at least the publishing's spread), and how
# long after it fell due the last one arrived (its due time is at most the end of the
# publishing plus 2 s, so this is at least how late it was):
#   - single: one broker (each message is claimed, a compare-and-set in the store, then
#     published; then its key is deleted);
#   - cluster: two brokers on a nats-server -js, the publisher on the first, the subscriber on
#     the second; both nodes race to claim each message through NATS, one publishes it.
#
#   bench/delayed.sh              # needs: mosquitto-clients, nats-server; python3
#   N=5000 REPS=5 bench/delayed.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
cargo build --release --workspace >&2
BIN=target/release
N=${N:-2000}
REPS=${REPS:-3}
# shellcheck source=bench/ports.sh
source bench/ports.sh
bench_workspace
bench_broker_env default

# One broker in a fresh data directory with emqx_mod_delayed, on port $1; extra env after.
start_broker() {
  local port=$1 dir
  shift
  dir=$(mktemp -d -p "$WORK")
  echo "{emqx_mod_delayed, true}." >"$dir/loaded_plugins"
  env "$@" "$BIN/broker" --data-dir "$dir" --listen "127.0.0.1:$port" >"$dir/log" 2>&1 &
  PIDS+=($!)
  wait_port "$port"
}

# Publishes N delayed messages on port $1, receives them on port $2; prints the spread in ms.
spread() {
  local out="$WORK/got" deadline=$((SECONDS + 120))
  : >"$out"
  stdbuf -oL mosquitto_sub -p "$2" -t 'dl/#' -q 1 -F '%t %U' >"$out" &
  local sub=$!
  # Subscribed once a marker published after it comes back.
  until grep -q '^dl/ready ' "$out"; do mosquitto_pub -p "$2" -t dl/ready -q 1 -m ready; sleep 0.05; done
  local started ended
  started=$(date +%s.%N)
  # shellcheck disable=SC2016 # the topic is `$delayed/...`, not a variable
  seq 1 "$N" | mosquitto_pub -p "$1" -t '$delayed/2/dl/x' -q 1 -l
  ended=$(date +%s.%N)
  until [ "$(grep -c '^dl/x ' "$out")" -ge "$N" ] || [ $SECONDS -gt $deadline ]; do sleep 0.1; done
  kill "$sub"; wait "$sub" 2>/dev/null || true
  python3 -c "
l = [float(x.split()[1]) for x in open('$out') if x.startswith('dl/x ')]
late = (l[-1] - ($ended + 2)) * 1000
print(f'{len(l)} of $N delivered; published in {($ended - $started) * 1000:.0f} ms, delivered first to last in '
      f'{(l[-1] - l[0]) * 1000:.0f} ms, the last {late:.0f} ms after it fell due')"
}

S=$(free_port)
start_broker "$S"
NATS=$(free_port); C1=$(free_port); C2=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS" -js -sd "$WORK/nats" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$NATS"
start_broker "$C1" BROKER_NODE_NAME=emqx@d1 BROKER_CLUSTER__NATS="nats://127.0.0.1:$NATS"
start_broker "$C2" BROKER_NODE_NAME=emqx@d2 BROKER_CLUSTER__NATS="nats://127.0.0.1:$NATS"
for rep in $(seq "$REPS"); do
  echo "run $rep, $N delayed messages due together"
  echo -n "  single:  "; spread "$S" "$S"
  echo -n "  cluster: "; spread "$C1" "$C2"
done
