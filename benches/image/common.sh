# Sourced by the image benchmarks: the checks they start with, a temporary work
# directory removed at exit (also on failure) with the registry they run in it, and
# that registry on loopback.

# bench_setup NAME TOOL...: root, the tools, the repository's top as the current
# directory, and $work.
bench_setup() {
    local name=$1 tool
    shift
    cd "$(dirname "${BASH_SOURCE[0]}")/../.."
    [ "$(id -u)" = 0 ] || { echo "$name: run as root" >&2; exit 2; }
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$name: $tool missing: scripts/install-test-deps.sh" >&2; exit 2; }
    done
    work=$(mktemp -d "${TMPDIR:-/var/tmp}/cella-$name.XXXXXX")
    registry_pid=
    trap bench_cleanup EXIT
}

bench_cleanup() {
    local status=$?
    if [ -n "$registry_pid" ]; then
        kill "$registry_pid" 2>/dev/null || true
        wait "$registry_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$status"
}

# start_registry: docker-registry on a free loopback port, storing in $work/registry;
# sets $host (127.0.0.1:PORT) once it answers.
start_registry() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    host=127.0.0.1:$port
    cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $host
YML
    docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
    registry_pid=$!
    for _ in $(seq 100); do
        curl -fsS "http://$host/v2/" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "docker-registry did not answer on $host: $work/registry.log" >&2
    exit 1
}
