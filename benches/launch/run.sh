#!/usr/bin/env bash
# Launch-to-exit benchmark of `cella exec` against crun and a bare `unshare`, side by
# side in one session (see docs/benchmarks.md, "Launch").
#
#   sudo benches/launch/run.sh [--out FILE] [--runs N] [--warmup N] [--rounds N]
#                              [--no-build] [--breakdown | --no-breakdown]
#
# Environment (same meaning as the options): CELLA_BENCH_RUNS (200), CELLA_BENCH_WARMUP
# (20), CELLA_BENCH_ROUNDS (4), CELLA_BENCH_BREAKDOWN (auto|yes|no),
# CELLA_BENCH_BREAKDOWN_RUNS (30).
#
# What it does, all in a temporary directory removed at exit (also on failure):
#  1. builds the release binaries and copies cella + cella-shim aside (a concurrent
#     cargo build cannot swap them during the measurement);
#  2. a minimal rootfs from busybox-static (/bin/busybox, sh, true, sleep, grep, cat);
#  3. OCI bundles for crun on the same rootfs (benches/launch/oci_bundle.py): Cella's
#     default isolation, with Cella's seccomp profile converted to `linux.seccomp`,
#     and the same without seccomp;
#  4. times /bin/true with hyperfine -N, RUNS per variant, in ROUNDS interleaved rounds:
#     (a) cella --rootfs, (b) cella --rootfs --seccomp unconfined, (c) cella on the
#     host tree, (d) crun with seccomp, (e) crun without, (f) unshare baseline. crun
#     gets a fresh container id per run; on a hybrid cgroup host it runs inside
#     `unshare -m --propagation private` after `umount /sys/fs/cgroup/unified` (it
#     refuses hybrid hosts otherwise);
#  5. the shim's resident memory (VmRSS, Pss) while `cella exec -- sleep 5` runs;
#  6. if cella misses the 3.5 ms goal (or with --breakdown) and strace is installed,
#     a phase breakdown of a cella launch (benches/launch/breakdown.py), then, with a
#     C compiler, mechanism probes (probes.c: seccomp load, cgroup v1 attach);
#  7. prints a Markdown report on stdout (and to --out FILE). Progress goes to stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
RUNS=${CELLA_BENCH_RUNS:-200}
WARMUP=${CELLA_BENCH_WARMUP:-20}
ROUNDS=${CELLA_BENCH_ROUNDS:-4}
BREAKDOWN=${CELLA_BENCH_BREAKDOWN:-auto}
BREAKDOWN_RUNS=${CELLA_BENCH_BREAKDOWN_RUNS:-30}
OUT=""
BUILD=1
GOAL_MS=3.5

log() { printf '[launch-bench] %s\n' "$*" >&2; }
die() { printf '[launch-bench] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=${2:?--out needs a file}; shift 2 ;;
        --runs) RUNS=${2:?}; shift 2 ;;
        --warmup) WARMUP=${2:?}; shift 2 ;;
        --rounds) ROUNDS=${2:?}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --breakdown) BREAKDOWN=yes; shift ;;
        --no-breakdown) BREAKDOWN=no; shift ;;
        -h|--help) usage 0 ;;
        *) log "unknown option: $1"; usage 2 ;;
    esac
done
for v in RUNS WARMUP ROUNDS BREAKDOWN_RUNS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got ${!v})"
done
[ "$RUNS" -ge "$ROUNDS" ] && [ "$ROUNDS" -ge 1 ] || die "need RUNS >= ROUNDS >= 1"
case "$BREAKDOWN" in auto|yes|no) ;; *) die "CELLA_BENCH_BREAKDOWN must be auto, yes or no" ;; esac
[ "$(id -u)" = 0 ] || die "run as root (sudo $0): cella and crun create cgroups and namespaces"

missing=()
for c in hyperfine crun unshare python3 busybox; do
    command -v "$c" >/dev/null || missing+=("$c")
