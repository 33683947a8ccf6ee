#!/usr/bin/env bash
# The cluster's cost, on loopback: a nats-server and three brokers side by side (one alone,
# two clustered on the NATS server), QoS 0 and 1 fan-in (10 publishers x 5000 messages of
# 64 bytes, as fast as they can, unlimited queues as in bench/run.sh), REPS runs each
# (interleaved), medians:
#   - single: the broker alone, no [cluster];
#   - cluster, local: publishers and subscriber (a clean session) on the same clustered node,
#     the other node having no subscriber: what the cluster costs a node's own traffic (such
#     messages stay on the node, broker/src/cluster/summary.rs; before that, each was also
#     forwarded to NATS and each QoS 1 message stored in the node's JetStream stream before
#     its PUBACK);
#   - cluster, cross-node: publishers on one node, the subscriber on the other (every message
#     crosses NATS);
# then the same at a steady 20,000 QoS 1 messages a second (latency: the brokers' own), and
# the time a persistent session takes to move from one node to the other when its client
# reconnects there (bench --bin takeover; TAKEOVERS rounds, default 200), and connections a
# second on the lone node and on a clustered one.
# Each line says how many of the 50,000 messages arrived (the fewest in a run) if some did
# not: a node holds its publishers back while its queue to NATS is long, so none should be
# lost (a message past the queue is counted and logged as "not forwarded").
# The NATS server runs with JetStream (-js), in the run's temporary directory.
#
#   bench/cluster.sh              # needs: apt-get install nats-server; python3
#   REPS=9 bench/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian puts nats-server in /usr/sbin, off an ordinary user's PATH.
export PATH="$PATH:/usr/sbin"
cargo build --release --workspace >&2
BIN=target/release
REPS=${REPS:-5}
# shellcheck source=bench/ports.sh
source bench/ports.sh
bench_workspace
N=$(free_port); A=$(free_port); B=$(free_port); C=$(free_port)
nats-server -a 127.0.0.1 -p "$N" -js -sd "$WORK/nats" >/dev/null 2>&1 & PIDS+=($!)
wait_port "$N"
for d in a b c; do mkdir -p "$WORK/$d" && cp data/loaded_plugins data/acl.conf "$WORK/$d/"; done
bench_broker_env deep
"$BIN/broker" --data-dir "$WORK/a" --listen "127.0.0.1:$A" 2>"$WORK/a.log" & PIDS+=($!)
for n in b c; do
  port=$B; [ "$n" = c ] && port=$C
  BROKER_CLUSTER__NATS="nats://127.0.0.1:$N" BROKER_NODE_NAME="emqx@$n" \
    "$BIN/broker" --data-dir "$WORK/$n" --listen "127.0.0.1:$port" 2>"$WORK/$n.log" & PIDS+=($!)
done
for p in "$A" "$B" "$C"; do wait_port "$p"; done
for _ in $(seq "$REPS"); do
  for q in 1 0; do
    "$BIN/bench" --port "$A" --scenario fan-in --qos "$q" --timeout 10 --label single --json || true
    "$BIN/bench" --port "$B" --scenario fan-in --qos "$q" --timeout 10 --label local --json || true
    "$BIN/bench" --port "$B" --subscriber-port "$C" --scenario fan-in --qos "$q" --timeout 10 --label cross --json || true
  done
  # A steady 20,000 QoS 1 messages a second (10 x 2000): the latency is the brokers' own.
  for t in "single:$A:$A" "local:$B:$B" "cross:$B:$C"; do
    IFS=: read -r label pub sub <<<"$t"
    "$BIN/bench" --port "$pub" --subscriber-port "$sub" --scenario fan-in --qos 1 --messages 2000 --rate 20000 \
      --timeout 10 --label "$label" --json || true
  done
done >"$WORK/results.json"
python3 - "$WORK/results.json" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
names = {"single": "single node", "local": "cluster, local", "cross": "cluster, cross-node"}
print("| fan-in 10x5000 | " + " | ".join(names.values()) + " | local / single | cross / single |")
print("|---|---|---|---|---|---|")
for qos, rate in ((1, 0), (0, 0), (1, 20000)):
    med = {}
    for k in names:
        runs = [r for r in rows if r["label"] == k and r["qos"] == qos and r["rate"] == rate]
        med[k] = (st.median(r["msgs_per_sec"] for r in runs), st.median(r["p50_us"] for r in runs),
                  st.median(r["p99_us"] for r in runs), min(r["received"] for r in runs), runs[0]["messages"])
    cell = lambda m: f"{m[0]:.0f} ({m[1]} / {m[2]}){'' if m[3] == m[4] else f', {m[3]} of {m[4]} arrived'}"
    print(f"| QoS {qos}{f' at {rate}/s' if rate else ''} | " + " | ".join(cell(med[k]) for k in names)
          + f" | {med['local'][0] / med['single'][0]:.2f} | {med['cross'][0] / med['single'][0]:.2f} |")
PY
grep -h "not forwarded" "$WORK"/*.log | tail -2 || true
# Takeover time across nodes, the old node alive (bench/src/bin/takeover.rs).
"$BIN/takeover" --from "127.0.0.1:$B" --to "127.0.0.1:$C" --rounds "${TAKEOVERS:-200}"
# Connections a second (16 clients, each CONNECT / CONNACK / DISCONNECT 200 times in a row):
# a clustered node claims each client id in NATS.
for t in "single:$A" "cluster:$B"; do
  "$BIN/bench" --port "${t#*:}" --scenario connect --clients 16 --messages 200 --label "${t%%:*}" 2>&1 | tail -1
done
