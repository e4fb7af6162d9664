#!/usr/bin/env bash
# Run Rust test binaries inside a qemu VM whose kernel has cgroup v2 with every
# controller (see tests/vm/README.md and shared/vm-recipe.md, section 1).
#
#   tests/vm/run.sh                    build and run the default set (all test binaries
#                                      of cella-containerizer and cella-cli, and the
#                                      agent's recovery and disk limit tests)
#   tests/vm/run.sh BINARY [BINARY...] run these test binaries (cella, cella-shim and
#                                      cella-agent are built and included as well)
#
# Exit status: 0 only if the VM printed "CELLA-VM-RESULT: N passed, 0 failed" with N > 0.
#
# Environment (all optional):
#   CELLA_VM_TIMEOUT=1200      seconds for the whole boot + run (qemu is killed after)
#   CELLA_VM_BIN_TIMEOUT=600   seconds per test binary inside the VM (0 = none)
#   CELLA_VM_TEST_THREADS=1    libtest --test-threads inside the VM
#   CELLA_VM_TEST_ARGS=        extra libtest arguments, e.g. a test name filter or "--exact x"
#   CELLA_VM_KEEP=1            keep the work dir (tests/vm/work/run.*) for inspection
#   CELLA_VM_KERNEL=/boot/...  kernel image (default: newest /boot/vmlinuz-*)
#   CELLA_VM_TCG_THREAD=single or multi: one host thread for every emulated CPU, or one
#                              each (see tests/vm/README.md, "A kernel that locks up")
#   CELLA_VM_MEM=4096 CELLA_VM_SMP=2   (the image is unpacked into RAM, then copied
#                              to a tmpfs, and /tmp once more when the checkout is there)
#   CELLA_VM_MODULES="veth overlay loop crc32c_generic xfs"  kernel modules to load (with
#                              their dependencies; xfs needs crc32c_generic, which
#                              modules.dep does not list)
#   CELLA_VM_EXTRA_FILES="..." more host files (e.g. /usr/bin/crun) to put in the image at
#                              the same path, with the libraries ldd lists for them
#   CELLA_VM_NO_BUILD=1        do not run cargo (only with explicit binaries)
#   CELLA_VM_DIAG=1            print cgroup/shell diagnostics from inside the VM first
#   CELLA_VM_LOCKUP_GRACE=120  seconds without a test line after a kernel lockup report
#                              before the VM is stopped (and booted once more, once)
# Passed into the VM: CELLA_IN_VM=1, RUST_BACKTRACE (default 1), RUST_LOG, RUST_MIN_STACK
# and every CELLA_TEST_* variable.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
workbase="$here/work"

timeout_s=${CELLA_VM_TIMEOUT:-1200}
mem=${CELLA_VM_MEM:-4096}
smp=${CELLA_VM_SMP:-2}
tcg_thread=${CELLA_VM_TCG_THREAD:-single}
modules=${CELLA_VM_MODULES-veth overlay loop crc32c_generic xfs}

log() { printf '[vm] %s\n' "$*" >&2; }
die() { printf '[vm] ERROR: %s\n' "$*" >&2; exit 1; }

for tool in qemu-system-x86_64 busybox cpio ldd timeout python3 cargo; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "$tool not found; run scripts/install-test-deps.sh (as root)"
done
busybox_bin=$(command -v busybox)
if ldd "$busybox_bin" >/dev/null 2>&1; then
    die "$busybox_bin is dynamically linked; install busybox-static"
fi

kernel=${CELLA_VM_KERNEL:-}
if [ -z "$kernel" ]; then
    kernel=$(find /boot -maxdepth 1 -name 'vmlinuz-*' -print 2>/dev/null | sort -V | tail -n 1)
fi
[ -n "$kernel" ] && [ -r "$kernel" ] \
    || die "no readable kernel (/boot/vmlinuz-*); install linux-image-amd64 or set CELLA_VM_KERNEL"
