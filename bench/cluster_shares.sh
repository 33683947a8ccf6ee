#!/usr/bin/env bash
# What share groups cost in a cluster, on loopback: a nats-server and two clustered brokers
# (b and c). Five publishers on node b, five members of one share group
# (`$share/bench/...`, `bench --share`) either on node b too (local) or on node c (every
# message crosses NATS), QoS 1 and 0, 5 x 4000 messages of 64 bytes as fast as the publishers
# can, unlimited queues; then the same at a steady 10,000 QoS 1 messages a second (latency:
# the brokers' own). REPS runs of each, interleaved; medians. Each message reaches one member
# (the run waits for all of them).
#
#   bench/cluster_shares.sh                            # needs: apt-get install nats-server; python3
#   STRATEGY=round_robin REPS=9 bench/cluster_shares.sh
#   BROKER=/tmp/old/broker PLUGINS_DIR=target/release bench/cluster_shares.sh   # another build of
#                                                      # the broker (with this build's plugins), for A/B runs
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
cargo build --release --workspace >&2
BIN=target/release
BROKER=${BROKER:-$BIN/broker}
REPS=${REPS:-5}
# shellcheck source=bench/ports.sh
source bench/ports.sh
bench_workspace
N=$(free_port); B=$(free_port); C=$(free_port)
nats-server -a 127.0.0.1 -p "$N" -js -sd "$WORK/nats" >/dev/null 2>&1 & PIDS+=($!)
wait_port "$N"
bench_broker_env deep
export BROKER_BROKER__SHARED_SUBSCRIPTION_STRATEGY="${STRATEGY:-random}"
for n in b c; do
  mkdir -p "$WORK/$n" && cp data/loaded_plugins data/acl.conf "$WORK/$n/"
  port=$B; [ "$n" = c ] && port=$C
  BROKER_CLUSTER__NATS="nats://127.0.0.1:$N" BROKER_NODE_NAME="emqx@$n" \
    "$BROKER" --data-dir "$WORK/$n" ${PLUGINS_DIR:+--plugins-dir "$PLUGINS_DIR"} --listen "127.0.0.1:$port" 2>"$WORK/$n.log" & PIDS+=($!)
done
for p in "$B" "$C"; do wait_port "$p"; done
for _ in $(seq "$REPS"); do
  for q in 1 0; do
    for t in "local:$B" "cross:$C"; do
      IFS=: read -r label sub <<<"$t"
      "$BIN/bench" --port "$B" --subscriber-port "$sub" --scenario many --clients 5 --messages 4000 --share bench \
        --qos "$q" --timeout 20 --label "$label" --json || true
    done
  done
  for t in "local:$B" "cross:$C"; do
    IFS=: read -r label sub <<<"$t"
    "$BIN/bench" --port "$B" --subscriber-port "$sub" --scenario many --clients 5 --messages 2000 --share bench \
      --qos 1 --rate 10000 --timeout 20 --label "$label" --json || true
  done
done >"$WORK/results.json"
python3 - "$WORK/results.json" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
names = {"local": "members on the publishers' node", "cross": "members on the other node"}
print("| share group, 5 publishers, 5 members | " + " | ".join(names.values()) + " |")
print("|---|---|---|")
for qos, rate in ((1, 0), (0, 0), (1, 10000)):
    cells = []
    for k in names:
        runs = [r for r in rows if r["label"] == k and r["qos"] == qos and r["rate"] == rate]
        if not runs:
            cells.append("failed")
            continue
        m = [st.median(r[f] for r in runs) for f in ("msgs_per_sec", "p50_us", "p99_us")]
        short = min(r["received"] for r in runs)
        cells.append(f"{m[0]:.0f} ({m[1]:.0f} / {m[2]:.0f})" + ("" if short == runs[0]["messages"] else f", {short} of {runs[0]['messages']} arrived"))
    print(f"| QoS {qos}{f' at {rate}/s' if rate else ''} | " + " | ".join(cells) + " |")
PY
