# Sourced by the bench scripts: a free loopback port, waiting until something listens on one,
# the CPU a process has used, waiting for processes to go idle, and the run's workspace.
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
    before=$(for p in "$@"; do cpu_ticks "$p"; done); sleep 0.1; after=$(for p in "$@"; do cpu_ticks "$p"; done)
    [ "$before" = "$after" ] && return 0
  done
}

# The run's workspace: WORK, a temporary directory removed at exit, and PIDS, the processes the
# script starts (append each one's pid), killed at exit.
bench_workspace() {
  WORK=$(mktemp -d)
  PIDS=()
  trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
}