kver=${kernel##*/vmlinuz-}

# ---------------------------------------------------------------------------
# Work dir and cleanup (qemu, tail, work dir) -- also on failure and on signals.
mkdir -p "$workbase"
run=$(mktemp -d "$workbase/run.XXXXXX")
console="$run/console.log"
qemu_pid=
tail_pid=
watch_pid=
# What went wrong, in a few lines, for scripts/test.sh to repeat at the end of its output.
failure_file="$workbase/failure.txt"
rm -f "$failure_file"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -TERM "$qemu_pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$qemu_pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    for pid in "$tail_pid" "$watch_pid"; do
        [ -n "$pid" ] || continue
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -f "$console" ]; then
        cp "$console" "$workbase/console.log" 2>/dev/null || true
    fi
    if [ "${CELLA_VM_KEEP:-0}" = 1 ]; then
        log "kept work dir $run"
    else
        rm -rf "$run"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM HUP

# ---------------------------------------------------------------------------
# Select and build binaries.
# tests: lines "<cwd>|<binary>"
tests_list="$run/tests.list"
: > "$tests_list"
project_bins=()

json_field() {
    # stdin: cargo --message-format=json; $1 = "tests" or "bins"
    python3 -c '
import json, os, sys
want = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kinds = m["target"]["kind"]
    if "bench" in kinds:
        continue
    is_test = m["profile"]["test"]
    # Only integration tests (tests/*.rs) run in the VM: they are what touches the
    # kernel. Unit tests (parsers, the seccomp compiler) run on the host already and
    # would only be slow under emulation. Of the agent, only its recovery tests
    # (restarts against real shims and cgroups), its disk limit tests (XFS project
    # quotas, which a host kernel may lack) and its planted-file tests; its protocol
    # tests gain nothing here and are too timing-sensitive under emulation.
    agent = os.path.basename(os.path.dirname(m["manifest_path"])) == "agent"
    if want == "tests" and agent and m["target"]["name"] not in ("recovery", "disk_limits", "planted_files"):
        continue
    if want == "tests" and is_test and "test" in kinds:
        print(os.path.dirname(m["manifest_path"]) + "|" + m["executable"])
    elif want == "bins" and not is_test and "bin" in kinds:
        print(m["executable"])
' "$1"
}

cd "$repo"
if [ "$#" -eq 0 ]; then
    log "building test binaries: cargo test --no-run -p cella-containerizer -p cella-cli -p cella-agent"
    cargo test --no-run --message-format=json-render-diagnostics -p cella-containerizer -p cella-cli -p cella-agent \
        > "$run/cargo-tests.json" || die "cargo test --no-run failed"
    json_field tests < "$run/cargo-tests.json" | sort -u > "$tests_list"
    [ -s "$tests_list" ] || die "cargo produced no test binaries"
fi
if [ "$#" -eq 0 ] || [ "${CELLA_VM_NO_BUILD:-0}" != 1 ]; then
    log "building binaries: cargo build -p cella-cli -p cella-containerizer -p cella-agent --bins"
    cargo build --message-format=json-render-diagnostics -p cella-cli -p cella-containerizer -p cella-agent --bins \
        > "$run/cargo-bins.json" || die "cargo build failed"
    mapfile -t project_bins < <(json_field bins < "$run/cargo-bins.json" | sort -u)
else
    target_dir=${CARGO_TARGET_DIR:-$repo/target}
    for b in "$target_dir/debug/cella" "$target_dir/debug/cella-shim" "$target_dir/debug/cella-agent"; do
        [ -x "$b" ] && project_bins+=("$b")
    done
fi
for arg in "$@"; do
    [ -f "$arg" ] && [ -x "$arg" ] || die "not an executable file: $arg"
    abs="$(cd "$(dirname "$arg")" && pwd)/$(basename "$arg")"
    printf '%s|%s\n' "${CELLA_VM_CWD:-$repo}" "$abs" >> "$tests_list"
done
log "test binaries:"
sed 's/^[^|]*|/[vm]   /' "$tests_list" >&2
log "project binaries: ${project_bins[*]:-(none)}"

