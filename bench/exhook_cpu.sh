#!/usr/bin/env bash
# What each emqx_exhook call costs: a broker with only emqx_exhook, calling
# target/release/exhook_server for `message.publish` on every message, and RUNS fan-in bursts
# (QoS 1, 10 publishers × 5,000 messages to one subscriber). Prints, per run, the messages a
# second and the CPU time (user + system, from /proc) the broker and the server spent per
# message.
#
#   bench/exhook_cpu.sh                      # RUNS=3
#   PLUGINS_DIR=/tmp/old bench/exhook_cpu.sh # the broker with another build of the plugin (its
#                                            # libemqx_exhook.so in that directory), for A/B runs
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace >&2
BIN=target/release
RUNS=${RUNS:-3}
# shellcheck source=bench/ports.sh
source bench/ports.sh
bench_workspace

E=$(free_port); P=$(free_port)
"$BIN/exhook_server" --listen "127.0.0.1:$E" >"$WORK/exhook_server.log" 2>&1 & PIDS+=($!); SERVER=$!
wait_port "$E"
echo '{emqx_exhook, true}.' > "$WORK/loaded_plugins"
bench_broker_env deep
BROKER_EXHOOK__SERVERS="[{ name = \"bench\", url = \"http://127.0.0.1:$E\" }]" \
  "$BIN/broker" --data-dir "$WORK" ${PLUGINS_DIR:+--plugins-dir "$PLUGINS_DIR"} --listen "127.0.0.1:$P" \
  2>"$WORK/broker.log" & PIDS+=($!); BROKER=$!
wait_port "$P"
"$BIN/broker" --data-dir "$WORK" ctl exhook list | grep -q "active=true" || { echo "exhook server not loaded" >&2; exit 1; }

HZ=$(getconf CLK_TCK)
for run in $(seq "$RUNS"); do
  b0=$(cpu_ticks $BROKER); s0=$(cpu_ticks $SERVER)
  out=$("$BIN/bench" --port "$P" --scenario fan-in --qos 1 --clients 10 --messages 5000 --timeout 60 --json)
  b1=$(cpu_ticks $BROKER); s1=$(cpu_ticks $SERVER)
  python3 -c '
import json, sys
r = json.loads(sys.argv[1]); hz = int(sys.argv[2]); n = r["messages"]
per = lambda a, b: (int(b) - int(a)) * 1e6 / hz / n
print("run %s: %.0f msgs/s, broker %.1f µs a message, server %.1f µs" %
      (sys.argv[3], r["msgs_per_sec"], per(sys.argv[4], sys.argv[5]), per(sys.argv[6], sys.argv[7])))' \
    "$out" "$HZ" "$run" "$b0" "$b1" "$s0" "$s1"
done