done
[ "$BUILD" = 0 ] || command -v cargo >/dev/null || missing+=(cargo)
[ ${#missing[@]} = 0 ] || die "missing: ${missing[*]} (scripts/install-test-deps.sh installs crun, hyperfine, busybox-static)"
BUSYBOX=$(readlink -f "$(command -v busybox)")
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked: install busybox-static (apt-get install busybox-static)"
fi

# ---------------------------------------------------------------- cleanup (trap)
WORK=""
MEM_PID=""
CRUN_PREFIX="cellabench-$$-"
HYBRID=0
if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" = tmpfs ] &&
   [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
    HYBRID=1
fi
# Run a shell snippet where crun works: on a hybrid host, in a private mount namespace
# without the v2 hierarchy. crun then also creates its v2 directory as a plain
# directory in the tmpfs under the mount point; crun_sweep removes ours.
crun_sh() {
    if [ "$HYBRID" = 1 ]; then
        unshare -m --propagation private sh -c "umount /sys/fs/cgroup/unified || exit 125; $1"
    else
        sh -c "$1"
    fi
}
CRUN_SWEEP="for c in \$(crun list -q 2>/dev/null | grep '^${CRUN_PREFIX}'); do crun delete -f \"\$c\" >/dev/null 2>&1; done;
    if [ $HYBRID = 1 ] && cd /sys/fs/cgroup/unified 2>/dev/null; then
        for d in ${CRUN_PREFIX}*; do [ -d \"\$d\" ] || continue; rm -f \"\$d/cgroup.procs\"; rmdir \"\$d\"; done
    fi"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$MEM_PID" ] && kill -0 "$MEM_PID" 2>/dev/null; then
        kill -TERM "$MEM_PID" 2>/dev/null || true   # cella forwards it and cleans up
        wait "$MEM_PID" 2>/dev/null || true
    fi
    crun_sh "$CRUN_SWEEP" >/dev/null 2>&1 || true
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        # A bind mount left by an interrupted launch would make rm -rf cross into it.
        if grep -q " $WORK/" /proc/self/mountinfo; then
            log "mounts under $WORK are still present; not removing it: $(grep " $WORK/" /proc/self/mountinfo | awk '{print $5}' | tr '\n' ' ')"
        else
            rm -rf "$WORK"
        fi
    fi
    [ $rc = 0 ] || log "failed (exit $rc); temporary files removed"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d /tmp/cella-launch-bench.XXXXXX)
chmod 755 "$WORK"
META="$WORK/meta"
: > "$META"
meta() { printf '%s=%s\n' "$1" "$2" >> "$META"; }

# ---------------------------------------------------------------- 1. build
if [ "$BUILD" = 1 ]; then
    log "building release binaries (cargo may wait for the shared target dir lock)"
    (cd "$REPO" && cargo build --release -p cella-cli -p cella-containerizer) >&2
fi
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
mkdir -p "$WORK/bin"
for b in cella cella-shim; do
    [ -x "$TARGET/release/$b" ] || die "$TARGET/release/$b not found (build failed?)"
    cp "$TARGET/release/$b" "$WORK/bin/$b"
done
CELLA="$WORK/bin/cella"

# ---------------------------------------------------------------- 2. rootfs
ROOT="$WORK/rootfs"
SANDBOX="$WORK/sandbox"
mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp,etc,mnt/sandbox} "$SANDBOX"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for app in sh true sleep grep cat; do ln -s busybox "$ROOT/bin/$app"; done
[ -x "$ROOT/bin/true" ] || die "rootfs has no /bin/true"

# ---------------------------------------------------------------- 3. OCI bundles
PROFILE="$REPO/containerizer/profiles/default.json"
make_bundle() { # NAME [oci_bundle.py options...]
    local dir="$WORK/$1"; shift
    mkdir -p "$dir"
    (cd "$dir" && crun spec)
    python3 "$HERE/oci_bundle.py" "$dir/config.json" "$ROOT" "$SANDBOX" "$PROFILE" "$@"
}
make_bundle bundle-seccomp
make_bundle bundle-noseccomp --no-seccomp
make_bundle bundle-sleep --arg /bin/sleep --arg 5
make_bundle bundle-check --arg /bin/grep --arg -E \
    --arg '^(NoNewPrivs|Seccomp|Seccomp_filters|CapBnd|CapEff):' --arg /proc/self/status

# ---------------------------------------------------------------- metadata
loadavg() { # load average, and CPU / IO pressure (avg10) when the kernel has PSI
    local l; l=$(cut -d' ' -f1-3 /proc/loadavg)
    if [ -r /proc/pressure/cpu ]; then
        l+=" (PSI avg10 cpu $(awk '/^some/ {sub("avg10=", "", $2); print $2}' /proc/pressure/cpu)%"
        l+=", io $(awk '/^some/ {sub("avg10=", "", $2); print $2}' /proc/pressure/io)%)"
    fi
    printf '%s' "$l"
}
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta git "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo ' (working tree with uncommitted changes)')"
[ "$BUILD" = 1 ] || meta git_note "binaries not rebuilt (--no-build): cella built $(date -u -r "$TARGET/release/cella" '+%Y-%m-%d %H:%M UTC')"
meta rustc "$(rustc --version 2>/dev/null || echo 'rustc ?')"
meta cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
meta nproc "$(nproc)"
meta mem "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
meta kernel "$(uname -r)"
if [ "$HYBRID" = 1 ]; then meta cgroup_mode "v1 (hybrid)"; elif [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then meta cgroup_mode "v2 (unified)"; else meta cgroup_mode "v1 (legacy)"; fi
meta run_fs "$(findmnt -n -o FSTYPE -T /run 2>/dev/null || stat -f -c %T /run)"
meta crun "$(crun --version | head -1)"
meta hyperfine "$(hyperfine --version)"
meta busybox "$("$BUSYBOX" | head -1 | cut -d' ' -f1-2)"
meta runs "$RUNS"
meta rounds "$ROUNDS"
meta warmup "$WARMUP"
WARMUP_LATER=$(( WARMUP / ROUNDS > 2 ? WARMUP / ROUNDS : 2 ))
[ "$WARMUP" -gt 0 ] || WARMUP_LATER=0
meta warmup_later "$WARMUP_LATER"
mkdir -p /run/cella/exec
meta fsync "$(python3 "$HERE/report.py" fsync /run/cella/exec)"

# ---------------------------------------------------------------- sanity + isolation check
cd "$SANDBOX"
log "checking that every variant runs"
"$CELLA" exec --rootfs "$ROOT" -- /bin/true
"$CELLA" exec --rootfs "$ROOT" --seccomp unconfined -- /bin/true
"$CELLA" exec -- /bin/true
unshare --pid --mount --net --uts --ipc --fork /bin/true
meta check_cella "$("$CELLA" exec --rootfs "$ROOT" -- /bin/grep -E '^(NoNewPrivs|Seccomp|Seccomp_filters|CapBnd|CapEff):' /proc/self/status | tr -s '\t\n' ' ')"
meta check_crun "$(crun_sh "crun run --bundle '$WORK/bundle-check' ${CRUN_PREFIX}check; rc=\$?; $CRUN_SWEEP; exit \$rc" | tr -s '\t\n' ' ')"
crun_sh "crun run --bundle '$WORK/bundle-seccomp' ${CRUN_PREFIX}s0 && crun run --bundle '$WORK/bundle-noseccomp' ${CRUN_PREFIX}n0; rc=\$?; $CRUN_SWEEP; exit \$rc" \
    || die "crun cannot run the bundle (see above)"

# ---------------------------------------------------------------- 4. timing rounds
ids() { # PREFIX COUNT -> comma-separated PREFIX1..PREFIXCOUNT
    local i out=""
    for ((i = 1; i <= $2; i++)); do out+="${out:+,}$1$i"; done
    printf '%s' "$out"
}
base=$(( RUNS / ROUNDS )); extra=$(( RUNS % ROUNDS ))
for ((r = 1; r <= ROUNDS; r++)); do
    n=$base; [ "$r" -le "$extra" ] && n=$(( n + 1 ))
    w=$WARMUP; [ "$r" = 1 ] || w=$WARMUP_LATER
    meta load "round $r: $(loadavg)"
    log "round $r/$ROUNDS: $n runs per variant (warm-up $w); load $(loadavg)"
    hyperfine -N --style basic --warmup "$w" --runs "$n" --export-json "$WORK/hf-$r-cella.json" \
        -n cella-rootfs "$CELLA exec --rootfs $ROOT -- /bin/true" \
        -n cella-rootfs-unconfined "$CELLA exec --rootfs $ROOT --seccomp unconfined -- /bin/true" \
        -n cella-host "$CELLA exec -- /bin/true" \
        -n unshare "unshare --pid --mount --net --uts --ipc --fork /bin/true" >&2
    # crun: one hyperfine benchmark of one run per container id, so that every run has
    # a fresh id; the warm-up runs use their own ids and are not recorded.
    script="set +e; cd '$SANDBOX'"
    if [ "$w" -gt 0 ]; then
        script+="; hyperfine -N --style none --runs 1 --parameter-list id '$(ids "r$r-w" "$w")' \
            'crun run --bundle $WORK/bundle-seccomp ${CRUN_PREFIX}s-{id}' \
            'crun run --bundle $WORK/bundle-noseccomp ${CRUN_PREFIX}n-{id}' >/dev/null"
    fi
    script+="; hyperfine -N --style none --runs 1 --export-json '$WORK/hf-$r-crun.json' \
        --parameter-list id '$(ids "r$r-" "$n")' \
        'crun run --bundle $WORK/bundle-seccomp ${CRUN_PREFIX}s-{id}' \
        'crun run --bundle $WORK/bundle-noseccomp ${CRUN_PREFIX}n-{id}'; rc=\$?; $CRUN_SWEEP; exit \$rc"
    crun_sh "$script" >&2 || die "crun timing failed in round $r"
    log "round $r: crun median $(python3 "$HERE/report.py" median "$WORK" crun-seccomp) ms with seccomp, $(python3 "$HERE/report.py" median "$WORK" crun-noseccomp) ms without (cumulative)"
done
meta load "end: $(loadavg)"

# ---------------------------------------------------------------- 5. shim memory
log "measuring the shim's memory while 'sleep 5' runs"
( cd "$SANDBOX" && exec "$CELLA" exec -- sleep 5 ) &
MEM_PID=$!
RUN_DIR="/run/cella/exec/tasks/exec-$MEM_PID"
for _ in $(seq 100); do [ -s "$RUN_DIR/task.pid" ] && break; sleep 0.05; done
SHIM_PID=$(cut -d' ' -f1 "$RUN_DIR/shim.pid" 2>/dev/null || pgrep -P "$MEM_PID" -x cella-shim || true)
[ -n "$SHIM_PID" ] || die "could not find the cella-shim of task exec-$MEM_PID"
sleep 0.5
python3 "$HERE/report.py" procmem "$SHIM_PID" "cella-shim (one per running task)" >> "$WORK/mem.jsonl"
python3 "$HERE/report.py" procmem "$MEM_PID" "cella exec (the launcher, for reference)" >> "$WORK/mem.jsonl"
wait "$MEM_PID" || die "cella exec -- sleep 5 failed"
MEM_PID=""
crun_sh "crun run --bundle '$WORK/bundle-sleep' ${CRUN_PREFIX}mem & p=\$!; sleep 1;
    python3 '$HERE/report.py' procmem \$p 'crun run (parent of the container, for reference)' >> '$WORK/mem.jsonl';
    wait \$p; rc=\$?; $CRUN_SWEEP; exit \$rc" >&2 || log "crun memory reference failed (ignored)"
meta fsync "$(python3 "$HERE/report.py" fsync /run/cella/exec)"

# ---------------------------------------------------------------- 6. breakdown
median=$(python3 "$HERE/report.py" median "$WORK" cella-rootfs)
slow=$(python3 -c "print(1 if $median > $GOAL_MS else 0)")
if [ "$BREAKDOWN" = yes ] || { [ "$BREAKDOWN" = auto ] && [ "$slow" = 1 ]; }; then
    if command -v strace >/dev/null; then
        log "breaking a launch down ($BREAKDOWN_RUNS traced runs)"
        python3 "$HERE/breakdown.py" --runs "$BREAKDOWN_RUNS" --out "$WORK/breakdown.md" \
            -- "$CELLA" exec --rootfs "$ROOT" -- /bin/true >/dev/null \
            || log "breakdown failed (ignored)"
    else
        log "strace is not installed: no breakdown (apt-get install -y strace, then --breakdown)"
    fi
fi
# Mechanism probes (with the breakdown): seccomp load time of cella's program against a
# compact range tree over the same allowlist; cgroup v1 attach by the parent vs. by the
# child itself. Needs a C compiler.
if [ -s "$WORK/breakdown.md" ] && command -v cc >/dev/null; then
    log "mechanism probes (seccomp load, cgroup v1 attach)"
    {
        cc -O2 -o "$WORK/probes" "$HERE/probes.c"
        prog=$(ls -t "$TARGET"/release/build/cella-containerizer-*/out/default_seccomp.bpf 2>/dev/null | head -1)
        if [ -n "$prog" ]; then
            python3 "$HERE/seccomp_size.py" "$prog" "$WORK/compact.bpf"
            "$WORK/probes" seccomp 100 "$prog" "$WORK/compact.bpf"
        fi
        if [ "$(stat -f -c %T /sys/fs/cgroup)" = tmpfs ]; then
            dirs=()
            for c in memory cpu pids cpuacct blkio freezer; do
                own=$(awk -F: -v c="$c" '{n=split($2, a, ","); for (i = 1; i <= n; i++) if (a[i] == c) print $3}' /proc/self/cgroup | head -1)
                [ -d "/sys/fs/cgroup/$c" ] && [ -n "$own" ] && dirs+=("/sys/fs/cgroup/$c${own%/}")
            done
            "$WORK/probes" attach 100 20000 "${dirs[@]}"
        fi
    } > "$WORK/probes.txt" 2>&1 || log "probes failed (ignored): $(tail -1 "$WORK/probes.txt")"
fi
if [ "$slow" = 1 ]; then
    cat > "$WORK/hints.md" <<EOF
### cella is over the ${GOAL_MS} ms goal: how to find out why (no perf needed)

- \`sudo benches/launch/run.sh --breakdown --runs 40 --rounds 1\` cuts a launch into phases
  with strace (\`apt-get install -y strace\`); \`benches/launch/breakdown.py\` also runs on
  its own: \`breakdown.py -- target/release/cella exec --rootfs DIR -- /bin/true\`.
- Slow syscalls of one launch: \`strace -f -ttt -T -o /tmp/t cella exec --rootfs DIR -- /bin/true\`,
  then \`sort -t'<' -k2 -n\`-style filtering of the \`<seconds>\` column; the usual suspects are
  \`fsync\` (the runtime dir is on a disk here, not a tmpfs), the first \`write\` to a
  cgroup v1 \`cgroup.procs\` (an RCU grace period), \`prctl(PR_SET_SECCOMP)\`, \`mkdir\`/\`rmdir\`
  of memory cgroups.
- Per mechanism: \`python3 benches/launch/report.py fsync /run/cella/exec\` (fsync latency);
  (a) − (b) in the table above is the cost of seccomp; (a) − (c) of the rootfs.
EOF
fi

# ---------------------------------------------------------------- 7. report
cd /
report=$(python3 "$HERE/report.py" render "$WORK")
printf '%s\n' "$report"
if [ -n "$OUT" ]; then
    printf '%s\n' "$report" > "$OUT"
    log "report written to $OUT"
fi
