#!/usr/bin/env bash
# The broker as a new user runs it (shipped plugins, DEFAULT settings: max_mqueue_len 1000,
# mqueue_overflow = backpressure) beside bare rumqttd and mosquitto (max_queued_messages 0,
# i.e. unlimited), on loopback: fan-in 10→1 and fan-out 1→10, QoS 0 and 1, 5000 messages a
# publisher, REPS runs each (interleaved), medians; then how often arrival order across
# clients is kept (bench --bin arrival_order) by the broker and by mosquitto.
#
#   bench/defaults.sh            # needs: apt-get install mosquitto; python3
#   REPS=9 bench/defaults.sh
#
# A QoS 0 run in which the broker drops messages (a full queue; counted) waits out the load
# generator's --timeout before it reports: such runs take TIMEOUT seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace >&2
BIN=target/release
REPS=${REPS:-5}
TIMEOUT=${TIMEOUT:-10}
# shellcheck source=bench/ports.sh
source bench/ports.sh
bench_workspace
A=$(free_port); C=$(free_port); D=$(free_port)
mkdir -p "$WORK/a" && cp data/loaded_plugins data/acl.conf "$WORK/a/"
bench_broker_env default   # not `deep`: every queue setting at its default
"$BIN/broker" --data-dir "$WORK/a" --listen "127.0.0.1:$A" 2>"$WORK/a.log" & PIDS+=($!)
"$BIN/bare_rumqttd" --listen "127.0.0.1:$C" >/dev/null 2>&1 & PIDS+=($!)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 0\n' "$D" > "$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" >/dev/null 2>&1 & PIDS+=($!)
for p in "$A" "$C" "$D"; do wait_port "$p"; done
for _ in $(seq "$REPS"); do
  for s in "fan-in 1" "fan-in 0" "fan-out 1" "fan-out 0"; do
    read -r scenario qos <<<"$s"
    for t in "a:$A" "c:$C" "d:$D"; do
      "$BIN/bench" --port "${t#*:}" --scenario "$scenario" --qos "$qos" --clients 10 --messages 5000 \
        --timeout "$TIMEOUT" --label "${t%%:*}" --json || true
    done
  done
done >"$WORK/results.json"
python3 - "$WORK/results.json" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
names = {"a": "broker, defaults", "c": "bare rumqttd", "d": "mosquitto"}
print("| scenario | " + " | ".join(names.values()) + " | a/c msgs/s | a/c p99 | a/d msgs/s |")
print("|---|---|---|---|---|---|---|")
for scenario, qos in [("fanin", 1), ("fanin", 0), ("fanout", 1), ("fanout", 0)]:
    med = {}
    for k in names:
        runs = [r for r in rows if r["label"] == k and r["scenario"] == scenario and r["qos"] == qos]
        med[k] = (st.median(r["msgs_per_sec"] for r in runs), st.median(r["p99_us"] for r in runs),
                  st.median(r["p50_us"] for r in runs), min(r["received"] for r in runs), runs[0]["messages"])
    cell = lambda m: f"{m[0]:.0f} ({m[2]} / {m[1]}){'' if m[3] == m[4] else f', {m[3]} of {m[4]} delivered'}"
    print(f"| {scenario.replace('fan', 'fan-')} QoS {qos} | " + " | ".join(cell(med[k]) for k in names)
          + f" | {med['a'][0] / med['c'][0]:.2f} | {med['a'][1] / med['c'][1]:.2f} | {med['a'][0] / med['d'][0]:.2f} |")
PY
echo
for gap in 0 100; do
  "$BIN/arrival_order" --addr "127.0.0.1:$A" --rounds 1000 --gap-us "$gap"
  "$BIN/arrival_order" --addr "127.0.0.1:$D" --rounds 1000 --gap-us "$gap"
done
