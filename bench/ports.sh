# shellcheck shell=bash
# Sourced by the bench scripts: a free loopback port, waiting until something listens on one,
# the CPU a process has used, waiting for processes to go idle, the run's workspace, and the
# environment the brokers run with.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 400); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; return 1
}

# The CPU time process $1 has used so far (user + system), in clock ticks (`getconf CLK_TCK`).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# The CPU time process $1's threads have run so far, in nanoseconds (the scheduler's count,
# /proc/PID/task/*/schedstat: finer than clock ticks; a thread that ended is not counted).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ns += $1} END {printf "%.0f\n", ns}'; }

# Waits (up to 5 s) until the processes given have used no CPU for 100 ms: a broker may still
# be busy after a run (mosquitto spends up to half a second cleaning up; the web hook's thread
# and its receiver go on sending what was queued), and that work must not fall on the next
# run of another broker.
settle() {
  local before after
  for _ in $(seq 50); do
    before=$(for pid in "$@"; do cpu_ticks "$pid"; done); sleep 0.1; after=$(for pid in "$@"; do cpu_ticks "$pid"; done)
    [ "$before" = "$after" ] && return 0
  done
}

# The run's workspace: WORK, a temporary directory removed at exit, and PIDS, the processes the
# script starts (append each one's pid), killed at exit.
bench_workspace() {
  WORK=$(mktemp -d)
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}

# Exports the environment of every broker a benchmark starts: no telemetry report, the
# management API and the dashboard on ports of their own choosing (brokers run side by side),
# warnings only in the log (`bench_broker_env default`). With `deep`, also session queues as
# deep as mosquitto's unlimited ones (`max_queued_messages`; EMQX's default is 1000), so that a
# throughput run measures speed and not what a full queue does, and no `max_conn_rate`
# (default 1000/s), as the brokers compared have none. The other programs a script starts
# ignore these variables.
bench_broker_env() {
  export DO_NOT_TRACK=1 BROKER_MANAGEMENT__LISTEN=127.0.0.1:0 BROKER_DASHBOARD__LISTEN=127.0.0.1:0 RUST_LOG=warn
  case $1 in
    default) ;;
    deep) export BROKER_MQTT__MAX_MQUEUE_LEN=1000000 BROKER_MQTT__MAX_CONN_RATE=0 ;;
    *) echo "bench_broker_env: default or deep, not '$1'" >&2; return 2 ;;
  esac
}
