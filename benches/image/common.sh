# Sourced by the image benchmarks: the checks they start with, a temporary work
# directory removed at exit (also on failure) with the registry they run in it, and
# that registry on loopback.

# bench_setup NAME TOOL...: root, the tools, the repository's top as the current
# directory, and $work.
#
# With CELLA_BENCH_FS=ext4 (or ext4-nojournal) $work is on a new ext4 file system with
# (or without) a journal, on a loop device over a sparse file beside it, mounted with
# `discard` like this machine's root: two runs that differ in the journal alone. On
# ext4 without a journal the kernel, allocating an inode, steps over every inode of
# the block group freed in the last 30-35 seconds (`recently_deleted` in
# fs/ext4/ialloc.c), so the time of anything that creates files depends on what was
# deleted nearby just before (see docs/benchmarks.md, "Launch from an image").
bench_setup() {
    local name=$1 tool
    shift
    cd "$(dirname "${BASH_SOURCE[0]}")/../.."
    [ "$(id -u)" = 0 ] || { echo "$name: run as root" >&2; exit 2; }
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$name: $tool missing: scripts/install-test-deps.sh" >&2; exit 2; }
    done
    registry_pid= work= fs_mount= fs_loop=
    trap bench_cleanup EXIT
    case "${CELLA_BENCH_FS:-}" in
    "")
        work=$(mktemp -d "${TMPDIR:-/var/tmp}/cella-$name.XXXXXX")
        ;;
    ext4 | ext4-nojournal)
        local features=()
        [ "$CELLA_BENCH_FS" = ext4 ] || features=(-O ^has_journal)
        fs_mount=$(mktemp -d "${TMPDIR:-/var/tmp}/cella-$name-fs.XXXXXX")
        truncate -s 8G "$fs_mount.img"
        mkfs.ext4 -q -F "${features[@]}" "$fs_mount.img"
        fs_loop=$(losetup -f --show "$fs_mount.img")
        mount -o discard "$fs_loop" "$fs_mount"
        work=$fs_mount/work
        mkdir "$work"
        ;;
    *)
        echo "$name: CELLA_BENCH_FS is ext4 or ext4-nojournal, not '$CELLA_BENCH_FS'" >&2
        exit 2
        ;;
    esac
}

bench_cleanup() {
    local status=$?
    if [ -n "$registry_pid" ]; then
        kill "$registry_pid" 2>/dev/null || true
        wait "$registry_pid" 2>/dev/null || true
    fi
    [ -z "$work" ] || rm -rf "$work"
    if [ -n "$fs_mount" ]; then
        umount "$fs_mount" 2>/dev/null || umount -l "$fs_mount" 2>/dev/null || true
        [ -z "$fs_loop" ] || losetup -d "$fs_loop" 2>/dev/null || true
        rm -f "$fs_mount.img"
        rmdir "$fs_mount" 2>/dev/null || true
    fi
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
