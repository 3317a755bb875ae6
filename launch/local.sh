#!/usr/bin/env bash
# Usage: launch/local.sh N [--log_dir=DIR] ARGS...
#
# Runs N processes of `python -m vision_jax.main ARGS...` on this machine as one JAX
# multi-host job: CPU backend, coordinator on 127.0.0.1 at a free port, collectives over
# gloo. This is how to try multi-host (and how the tests check it) without a cluster:
#
#   launch/local.sh 2 --config configs/default.py --workdir /tmp/vision_jax/mp
#
# Each process gets one CPU device unless XLA_FLAGS says otherwise
# (XLA_FLAGS=--xla_force_host_platform_device_count=K gives each K). Logs go to
# DIR/process_<i>.log (default: <workdir>/logs); process 0's log is followed on stdout.
# Waits for all processes; if one fails, the others are stopped and the script exits
# with the failing process's status (non-zero).
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
num_processes=$1
shift

log_dir=""
workdir=""
args=()
prev=""
for arg in "$@"; do
  case "$arg" in
    --log_dir=*) log_dir=${arg#--log_dir=} ;;
    *)
      args+=("$arg")
      case "$arg" in --workdir=*) workdir=${arg#--workdir=} ;; esac
      if [[ "$prev" == "--workdir" ]]; then workdir=$arg; fi
      ;;
  esac
  prev=$arg
done
if [[ -z "$log_dir" ]]; then
  if [[ -z "$workdir" ]]; then
    echo "local.sh: pass --workdir (logs go to <workdir>/logs) or --log_dir=DIR." >&2
    exit 2
  fi
  log_dir=$workdir/logs
fi
mkdir -p "$log_dir"
log_dir=$(cd "$log_dir" && pwd)
# Relative paths in ARGS stay relative to the caller's directory; the package is found
# from the repository this script lives in.
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

# A port that was free a moment ago (the kernel picks it; a race is possible but rare).
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT TERM

for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu python -m vision_jax.main \
    --coordinator_address="127.0.0.1:$port" --num_processes="$num_processes" \
    --process_id="$i" "${args[@]}" >"$log_dir/process_$i.log" 2>&1 &
  pids+=("$!")
done
echo "local.sh: $num_processes processes on 127.0.0.1:$port (pids ${pids[*]}); logs in $log_dir" >&2
tail -n +1 -f --pid="${pids[0]}" "$log_dir/process_0.log" &
tail_pid=$!

status=0
failed=""
running=("${pids[@]}")
while ((${#running[@]})); do
  finished=""
  wait -n -p finished "${running[@]}" || status=$?
  remaining=()
  for pid in "${running[@]}"; do
    if [[ "$pid" != "$finished" ]]; then remaining+=("$pid"); fi
  done
  running=("${remaining[@]}")
  if ((status)); then
    for ((i = 0; i < num_processes; i++)); do
      if [[ "${pids[$i]}" == "$finished" ]]; then failed=$i; fi
    done
    break
  fi
done

if [[ -n "$failed" ]]; then
  cleanup
  wait "${pids[@]}" 2>/dev/null || true
  kill "$tail_pid" 2>/dev/null || true
  echo "local.sh: process $failed exited with status $status; stopped the others." \
       "Last lines of $log_dir/process_$failed.log:" >&2
  tail -n 20 "$log_dir/process_$failed.log" >&2
  exit "$status"
fi
wait "$tail_pid" 2>/dev/null || true
echo "local.sh: all $num_processes processes finished." >&2
