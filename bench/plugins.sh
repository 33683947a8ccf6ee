#!/usr/bin/env bash
# What the plugins that reach outside cost, on loopback: four brokers side by side,
#   a: the broker with no plugins;
#   b: emqx_exhook, calling a local HookProvider server (target/release/exhook_server: tonic,
#      emqx.exhook.v2) that asks for message.publish on every topic and answers CONTINUE with
#      the message unchanged, so every PUBLISH waits for one gRPC call;
#   c: emqx_web_hook with its default rules (every event: message.publish, .delivered and
#      .acked for each message, client and session events) posting to a local receiver that
#      answers 200 at once (target/release/hook_receiver);
#   d: emqx_web_hook, the same, the receiver hanging (reads each request, never answers);
# all with their other settings at the defaults (web hook: queue_size 10000, pool_size 32,
# request_timeout 5s; exhook: pool_size 8, request_timeout 5s) and session queues as deep as
# bench/run.sh's. Fan-in 10→1 (10 publishers, one subscriber, 64-byte payloads) at QoS 1 and
# QoS 0 as fast as the publishers can (throughput; latency is then queueing), then QoS 1 at a
# steady 5000 and 20000 msgs/s (latency: the broker's own). REPS runs of each (default 9), a b
# c d in turn, each broker (and its server) left to go idle before the next run; medians, each
# ratio's 95 % bootstrap interval, and every as-fast-as-possible run with the broker's CPU per
# message. Bursts on this 2-core machine run at one of two speeds (README, "A burst's two
# speeds"), so a median is read against the runs it comes from, and the share of slow bursts
# changes from one quarter of an hour to the next: an interval is no wider than one run's
# spread.
#
# Around each run it reads `broker ctl web_hook status` (c, d) and `broker ctl exhook stats`
# (b), and prints what the web hook sent, failed and dropped, and the exhook calls, per run;
# and what one event the web hook sent cost its sending thread and the receiver in CPU.
#
#   bench/plugins.sh             # needs: python3
#   REPS=15 bench/plugins.sh
#   MESSAGES=50000 TARGETS="a c" bench/plugins.sh   # bursts of 10 x 50,000: a sustained rate
#   TARGETS="a c" BROKER_WEB_HOOK__SENDER_PRIORITY=low bench/plugins.sh   # only a and c, a web hook setting
#   PLUGINS_DIR=/tmp/old TARGETS="a c" bench/plugins.sh   # the brokers load the plugins built
#                                                         # in that directory (A/B runs)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace >&2
BIN=target/release
REPS=${REPS:-9}
# Messages a publisher sends in the as-fast-as-possible runs (10 publishers).
MESSAGES=${MESSAGES:-5000}
TARGETS=${TARGETS:-a b c d}
# shellcheck source=bench/ports.sh
source bench/ports.sh
bench_workspace

E=$(free_port); R=$(free_port); H=$(free_port)
"$BIN/exhook_server" --listen "127.0.0.1:$E" >"$WORK/exhook_server.log" 2>&1 & PIDS+=($!); EXHOOK_PID=$!
"$BIN/hook_receiver" --listen "127.0.0.1:$R" >"$WORK/receiver.log" 2>&1 & PIDS+=($!); RECEIVER_PID=$!
"$BIN/hook_receiver" --listen "127.0.0.1:$H" --hang >"$WORK/hanging.log" 2>&1 & PIDS+=($!); HANGING_PID=$!
for p in "$E" "$R" "$H"; do wait_port "$p"; done

bench_broker_env deep
declare -A PORT PID HELPER
for t in $TARGETS; do
  mkdir -p "$WORK/$t"
  PORT[$t]=$(free_port)
  env=()
  case $t in
    a) : > "$WORK/$t/loaded_plugins"; HELPER[$t]="" ;;
    b) echo '{emqx_exhook, true}.' > "$WORK/$t/loaded_plugins"; HELPER[$t]=$EXHOOK_PID
       env=(BROKER_EXHOOK__SERVERS="[{ name = \"bench\", url = \"http://127.0.0.1:$E\" }]") ;;
    c) echo '{emqx_web_hook, true}.' > "$WORK/$t/loaded_plugins"; HELPER[$t]=$RECEIVER_PID
       env=(BROKER_WEB_HOOK__URL="http://127.0.0.1:$R/hook") ;;
    d) echo '{emqx_web_hook, true}.' > "$WORK/$t/loaded_plugins"; HELPER[$t]=$HANGING_PID
       env=(BROKER_WEB_HOOK__URL="http://127.0.0.1:$H/hook") ;;
  esac
  env "${env[@]}" "$BIN/broker" --data-dir "$WORK/$t" ${PLUGINS_DIR:+--plugins-dir "$PLUGINS_DIR"} \
    --listen "127.0.0.1:${PORT[$t]}" 2>"$WORK/$t.log" &
  PIDS+=($!); PID[$t]=$!
  wait_port "${PORT[$t]}"
