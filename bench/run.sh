#!/usr/bin/env bash
# Measures, in one go and on loopback, the broker with its default plugins (a), the broker
# with no plugins (b), bare rumqttd with the same settings (c) and Debian's mosquitto (d):
# fan-in, fan-out and many-to-many at QoS 0 and 1, then memory with idle clients. Prints a
# Markdown table with the ratios a/c and a/d, each ratio's 95 % bootstrap interval (how far a
# ratio of medians can be trusted when runs vary), each broker's CPU a message, and every run.
#
#   bench/run.sh                 # needs: apt-get install mosquitto; python3
#   REPS=25 IDLE_CLIENTS=10000 bench/run.sh   # the README's table (about 20 minutes)
#   IDLE_CLIENTS=20000 bench/run.sh   # needs `ulimit -n` above IDLE_CLIENTS (default 10000)
#   REPS=5 PAYLOAD=64 bench/run.sh     # runs of each scenario (median shown), payload bytes
#   ONLY="fan-in 0 10 20000 0" IDLE_CLIENTS=0 bench/run.sh   # one scenario (as below), no memory
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace >&2
BIN=target/release
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
REPS=${REPS:-5}
PAYLOAD=${PAYLOAD:-64}
# Each idle client costs a broker one descriptor.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=bench/ports.sh
source bench/ports.sh
bench_workspace
bench_broker_env deep

start_target() { # name port -> sets TARGET_PID
  local name=$1 port=$2
  case $name in
    a|b)
      mkdir -p "$WORK/$name"
      if [ "$name" = a ]; then cp data/loaded_plugins data/acl.conf "$WORK/$name/"; else : > "$WORK/$name/loaded_plugins"; fi
      # Session queues as deep as mosquitto's below, no max_conn_rate (bench_broker_env).
      "$BIN/broker" --data-dir "$WORK/$name" --listen "127.0.0.1:$port" 2>"$WORK/$name.log" &
      ;;
    c) "$BIN/bare_rumqttd" --listen "127.0.0.1:$port" >/dev/null 2>&1 & ;;
    d)
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 1000000\n' "$port" > "$WORK/mosquitto.conf"
      mosquitto -c "$WORK/mosquitto.conf" >/dev/null 2>&1 &
      ;;
  esac
  TARGET_PID=$!
  PIDS+=("$TARGET_PID")
  wait_port "$port"
}

# scenario qos clients messages-per-publisher rate (0: as fast as possible = throughput, and
# latency is then mostly queueing; otherwise a steady total rate, where latency is the
# broker's own)
SCENARIOS=(
  "fan-in 0 10 20000 0"
  "fan-in 1 10 10000 0"
  "fan-out 0 10 10000 0"
  "fan-out 1 10 5000 0"
  "many 0 5 4000 0"
  "many 1 5 4000 0"
  "fan-in 0 100 2000 0"
  "fan-in 1 100 1000 0"
  "fan-in 0 10 4000 20000"
  "fan-in 1 10 4000 20000"
  "fan-in 0 10 10000 100000"
  "fan-in 1 10 10000 100000"
)
if [ -n "${ONLY:-}" ]; then SCENARIOS=("$ONLY"); fi
RESULTS="$WORK/results.jsonl"
# All four run side by side (idle ones cost nothing) and each scenario is run REPS times,
# a b c d in turn, so that a slow moment of the machine falls on all of them alike; the
# table shows medians.
declare -A PORT PID
for target in a b c d; do
  PORT[$target]=$(free_port)
  start_target "$target" "${PORT[$target]}"
  PID[$target]=$TARGET_PID
