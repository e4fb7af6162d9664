#!/usr/bin/env bash
# Cluster benchmarks: launch latency, 1,000 tasks on one agent, master
# memory per agent and per task; and agent and master restart. Builds in release mode and prints Markdown tables.
#
#   sudo benches/cluster/run.sh [--only launch|many|memory|agent-restart|master-restart] [--quick] [--no-build]
#
# launch and many run twice: with the agent's runtime directory (shim run dirs, event
# FIFOs) on the root disk (ext4 here, like /run on this VM), then on a tmpfs that the
# script mounts (like /run on most systems) and unmounts on exit.
#
# Needs root (the agent creates cgroups and namespaces). Real master and agent
# processes over mutual TLS on 127.0.0.1; scratch directories under
# $CELLA_BENCH_DIR (default /var/tmp), removed afterwards. Raw results (JSON lines)
# go to $CELLA_BENCH_OUT (default target/bench-cluster/results.jsonl).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="$root/target/bench-cluster"
only="" quick=0 build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-build) build=0; shift ;;
    *) echo "usage: $0 [--only launch|many|memory|agent-restart|master-restart] [--quick] [--no-build]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (cgroups, namespaces)" >&2; exit 1; }

if [ "$build" = 1 ]; then
  # The shim from the workspace (shared target dir), the benches in their own.
  (cd "$root" && cargo build --release -p cella-containerizer --bin cella-shim)
  cargo bench --manifest-path "$here/Cargo.toml" --target-dir "$target" --no-run
fi
export CELLA_SHIM="${CELLA_SHIM:-$root/target/release/cella-shim}"
export CELLA_BENCH_OUT="${CELLA_BENCH_OUT:-$target/results.jsonl}"
mkdir -p "$(dirname "$CELLA_BENCH_OUT")"

echo "## Cluster benchmarks ($(date -u '+%Y-%m-%d %H:%M UTC'), $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo
echo "- machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
echo "- scratch: ${CELLA_BENCH_DIR:-/var/tmp} ($(df -T "${CELLA_BENCH_DIR:-/var/tmp}" | awk 'NR==2 {print $2}'))"
echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg); CPU pressure: $(head -1 /proc/pressure/cpu 2>/dev/null)"

tmpfs="$target/tmpfs-run"
cleanup() { mountpoint -q "$tmpfs" && umount "$tmpfs"; rmdir "$tmpfs" 2>/dev/null || true; }
trap cleanup EXIT
mkdir -p "$tmpfs"
mountpoint -q "$tmpfs" || mount -t tmpfs -o size=4g,mode=0755 cella-bench "$tmpfs"

bench() {
  local name="$1" title="$2"; shift 2
  local target_name="${name//-/_}"
  [ -z "$only" ] || [ "$only" = "$name" ] || return 0
  echo
  echo "### $title"
  # Only the Markdown (and RESULT lines) on stdout; progress goes to stderr.
  cargo bench --manifest-path "$here/Cargo.toml" --target-dir "$target" -q --bench "$target_name" -- "$@" \
    | grep -v '^RESULT '
}
if [ "$quick" = 1 ]; then
  launch_args=(--runs 20 --warmup 3)
  many_args=(--tasks 200 --concurrency default,8 --repeats 1)
  memory_args=(--sizes 200x0,400x0,200x10 --repeats 1)
  agent_restart_args=(--tasks 200 --runs 1)
  master_restart_args=(--agents 200 --runs 1)
else
  launch_args=(--runs 60 --warmup 5)
  many_args=(--tasks 1000 --concurrency default,2,4,8,16 --repeats 2)
  memory_args=(--sizes 500x0,1000x0,2000x0,1000x10,1000x20,2000x10 --repeats 2)
  agent_restart_args=(--tasks 1000 --runs 3)
  master_restart_args=(--agents 1000 --tasks-per-agent 10 --runs 3)
fi
bench launch "launch: runtime dir on the root disk" "${launch_args[@]}"
CELLA_BENCH_RUNTIME_DIR="$tmpfs" bench launch "launch: runtime dir on a tmpfs" "${launch_args[@]}"
bench many "many: runtime dir on the root disk" "${many_args[@]}"
CELLA_BENCH_RUNTIME_DIR="$tmpfs" bench many "many: runtime dir on a tmpfs" "${many_args[@]}"
bench memory "memory" "${memory_args[@]}"
# Recovery: the agent's runtime directory on the tmpfs, as on most systems.
CELLA_BENCH_RUNTIME_DIR="$tmpfs" bench agent-restart "agent-restart: 1,000 tasks, agent SIGKILL and restart (runtime dir on a tmpfs)" "${agent_restart_args[@]}"
bench master-restart "master-restart: 1,000 simulated agents, 10,000 tasks, master SIGKILL and restart" "${master_restart_args[@]}"
echo
echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg); CPU pressure: $(head -1 /proc/pressure/cpu 2>/dev/null)"
echo "- (the many benchmark itself raises the load average: up to ~500 agent threads wait in D state in"
echo "  rmdir of cgroups while 1,000 tasks are torn down, so compare the CPU pressure, not the load)"