done
if [[ " $TARGETS " == *" b "* ]]; then
  "$BIN/broker" --data-dir "$WORK/b" ctl exhook list | grep -q "active=true" || { echo "exhook server not loaded" >&2; exit 1; }
fi

# The plugin's counters, as JSON: the web hook's sent / failed / dropped, the exhook calls.
counters() {
  case $1 in
    b) "$BIN/broker" --data-dir "$WORK/b" ctl exhook stats | awk -F: '/message.publish/ {gsub(/ /, "", $2); print "{\"calls\": " $2 "}"}' ;;
    c|d) "$BIN/broker" --data-dir "$WORK/$1" ctl web_hook status | awk -F: '
           $1 ~ /^(sent|failed|dropped) *$/ {gsub(/ /, "", $1); gsub(/ /, "", $2); v[$1] = $2}
           END {print "{\"sent\": " v["sent"] ", \"failed\": " v["failed"] ", \"dropped\": " v["dropped"] "}"}' ;;
    *) echo "{}" ;;
  esac
}

# The CPU the threads named $2 of process $1 have used, in nanoseconds (0 if it has none).
thread_ns() {
  local task ns=0
  for task in /proc/"$1"/task/*; do
    if [ "$(cat "$task/comm" 2>/dev/null)" = "$2" ]; then ns=$((ns + $(awk '{print $1}' "$task/schedstat"))); fi
  done
  echo "$ns"
}
# The CPU target $1's helper process (its server or receiver) has used, in nanoseconds.
helper_ns() { if [ -n "${HELPER[$1]}" ]; then cpu_ns "${HELPER[$1]}"; else echo 0; fi; }

# scenario qos messages-per-publisher rate (0: as fast as possible)
SCENARIOS=(
  "fan-in 1 $MESSAGES 0"
  "fan-in 0 $MESSAGES 0"
  "fan-in 1 2000 5000"
  "fan-in 1 2000 20000"
)
RESULTS="$WORK/results.jsonl"
for rep in $(seq "$REPS"); do
  for s in "${SCENARIOS[@]}"; do
    read -r scenario qos messages rate <<<"$s"
    for t in $TARGETS; do
      before=$(counters "$t"); cpu0=$(cpu_ns "${PID[$t]}")
      sender0=$(thread_ns "${PID[$t]}" emqx_web_hook); helper0=$(helper_ns "$t")
      out=$("$BIN/bench" --port "${PORT[$t]}" --scenario "$scenario" --qos "$qos" --clients 10 --messages "$messages" \
        --rate "$rate" --timeout 60 --label "$t" --json) \
        || out="{\"label\":\"$t\",\"scenario\":\"fanin\",\"qos\":$qos,\"rate\":$rate,\"failed\":true}"
      cpu1=$(cpu_ns "${PID[$t]}")
      # shellcheck disable=SC2086
      settle "${PID[$t]}" ${HELPER[$t]}
      after=$(counters "$t")
      sender1=$(thread_ns "${PID[$t]}" emqx_web_hook); helper1=$(helper_ns "$t")
      python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["before"]=json.loads(sys.argv[2]); r["after"]=json.loads(sys.argv[3]); r["broker_cpu_ns"]=int(sys.argv[4]); r["sender_cpu_ns"]=int(sys.argv[5]); r["helper_cpu_ns"]=int(sys.argv[6]); print(json.dumps(r))' \
        "$out" "$before" "$after" "$((cpu1 - cpu0))" "$((sender1 - sender0))" "$((helper1 - helper0))" >>"$RESULTS"
    done
  done
  echo "run $rep of $REPS done" >&2
done

python3 - "$RESULTS" "$REPS" "$MESSAGES" <<'PY'
import json, statistics as st, sys
sys.path.insert(0, "bench")
from stats import cpu_us_per_message, format_interval, ratio_interval
rows = [json.loads(l) for l in open(sys.argv[1])]
burst = int(sys.argv[3])
# The table's rows: (qos, rate: 0 as fast as possible, messages a publisher).
ROWS = [(1, 0, burst), (0, 0, burst), (1, 5000, 2000), (1, 20000, 2000)]
names = {"a": "a: no plugins", "b": "b: emqx_exhook, message.publish", "c": "c: emqx_web_hook, receiver 200",
         "d": "d: emqx_web_hook, receiver hanging"}
def runs(t, qos, rate):
    return [r for r in rows if r["label"] == t and r["qos"] == qos and r["rate"] == rate]
def ok_runs(t, qos, rate):
    return [r for r in runs(t, qos, rate) if not r.get("failed")]
def row_name(qos, rate, n):
    """How the tables name a row: QoS 1 at 5000/s, 10×2000."""
    return f"QoS {qos}" + (f" at {rate}/s" if rate else "") + f", 10×{n}"
def med(rs, f):
    ok = [r[f] for r in rs if not r.get("failed")]
    return st.median(ok) if ok else None
print(f"Fan-in 10→1, 64-byte payloads; median of {sys.argv[2]} runs: msgs/s (p50 / p99 latency in µs)\n")
print("| scenario | " + " | ".join(names.values()) + " | b msgs/s vs 20,000 | c/a msgs/s | d/a msgs/s | d/a p99 |")
print("|---" * 9 + "|")
for qos, rate, n in ROWS:
    cells, m = [], {}
    for t in names:
        rs = runs(t, qos, rate)
        m[t] = {f: med(rs, f) for f in ("msgs_per_sec", "p50_us", "p99_us")}
        lost = sum(r["messages"] - r["received"] for r in rs if not r.get("failed"))
        failed = sum(1 for r in rs if r.get("failed"))
        if m[t]["msgs_per_sec"] is None:
            cells.append("failed" if rs else "-")
            continue
        note = (f", {lost} lost" if lost else "") + (f", {failed} runs failed" if failed else "")
        cells.append(f"{m[t]['msgs_per_sec']:.0f} ({m[t]['p50_us']:.0f} / {m[t]['p99_us']:.0f}){note}")
    ratio = lambda x, y, f: "-" if not m[x][f] or not m[y][f] else f"{m[x][f] / m[y][f]:.2f}"
    b = m["b"]["msgs_per_sec"]
    print(f"| {row_name(qos, rate, n)} | " + " | ".join(cells) +
          f" | {'-' if b is None else f'{b / 20000:.2f}×'} | {ratio('c','a','msgs_per_sec')} | {ratio('d','a','msgs_per_sec')} | {ratio('d','a','p99_us')} |")
def values(t, qos, rate, f):
    return [r[f] for r in ok_runs(t, qos, rate)]
print("\nHow far each ratio of medians can be trusted: its 95 % bootstrap interval (each side's runs")
print("drawn again with replacement, 2000 times)\n")
print("| scenario | b msgs/s vs 20,000 | c/a msgs/s | d/a msgs/s | d/a p99 |")
print("|---" * 5 + "|")
for qos, rate, n in ROWS:
    iv = lambda x, y, f: format_interval(ratio_interval(values(x, qos, rate, f), values(y, qos, rate, f)))
    goal = format_interval(ratio_interval(values("b", qos, rate, "msgs_per_sec"), [20000, 20000]))
    print(f"| {row_name(qos, rate, n)} | {goal} | {iv('c', 'a', 'msgs_per_sec')} | {iv('d', 'a', 'msgs_per_sec')} | {iv('d', 'a', 'p99_us')} |")
print("\nPer run (medians): what the plugins did")
print("\n| scenario | b: exhook calls | c: web hook sent / failed / dropped | d: web hook sent / failed / dropped |")
print("|---|---|---|---|")
for qos, rate, n in ROWS:
    def delta(t, k):
        return st.median([r["after"].get(k, 0) - r["before"].get(k, 0) for r in runs(t, qos, rate)] or [0])
    c = " / ".join(f"{delta('c', k):.0f}" for k in ("sent", "failed", "dropped"))
    d = " / ".join(f"{delta('d', k):.0f}" for k in ("sent", "failed", "dropped"))
    print(f"| {row_name(qos, rate, n)} | {delta('b', 'calls'):.0f} | {c} | {d} |")
print("\nWhat one web hook event sent cost (c): the plugin's sending thread's CPU and the receiver's,")
print("from the start of a run until both were idle again, over the events sent then; medians, µs\n")
print("| scenario | sending thread | receiver |")
print("|---|---|---|")
for qos, rate, n in ROWS:
    def per_event(key):
        costs = [r[key] / 1000 / sent for r in runs("c", qos, rate)
                 if (sent := r["after"].get("sent", 0) - r["before"].get("sent", 0)) > 0]
        return f"{st.median(costs):.1f}" if costs else "-"
    print(f"| {row_name(qos, rate, n)} | {per_event('sender_cpu_ns')} | {per_event('helper_cpu_ns')} |")
print("\nEvery run as fast as possible, slowest first: msgs/s (the broker's CPU, µs per message;")
print("it is busy, not idle, in the slow runs: see the README's \"A burst's two speeds\")\n")
print("| scenario | " + " | ".join(names.values()) + " |")
print("|---" * 5 + "|")
for qos, _, n in (row for row in ROWS if row[1] == 0):
    cells = []
    for t in names:
        rs = sorted(ok_runs(t, qos, 0), key=lambda r: r["msgs_per_sec"])
        cells.append(", ".join(f"{r['msgs_per_sec']:.0f} ({cpu_us_per_message(r):.1f})" for r in rs) or "-")
    print(f"| {row_name(qos, 0, n)} | " + " | ".join(cells) + " |")
PY