# ---------------------------------------------------------------------------
# Build the initramfs tree.
root="$run/root"
mkdir -p "$root"/{bin,dev,etc,proc,sys,tmp,run,root,usr/lib,cella-vm,var}
chmod 1777 "$root/tmp"
ln -s bin "$root/sbin"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"
cp "$busybox_bin" "$root/bin/busybox"
# A link for every applet busybox has (sh, mount, ip, poweroff, ...).
while read -r applet; do
    case "$applet" in ''|busybox|*/*) continue ;; esac
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done < <("$busybox_bin" --list)

cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
cella-test:x:1000:1000:cella test user:/tmp:/bin/sh
EOF
cat > "$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
cella-test:x:1000:
EOF
cat > "$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files
EOF
printf '127.0.0.1 localhost cella-vm\n::1 localhost\n' > "$root/etc/hosts"
echo cella-vm > "$root/etc/hostname"
: > "$root/etc/fstab"

# copy_with_libs FILE: FILE and every library ldd lists, at their host paths.
declare -A copied=()
copy_at_same_path() {
    local src=$1
    [ -n "${copied[$src]:-}" ] && return 0
    copied[$src]=1
    mkdir -p "$root$(dirname "$src")"
    cp -L "$src" "$root$src"
}
copy_with_libs() {
    local f=$1 lib
    copy_at_same_path "$f"
    # Debug builds are mostly DWARF: without it the image is several times smaller,
    # which the emulated guest unpacks and copies much faster (backtraces keep the
    # function names from the symbol table).
    if command -v strip > /dev/null; then
        strip --strip-debug "$root$f" 2> /dev/null || true
    fi
    # ldd fails for static binaries and non-ELF files: then there is nothing to add.
    while read -r lib; do
        [ -n "$lib" ] && [ -e "$lib" ] && copy_at_same_path "$lib"
    done < <(ldd "$f" 2>/dev/null | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }' || true)
}

while IFS='|' read -r _ bin; do
    copy_with_libs "$bin"
done < "$tests_list"
for b in "${project_bins[@]}"; do
    copy_with_libs "$b"
done
# shellcheck disable=SC2086 # space-separated list
for f in ${CELLA_VM_EXTRA_FILES:-}; do
    [ -e "$f" ] || die "CELLA_VM_EXTRA_FILES: no such file: $f"
    copy_with_libs "$f"
done
# mkfs.xfs (xfsprogs): the disk quota tests make an XFS filesystem on a loop device.
mkfs_xfs=$(command -v mkfs.xfs || true)
if [ -n "$mkfs_xfs" ]; then
    copy_with_libs "$mkfs_xfs"
else
    log "no mkfs.xfs on the host (scripts/install-test-deps.sh): the disk quota tests will fail"
fi

# The repository's sources (no target/, .git/), so tests can cd to their package
# directory and read fixtures relative to it.
tar -C / --exclude="${repo#/}/target" --exclude="${repo#/}/.git" \
    --exclude="${repo#/}/tests/vm/work" -cf - "${repo#/}" | tar -C "$root" -xf -

# Kernel modules (with dependencies, in load order).
: > "$root/cella-vm/modules"
moddir=/lib/modules/$kver
if [ -n "$modules" ] && [ -f "$moddir/modules.dep" ]; then
    declare -A mod_done=()
    add_module() { # $1 = path relative to $moddir
        local rel=$1 dep deps
        [ -n "${mod_done[$rel]:-}" ] && return 0
        mod_done[$rel]=1
        deps=$(awk -v m="$rel:" '$1 == m { $1 = ""; print }' "$moddir/modules.dep")
        for dep in $deps; do add_module "$dep"; done
        mkdir -p "$root$moddir/$(dirname "$rel")"
        cp "$moddir/$rel" "$root$moddir/$rel"
        echo "$moddir/$rel" >> "$root/cella-vm/modules"
    }
    for m in $modules; do
        rel=$(awk -v m="$m" '{ f = $1; sub(/:$/, "", f); n = f; sub(/.*\//, "", n); sub(/\.ko.*$/, "", n);
                 gsub(/-/, "_", n); mm = m; gsub(/-/, "_", mm); if (n == mm) { print f; exit } }' \
              "$moddir/modules.dep")
        if [ -z "$rel" ]; then
            log "module $m: not found in $moddir (built in?), skipped"
            continue
        fi
        case "$rel" in
            *.ko) add_module "$rel" ;;
            *) log "module $m: compressed module ($rel) not supported by busybox insmod, skipped" ;;
        esac
    done
elif [ -n "$modules" ]; then
    log "no $moddir/modules.dep: not loading modules"
fi

# Environment for /init.
shq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }
{
    for v in CELLA_VM_TEST_THREADS CELLA_VM_BIN_TIMEOUT CELLA_VM_TEST_ARGS CELLA_VM_DIAG; do
        if [ -n "${!v+x}" ]; then printf '%s=%s\n' "$v" "$(shq "${!v}")"; fi
    done
    printf 'export RUST_BACKTRACE=%s\n' "$(shq "${RUST_BACKTRACE:-1}")"
    while read -r v; do
        printf 'export %s=%s\n' "$v" "$(shq "${!v}")"
    done < <(compgen -e | grep -E '^(CELLA_TEST_[A-Za-z0-9_]*|RUST_LOG|RUST_MIN_STACK)$' || true)
} > "$root/cella-vm/env"
cp "$tests_list" "$root/cella-vm/tests"
cp "$here/init.sh" "$root/init"
chmod 0755 "$root/init"

# Uncompressed cpio: the guest (emulated CPU) unpacks it faster than a gzip.
initrd="$run/initrd.cpio"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) > "$initrd"
log "initramfs: $(du -h "$initrd" | cut -f1), kernel $kernel"

# ---------------------------------------------------------------------------
# Boot.
# The console without the firmware's terminal-control sequences (which would reset
# or clear a terminal) and without CRs.
clean_console() {
    sed -u -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1b[()][0-9A-Za-z]//g' \
        -e 's/\x1b[c78=>]//g' -e 's/\r//g'
}
# A kernel that stops making progress (a soft or hard lockup, an RCU stall) never
# prints a result line; without this the harness would wait for the whole timeout.
# A report under a heavily loaded host can be transient, so the VM is stopped only
# when no test line has followed the kernel's latest report for $lockup_grace seconds.
# Only kernel reports match: test output never starts with "[ <seconds>]".
lockup_grace=${CELLA_VM_LOCKUP_GRACE:-120}
lockup_report='^\[ *[0-9.]+\] (watchdog: BUG: soft lockup|watchdog: Watchdog detected hard LOCKUP|rcu: INFO: rcu_(preempt|sched) (self-)?detected stall)'
progress_line='^(CELLA-VM|test |running [0-9]+ test)'
# Prints 1 if the console's latest kernel report has no test line after it.
stuck_since_report() {
    # The patterns go through the environment: awk -v would process their backslashes.
    clean_console < "$console" | report=$lockup_report progress=$progress_line awk '
        $0 ~ ENVIRON["report"] { stuck = 1 } $0 ~ ENVIRON["progress"] { stuck = 0 }
        END { print stuck + 0 }'
}
watch_for_lockup() {
    local stuck_since=
    while kill -0 "$qemu_pid" 2>/dev/null; do
        sleep 5
        if [ "$(stuck_since_report)" = 0 ]; then
            stuck_since=
            continue
        fi
        stuck_since=${stuck_since:-$(date +%s)}
        if [ $(($(date +%s) - stuck_since)) -ge "$lockup_grace" ]; then
            log "the kernel reported a lockup and no test line followed in ${lockup_grace}s: stopping the VM"
            : > "$run/lockup"
            kill -TERM "$qemu_pid" 2>/dev/null || true
            return
        fi
    done
}
# The test binary that was running and its last test line, for the failure message.
where_it_stopped() {
    local bin last_test
    bin=$(clean_console < "$console" | sed -n 's/^CELLA-VM: ===== running \([^ ]*\).*/\1/p' | tail -n 1)
    # A kernel message can land on the line of a test still running: cut it off.
    last_test=$(clean_console < "$console" | grep -a '^test ' | tail -n 1 | sed 's/ *\[ *[0-9.]*\] .*//')
    printf 'while running %s (last test line: %s)' "${bin:-no test binary yet}" "${last_test:-none}"
}
# The kernel's first lockup report and what followed it, 80 lines at the most.
first_report() {
    clean_console < "$console" \
        | report=$lockup_report awk 'n < 80 && (n || $0 ~ ENVIRON["report"]) { n++; print }'
}
# Boots the VM and waits for it to power off; sets qemu_rc and elapsed.
boot() {
    log "booting qemu (tcg thread=$tcg_thread, ${mem} MiB, ${smp} CPUs, timeout ${timeout_s}s); console: tests/vm/work/console.log"
    local start
    start=$(date +%s)
    : > "$console"
    rm -f "$run/lockup"
    timeout -k 10 "$timeout_s" qemu-system-x86_64 \
        -accel "tcg,thread=$tcg_thread" -m "$mem" -smp "$smp" -nographic -no-reboot -nic none \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 loglevel=5 panic=-1 softlockup_all_cpu_backtrace=1" \
        < /dev/null > "$console" 2>&1 &
    qemu_pid=$!
    # Stream the console to stdout.
    tail -n +1 -f --pid="$qemu_pid" "$console" | clean_console &
    tail_pid=$!
    watch_for_lockup &
    watch_pid=$!
    qemu_rc=0
    wait "$qemu_pid" || qemu_rc=$?
    qemu_pid=
    kill "$watch_pid" 2>/dev/null || true
    wait "$watch_pid" 2>/dev/null || true
    watch_pid=
    wait "$tail_pid" 2>/dev/null || true
    tail_pid=
    elapsed=$(($(date +%s) - start))
}

