# Shared by the example scripts (sourced, not run): error exit, free-port check, stopping every
# started process on exit or Ctrl-C, and waiting for a process to be ready.
# The caller sets EXAMPLE (its name, for messages) and appends started PIDs to PIDS.

die() {
  printf '%s: %s\n' "$EXAMPLE" "$*" >&2
  exit 1
}

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found; install it and retry"
  done
}
port_free() { ! (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
ports_free() {
  local addr
  for addr in "$@"; do
    port_free "$addr" || die "$addr is already in use; stop what listens there and retry"
  done
}

PIDS=()
# shellcheck disable=SC2317  # reached through the traps below, which ShellCheck 0.9 misses
cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # Give each a few seconds to finish, then insist.
    for _ in {1..50}; do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  exit "$status"
}
trap cleanup EXIT
trap 'echo; echo "stopping"; exit 0' INT
trap 'exit 143' TERM

# Poll COMMAND for up to 30 s while PID lives.
wait_until() {
  local what="$1" pid="$2"
  shift 2
  for _ in {1..300}; do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || die "$what exited before it was ready (its output is above)"
    sleep 0.1
  done
  die "$what was not ready after 30 s"
}

# Runs until Ctrl-C, or until one of PIDS exits on its own.
run_until_stopped() {
  local status=0
  wait -n "${PIDS[@]}" || status=$?
  echo "$EXAMPLE: a process exited on its own (status $status); stopping the others" >&2
  exit 1
}
