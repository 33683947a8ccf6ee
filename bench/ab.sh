#!/usr/bin/env bash
# Two builds of the broker side by side on loopback, no plugins, their runs alternated: how a
# change to the broker moves one scenario's throughput, p99 and CPU a message. Build the
# old one into another target directory first, e.g.
#
#   git worktree add /tmp/old HEAD~1 && CARGO_TARGET_DIR=/tmp/old-target cargo build --release -p broker --manifest-path /tmp/old/Cargo.toml
#   bench/ab.sh /tmp/old-target/release/broker target/release/broker
#   REPS=25 SCENARIO="many 1 5 4000" bench/ab.sh OLD NEW   # scenario qos clients messages
#
# Each rep runs the same burst against A, then B (the order swaps every rep, so neither
# always runs first after a pause), each broker left to go idle before the next run, with the
# session queues as deep as bench/run.sh's. Prints each build's medians (msgs/s, p99 µs, the
# broker's CPU per delivered message in µs), B/A with its 95 % bootstrap interval, and every
# run. Bursts on this 2-core machine run at one of two speeds (README, "A burst's two
# speeds"): alternating puts the slow moments on both alike.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: bench/ab.sh BROKER_A BROKER_B" >&2; exit 2; }
cargo build --release -p bench >&2
REPS=${REPS:-20}
PAYLOAD=${PAYLOAD:-64}
read -r scenario qos clients messages <<<"${SCENARIO:-fan-in 1 10 10000}"

# shellcheck source=bench/ports.sh
source bench/ports.sh
bench_workspace
bench_broker_env deep
declare -A PORT PID
for label in A B; do
  binary=$1; shift
  mkdir -p "$WORK/$label"; : > "$WORK/$label/loaded_plugins"
  PORT[$label]=$(free_port)
  "$binary" --data-dir "$WORK/$label" --listen "127.0.0.1:${PORT[$label]}" 2>"$WORK/$label.log" &
  PID[$label]=$!
  PIDS+=("$!")
  wait_port "${PORT[$label]}"
done
for rep in $(seq "$REPS"); do
  order="A B"; [ $((rep % 2)) = 0 ] && order="B A"
  for label in $order; do
    cpu0=$(cpu_ns "${PID[$label]}")
    out=$(target/release/bench --port "${PORT[$label]}" --scenario "$scenario" --qos "$qos" --clients "$clients" \
      --messages "$messages" --rate 0 --payload "$PAYLOAD" --label "$label" --json) \
      || out="{\"label\":\"$label\",\"failed\":true}"
    cpu1=$(cpu_ns "${PID[$label]}")
    echo "${out%\}},\"broker_cpu_ns\":$((cpu1 - cpu0))}" >>"$WORK/runs.jsonl"
    settle "${PID[$label]}"
  done
done

python3 - "$WORK/runs.jsonl" "$scenario $qos $clients $messages" "$REPS" "$PAYLOAD" <<'PY'
import json, statistics, sys
sys.path.insert(0, "bench")
from stats import cpu_us_per_message, format_interval, ratio_interval
runs = [json.loads(line) for line in open(sys.argv[1])]
# (name, value of a run, how a median is written)
measures = [
    ("msgs/s", lambda r: r["msgs_per_sec"], "{:,.0f}"),
    ("p99 µs", lambda r: r["p99_us"], "{:,.0f}"),
    ("CPU µs a message", cpu_us_per_message, "{:.2f}"),
]
def values(label, measure):
    return [measure(r) for r in runs if r["label"] == label and not r.get("failed")]
print(f"`{sys.argv[2]}`, payload {sys.argv[4]} B, {sys.argv[3]} runs of each build, alternated; medians\n")
print("| | A | B | B/A | B/A, 95 % interval |")
print("|---|---|---|---|---|")
for name, measure, fmt in measures:
    a, b = values("A", measure), values("B", measure)
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"| {name} | {fmt.format(ma)} | {fmt.format(mb)} | {mb / ma:.3f} | {format_interval(ratio_interval(b, a))} |")
failed = sum(1 for r in runs if r.get("failed"))
if failed:
    print(f"\n{failed} runs failed (not counted above)")
print("\nEvery run, slowest first (msgs/s):\n")
for label in "AB":
    print(f"- {label}: " + ", ".join(f"{v:,.0f}" for v in sorted(values(label, measures[0][1]))))
PY