boot
# An emulated kernel that locks up is not a test result (seen once in CI, never on a
# developer's machine: both emulated CPUs stuck in the kernel for 15 minutes in two
# threads of one test process): say so with the kernel's report and boot once more.
# A second lockup fails the run.
retried=
if [ -e "$run/lockup" ]; then
    first_report >&2
    log "the VM's kernel locked up $(where_it_stopped); its report is above (console kept in tests/vm/work/console-lockup.log); booting once more"
    cp "$console" "$workbase/console-lockup.log"
    retried=" after a kernel lockup in the first boot (tests/vm/work/console-lockup.log)"
    boot
fi

result=$(clean_console < "$console" | grep -a '^CELLA-VM-RESULT:' | tail -n 1 || true)
# $1: the message; $run/excerpt: the console lines that explain it. Both go to stderr
# and, shortened, to $failure_file.
excerpt="$run/excerpt"
fail_with() {
    printf '[vm] -----\n' >&2
    cat "$excerpt" >&2
    printf '[vm] ----- (full console: tests/vm/work/console.log)\n' >&2
    { printf 'VM: %s\n' "$1"; head -n 60 "$excerpt"; } > "$failure_file"
    die "$1"
}
if [ -z "$result" ]; then
    if [ -e "$run/lockup" ]; then
        first_report > "$excerpt"
        fail_with "the VM's kernel locked up${retried:+ in both boots, the second time} $(where_it_stopped); its first report is above"
    fi
    if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
        clean_console < "$console" | tail -n 60 > "$excerpt"
        fail_with "VM timed out after ${timeout_s}s without a result line $(where_it_stopped)$retried (raise CELLA_VM_TIMEOUT?)"
    fi
    clean_console < "$console" | tail -n 60 > "$excerpt"
    fail_with "VM stopped after ${elapsed}s without a result line $(where_it_stopped)$retried (kernel panic or /init failure; qemu exit $qemu_rc)"