done
for s in "${SCENARIOS[@]}"; do
  read -r scenario qos clients messages rate <<<"$s"
  for _ in $(seq "$REPS"); do
    for target in a b c d; do
      cpu0=$(cpu_ns "${PID[$target]}")
      out=$("$BIN/bench" --port "${PORT[$target]}" --scenario "$scenario" --qos "$qos" --clients "$clients" \
        --messages "$messages" --rate "$rate" --payload "$PAYLOAD" --label "$target" --json) \
        || out="{\"label\":\"$target\",\"scenario\":\"${scenario//-/}\",\"qos\":$qos,\"rate\":$rate,\"clients\":$clients,\"failed\":true}"
      cpu1=$(cpu_ns "${PID[$target]}")
      # The broker's CPU over the run (all its threads), added to the run's JSON object.
      echo "${out%\}},\"broker_cpu_ns\":$((cpu1 - cpu0))}" >>"$RESULTS"
      settle "${PID[$target]}"
    done
  done
done
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
PIDS=()

# Memory, on a fresh instance of each: idle clients only.
for target in a b c d; do
  [ "$IDLE_CLIENTS" = 0 ] && break
  rm -rf "${WORK:?}/$target"
  port=$(free_port)
  start_target "$target" "$port"
  # RSS before, the clients (another process), RSS once it stops moving: over the first
  # IDLE_CLIENTS connections, no warm-up (bench/src/bin/idle_memory.rs).
  timeout 300 "$BIN/idle_memory" --pid "$TARGET_PID" --port "$port" --clients "$IDLE_CLIENTS" --label "$target" --json >>"$RESULTS" \
    || echo "{\"label\":\"$target\",\"scenario\":\"idle\",\"failed\":true}" >>"$RESULTS"
  kill "$TARGET_PID"; wait "$TARGET_PID" 2>/dev/null || true
done

python3 - "$RESULTS" "$PAYLOAD" "$REPS" <<'PY'
import json, statistics, sys
sys.path.insert(0, "bench")
from stats import cpu_us_per_message, format_interval, ratio_interval
rows = [json.loads(l) for l in open(sys.argv[1])]
names = {"a": "broker + default plugins", "b": "broker, no plugins", "c": "bare rumqttd", "d": "mosquitto"}
def key_of(r):
    """The scenario a run belongs to: (scenario, qos, rate, clients)."""
    return (r["scenario"], r.get("qos"), r.get("rate", 0), r.get("clients"))
def runs_of(label, key):
    """Every run of `label` in scenario `key`."""
    return [r for r in rows if r["label"] == label and key_of(r) == key]
def ok_runs(label, key):
    """The runs of `label` in scenario `key` that did not fail."""
    return [r for r in runs_of(label, key) if not r.get("failed")]
def get(label, key):
    """The median run of `label` in scenario `key` (medians of msgs/s, p50 and p99 taken one by one)."""
    runs, ok = runs_of(label, key), ok_runs(label, key)
    if not ok:
        return {"failed": True} if runs else None
    med = {f: statistics.median(r[f] for r in ok) for f in ("msgs_per_sec", "p50_us", "p99_us")}
    med["lost"] = sum(r["messages"] - r["received"] for r in ok)
    med["failed_runs"] = len(runs) - len(ok)
    return med
def values(label, key, field):
    """`field` of every run of `label` in scenario `key` that did not fail."""
    return [r[field] for r in ok_runs(label, key)]
def interval(k1, k2, key, field):
    """The 95 % bootstrap interval of median(k1) / median(k2) of `field` in scenario `key`."""
    return format_interval(ratio_interval(values(k1, key, field), values(k2, key, field)))
def shape(key):
    """How the table names a scenario's shape: fan-in 10→1, fan-out 1→10, many 5→5."""
    return {"fanin": f"fan-in {key[3]}→1", "fanout": f"fan-out 1→{key[3]}", "many": f"many {key[3]}→{key[3]}"}.get(key[0], key[0])
def row_name(key):
    """How the tables name scenario `key`: fan-in 10→1 QoS 1, and its rate if it has one."""
    return f"{shape(key)} QoS {key[1]}" + (f" at {key[2]}/s" if key[2] else "")
