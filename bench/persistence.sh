#!/usr/bin/env bash
# QoS 1 fan-in (10 publishers x 5000 messages) to one subscriber with a PERSISTENT session
# (CleanSession 0), on loopback, REPS runs each (interleaved), medians:
#   - the broker with its defaults ([persistence] enabled, sync = "group": every message is on
#     disk, fsync'd, before its PUBACK);
#   - the broker with sync = "none" (every message written, never fsync'd while running: what
#     the writing costs without the disk's fsync time);
#   - the broker with persistence.enabled = false (sessions in memory only);
#   - mosquitto with `persistence true` (it writes its database every autosave_interval, 1800 s
#     by default, and at shutdown: a crash loses what came since);
# and the store's fsyncs per message and per second during the broker's runs
# (`broker ctl store stats` before and after).
#
#   bench/persistence.sh          # needs: apt-get install mosquitto; python3
#   REPS=5 bench/persistence.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace >&2
BIN=target/release
REPS=${REPS:-3}
# shellcheck source=bench/ports.sh
source bench/ports.sh
bench_workspace
A=$(free_port); B=$(free_port); D=$(free_port); E=$(free_port)
for d in a b e; do mkdir -p "$WORK/$d" && cp data/loaded_plugins data/acl.conf "$WORK/$d/"; done
bench_broker_env default
"$BIN/broker" --data-dir "$WORK/a" --listen "127.0.0.1:$A" 2>"$WORK/a.log" & PIDS+=($!)
BROKER_PERSISTENCE__ENABLED=false "$BIN/broker" --data-dir "$WORK/b" --listen "127.0.0.1:$B" 2>"$WORK/b.log" & PIDS+=($!)
BROKER_PERSISTENCE__SYNC=none "$BIN/broker" --data-dir "$WORK/e" --listen "127.0.0.1:$E" 2>"$WORK/e.log" & PIDS+=($!)
mkdir -p "$WORK/mosquitto"
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 0\npersistence true\npersistence_location %s/\n' \
  "$D" "$WORK/mosquitto" > "$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" >/dev/null 2>&1 & PIDS+=($!)
for p in "$A" "$B" "$D" "$E"; do wait_port "$p"; done
fsyncs() { "$BIN/broker" --data-dir "$WORK/a" ctl store stats | awk '/^fsyncs/ {print $3}'; }
for _ in $(seq "$REPS"); do
  for t in "a:$A" "e:$E" "b:$B" "d:$D"; do
    label=${t%%:*}
    before=$(fsyncs); started=$(date +%s.%N)
    "$BIN/bench" --port "${t#*:}" --scenario fan-in --qos 1 --clients 10 --messages 5000 --persistent \
      --timeout 120 --label "$label" --json || true
    ended=$(date +%s.%N); after=$(fsyncs)
    if [ "$label" = a ]; then
      printf '{"fsync_run": true, "fsyncs": %s, "started": %s, "ended": %s}\n' "$((after - before))" "$started" "$ended"
    fi
  done
done >"$WORK/results.json"
python3 - "$WORK/results.json" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
names = {"a": "broker, sync = group", "e": "broker, sync = none", "b": "broker, persistence off",
         "d": "mosquitto, persistence true"}
runs = {k: [r for r in rows if r.get("label") == k] for k in names}
med = {k: (st.median(r["msgs_per_sec"] for r in v), st.median(r["p50_us"] for r in v),
           st.median(r["p99_us"] for r in v), min(r["received"] for r in v), v[0]["messages"]) for k, v in runs.items()}
print("| QoS 1 fan-in 10x5000, persistent subscriber | msgs/s (p50 / p99 µs) |")
print("|---|---|")
for k, name in names.items():
    m = med[k]
    print(f"| {name} | {m[0]:.0f} ({m[1]} / {m[2]}){'' if m[3] == m[4] else f', {m[3]} of {m[4]} delivered'} |")
print(f"\nbroker group / persistence off: {med['a'][0] / med['b'][0]:.2f}; broker group / mosquitto: {med['a'][0] / med['d'][0]:.2f}")
f = [r for r in rows if r.get("fsync_run")]
fs, secs = st.median(r["fsyncs"] for r in f), st.median(r["ended"] - r["started"] for r in f)
msgs = med["a"][4]
print(f"store fsyncs in a broker run (median): {fs:.0f} for {msgs} messages = {fs / msgs:.3f} per message, "
      f"{fs / secs:.0f} per second over {secs:.1f} s (the run's connects and subscribes included)")
PY