fi
passed=$(sed -n 's/^CELLA-VM-RESULT: \([0-9]*\) passed, \([0-9]*\) failed.*/\1/p' <<< "$result")
failed=$(sed -n 's/^CELLA-VM-RESULT: \([0-9]*\) passed, \([0-9]*\) failed.*/\2/p' <<< "$result")
if [ "${failed:-1}" != 0 ]; then
    # Each failed test with its binary, each panic with the line after it (the
    # assertion's message), and each binary that failed without a test failing.
    clean_console < "$console" | awk '
        /^CELLA-VM: ===== running / { binary = $0; shown = 0; next }
        /^test .* FAILED$/ || /^thread .* panicked at / || /^CELLA-VM: .*counted as 1 failure$/ {
            if (!shown) { print binary; shown = 1 }
            print
            if ($0 ~ /panicked at/ && (getline message) > 0) print message
        }' > "$excerpt"
    fail_with "VM tests failed$retried: $passed passed, $failed failed (${elapsed}s)"
fi
if [ "${passed:-0}" -le 0 ]; then
    echo "VM: ran no test (0 passed): nothing was checked" > "$failure_file"
    die "VM ran no test (0 passed): nothing was checked (${elapsed}s)"
fi
log "VM tests ok: $passed passed, 0 failed (${elapsed}s boot + run)$retried"