print(f"payload {sys.argv[2]} B; median of {sys.argv[3]} runs: msgs/s (p50 / p99 latency in µs); loopback, one machine\n")
print("| scenario | " + " | ".join(names[k] for k in "abcd") + " | a/c msgs/s | a/c p99 | a/d msgs/s |")
print("|---" * 8 + "|")
seen = []
for r in rows:
    key = key_of(r)
    if r["scenario"] == "idle" or key in seen:
        continue
    seen.append(key)
    cells, res = [], {}
    for k in "abcd":
        x = get(k, key)
        res[k] = x
        if not x or x.get("failed"):
            cells.append("failed")
        else:
            lost = f", {x['lost']} lost" if x["lost"] else ""
            lost += f", {x['failed_runs']} runs failed" if x["failed_runs"] else ""
            cells.append(f"{x['msgs_per_sec']:.0f} ({x['p50_us']:.0f} / {x['p99_us']:.0f}){lost}")
    def ratio(k1, k2, f):
        a, b = res.get(k1), res.get(k2)
        if not a or not b or a.get("failed") or b.get("failed") or not b[f]:
            return "-"
        return f"{a[f] / b[f]:.2f}"
    print(f"| {row_name(key)} | " + " | ".join(cells) +
          f" | {ratio('a','c','msgs_per_sec')} | {ratio('a','c','p99_us')} | {ratio('a','d','msgs_per_sec')} |")
print("\nHow far a ratio of medians can be trusted: its 95 % bootstrap interval (each broker's runs")
print("drawn again with replacement, 2000 times), for the rows that publish as fast as they can\n")
print("| scenario | a/c msgs/s | a/c p99 | a/d msgs/s |")
print("|---" * 4 + "|")
for key in seen:
    if key[2]:
        continue
    print(f"| {row_name(key)} | {interval('a', 'c', key, 'msgs_per_sec')} | "
          f"{interval('a', 'c', key, 'p99_us')} | {interval('a', 'd', key, 'msgs_per_sec')} |")
def cpu_per_message(label, key):
    """The broker's CPU a delivered message, in µs, of every run of `label` in scenario `key`."""
    return [cpu_us_per_message(r) for r in ok_runs(label, key) if r.get("received")]
print("\nThe broker's CPU a delivered message (µs, all its threads, median of the runs; measured in")
print("the same runs): how much of the machine each broker needs for the same traffic\n")
print("| scenario | " + " | ".join(names[k] for k in "abcd") + " | a/c | a/c, 95 % interval |")
print("|---" * 7 + "|")
for key in seen:
    cpu = {k: cpu_per_message(k, key) for k in "abcd"}
    cells = [f"{statistics.median(cpu[k]):.2f}" if cpu[k] else "-" for k in "abcd"]
    ratio = f"{statistics.median(cpu['a']) / statistics.median(cpu['c']):.2f}" if cpu["a"] and cpu["c"] else "-"
    print(f"| {row_name(key)} | " + " | ".join(cells) +
          f" | {ratio} | {format_interval(ratio_interval(cpu['a'], cpu['c']))} |")
print("\nEvery run as fast as possible, slowest first (msgs/s): a median is read against them (on a")
print("small machine shared with the load generator, bursts run at one of two speeds; README,")
print("\"A burst's two speeds\")\n")
print("| scenario | " + " | ".join(names[k] for k in "abcd") + " |")
print("|---" * 5 + "|")
for key in seen:
    if key[2]:
        continue
    cells = []
    for k in "abcd":
        runs = sorted(values(k, key, "msgs_per_sec"))
        cells.append(", ".join(f"{v:.0f}" for v in runs) or "-")
    print(f"| {row_name(key)} | " + " | ".join(cells) + " |")
print()
for k in "abcd":
    x = next((r for r in rows if r["label"] == k and r["scenario"] == "idle"), None)
    if x and not x.get("failed"):
        print(f"- {names[k]}: first {x['clients']} idle clients of a fresh instance: RSS {x['rss_before_kib']} -> {x['rss_after_kib']} KiB ({x['kib_per_client']:.2f} KiB a client)")
PY
