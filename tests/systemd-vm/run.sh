#!/usr/bin/env bash
# Tests the Debian package and its systemd units under a real systemd: a Debian
# bookworm root file system (debootstrap) booted under qemu with systemd as PID 1.
# Inside, the package is installed with apt, a master and an agent run as units, and
# a long task must survive restarts, stops, crashes and a hung agent, and be
# reported LOST after a reboot (see tests/systemd-vm/README.md and vm-test.sh).
#
#   tests/systemd-vm/run.sh              build the package (scripts/build-deb.sh
#                                        --debug) and run the test
#   tests/systemd-vm/run.sh --deb FILE   test this package instead
#
# Exit status 0 only if every check passed. Each check prints one line:
#   CELLA-SYSTEMD-VM: PASS <label>: ...   /   CELLA-SYSTEMD-VM: FAIL <label>: ...
# and the last line is the summary.
#
# Environment (all optional):
#   CELLA_SYSTEMD_VM_CACHE=/var/cache/cella-systemd-vm  where the debootstrapped root
#                              file systems are kept, one per package list
#   CELLA_SYSTEMD_VM_CACHE_DAYS=30   rebuild a cached root older than this
#   CELLA_SYSTEMD_VM_MIRROR=http://deb.debian.org/debian
#   CELLA_SYSTEMD_VM_CGROUP=unified  or hybrid (cgroup v1 controllers, systemd's
#                              systemd.unified_cgroup_hierarchy=0)
#   CELLA_SYSTEMD_VM_DROPINS=DIR     copied to the guest's /etc/systemd/system/ before
#                              the first boot, e.g. DIR/cella-agent.service.d/x.conf
#                              (debugging: try a unit setting without a new package)
#   CELLA_SYSTEMD_VM_BOOT1_TIMEOUT=720 CELLA_SYSTEMD_VM_BOOT2_TIMEOUT=420  seconds
#   CELLA_SYSTEMD_VM_KEEP=1          keep the work dir (tests/systemd-vm/work/run.*)
#   CELLA_SYSTEMD_VM_KERNEL=/boot/vmlinuz-...  (default: the newest; its initrd too)
#   CELLA_SYSTEMD_VM_MEM=2048 CELLA_SYSTEMD_VM_SMP=2
#   CELLA_SYSTEMD_VM_TCG_THREAD=single  or multi (one host thread per emulated CPU)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
workbase="$here/work"

cache_base=${CELLA_SYSTEMD_VM_CACHE:-/var/cache/cella-systemd-vm}
cache_days=${CELLA_SYSTEMD_VM_CACHE_DAYS:-30}
mirror=${CELLA_SYSTEMD_VM_MIRROR:-http://deb.debian.org/debian}
cgroup_mode=${CELLA_SYSTEMD_VM_CGROUP:-unified}
boot1_timeout=${CELLA_SYSTEMD_VM_BOOT1_TIMEOUT:-720}
boot2_timeout=${CELLA_SYSTEMD_VM_BOOT2_TIMEOUT:-420}
mem=${CELLA_SYSTEMD_VM_MEM:-2048}
smp=${CELLA_SYSTEMD_VM_SMP:-2}
# One host thread runs every emulated CPU: see tests/vm/README.md ("A kernel that locks up").
tcg_thread=${CELLA_SYSTEMD_VM_TCG_THREAD:-single}
suite=bookworm
# What the guest needs besides the minimal base: systemd as PID 1, ip and ps for
# the daemons and the test, jq to read `cella tasks --json`.
packages=(systemd systemd-sysv iproute2 procps jq)
# Every check the guest must report (in boot 1 and boot 2).
checks=(package-install package-layout units-verify master-security setup task-oom-score
    task-cgroup-journal 1-restart 2-stop-start 3-kill-9 4-task-killed 5-watchdog 6-master-restart
    package-upgrade 7-reboot package-purge)

log() { printf '[systemd-vm] %s\n' "$*" >&2; }
die() { printf '[systemd-vm] ERROR: %s\n' "$*" >&2; exit 1; }

deb=${CELLA_SYSTEMD_VM_DEB:-}
while [ "$#" -gt 0 ]; do
    case "$1" in
        --deb) deb=${2:?--deb needs a file}; shift ;;
        -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
case "$cgroup_mode" in
    unified) cgroup_arg= ;;
    hybrid) cgroup_arg="systemd.unified_cgroup_hierarchy=0" ;;
    *) die "CELLA_SYSTEMD_VM_CGROUP must be unified or hybrid, not '$cgroup_mode'" ;;
esac

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, mkfs of a root file system)"
for tool in qemu-system-x86_64 debootstrap mkfs.ext4 debugfs flock sha256sum timeout; do
    command -v "$tool" > /dev/null 2>&1 \
        || die "$tool not found; run scripts/install-test-deps.sh (as root)"
done

kernel=${CELLA_SYSTEMD_VM_KERNEL:-$(find /boot -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)}
if [ -z "$kernel" ] || [ ! -r "$kernel" ]; then
    die "no kernel in /boot (install linux-image-amd64)"
fi
initrd=/boot/initrd.img-${kernel##*/vmlinuz-}
[ -r "$initrd" ] || die "no initrd $initrd for $kernel (Debian's initrd has the virtio drivers)"

start_all=$SECONDS
mkdir -p "$workbase"
run=$(mktemp -d "$workbase/run.XXXXXX")
root="$run/root"
qemu_pid=
tail_pid=
building=
cleanup() {
    local rc=$?
    # Everything below must run, whatever fails.
    set +e
    [ -n "$tail_pid" ] && kill "$tail_pid" 2> /dev/null
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2> /dev/null; then
        # qemu_pid is timeout(1), which passes SIGTERM on to qemu; qemu itself is
        # killed by its parent's pid if it lingers.
        kill -TERM "$qemu_pid" 2> /dev/null
        for _ in 1 2 3 4 5; do
            kill -0 "$qemu_pid" 2> /dev/null || break
            sleep 1
        done
        pkill -KILL -P "$qemu_pid" 2> /dev/null
        kill -KILL "$qemu_pid" 2> /dev/null
        wait "$qemu_pid" 2> /dev/null
    fi
    # A debootstrap that failed half-way may leave /proc and /sys mounted in its
    # target: unmount before removing anything, and never cross a file system.
    if [ -n "$building" ] && [ -d "$building" ]; then
        findmnt -R -n -o TARGET --list "$building" 2> /dev/null | sort -r | while read -r m; do
            umount -l "$m" 2> /dev/null
        done
        rm -rf --one-file-system "$building"
    fi
    if [ "${CELLA_SYSTEMD_VM_KEEP:-0}" = 1 ]; then
        log "kept $run"
    else
        rm -rf --one-file-system "$run"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# The package.
if [ -z "$deb" ]; then
    t=$SECONDS
    log "building the package: scripts/build-deb.sh --debug"
    deb=$("$repo/scripts/build-deb.sh" --debug | tail -n 1) || die "scripts/build-deb.sh --debug failed"
    log "package built in $((SECONDS - t)) s"
fi
[ -f "$deb" ] || die "no such package: $deb"
log "package: $deb"

# ---------------------------------------------------------------------------
# The root file system, cached per package list. Only what debootstrap made is
# cached (no Cella file), so a cached root is as good as a fresh one; it is made
# under an exclusive lock in a temporary directory and renamed when complete.
key=$(printf 'suite=%s variant=minbase packages=%s debootstrap=%s format=1\n' \
    "$suite" "${packages[*]}" "$(dpkg-query -W -f='${Version}' debootstrap 2> /dev/null || echo unknown)" \
    | sha256sum | cut -c1-16)
cache="$cache_base/$key"
mkdir -p "$cache_base"
exec 9> "$cache_base/.lock"
flock 9
if [ -f "$cache/complete" ] && [ -n "$(find "$cache/complete" -mtime "+$cache_days" 2> /dev/null)" ]; then
    log "cached root $cache is older than $cache_days days: making it again"
    rm -rf --one-file-system "$cache"
fi
if [ -f "$cache/complete" ]; then
    log "root file system: cached ($cache)"
else
    t=$SECONDS
    building="$cache.tmp.$$"
    rm -rf --one-file-system "$building"
    mkdir -p "$building"
    log "root file system: debootstrap --variant=minbase --include=$(IFS=,; echo "${packages[*]}") $suite ($mirror)"
    if ! debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
            "$suite" "$building/root" "$mirror" > "$run/debootstrap.log" 2>&1; then
        tail -n 30 "$run/debootstrap.log" >&2
        die "debootstrap failed (full log: $run/debootstrap.log with CELLA_SYSTEMD_VM_KEEP=1)"
    fi
    # The downloaded packages are not needed in the image.
    rm -f "$building"/root/var/cache/apt/archives/*.deb
    date -u > "$building/complete"
    rm -rf --one-file-system "$cache"
    mv "$building" "$cache"
    building=
    # Roots of other package lists are of no use any more.
    for old in "$cache_base"/*; do
        [ -d "$old" ] && [ "$old" != "$cache" ] && rm -rf --one-file-system "$old"
    done
    log "root file system made in $((SECONDS - t)) s, cached in $cache"
fi
t=$SECONDS
cp -a "$cache/root" "$root"
flock -u 9

# ---------------------------------------------------------------------------
# What the test adds to it.
mkdir -p "$root/root/cella-vm" "$root/usr/local/lib/cella-vm"
cp "$deb" "$root/root/cella-vm/"
install -m 0755 "$here/vm-test.sh" "$root/usr/local/lib/cella-vm/test.sh"
install -m 0644 "$here/cella-vm-test.service" "$root/etc/systemd/system/cella-vm-test.service"
ln -sf /etc/systemd/system/cella-vm-test.service \
    "$root/etc/systemd/system/multi-user.target.wants/cella-vm-test.service"
# The serial console belongs to the test's output, not to a login prompt.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
echo '/dev/vda / ext4 defaults 0 1' > "$root/etc/fstab"
echo cella-vm > "$root/etc/hostname"
printf '127.0.0.1 localhost cella-vm\n::1 localhost\n' > "$root/etc/hosts"
if [ -n "${CELLA_SYSTEMD_VM_DROPINS:-}" ]; then
    [ -d "$CELLA_SYSTEMD_VM_DROPINS" ] || die "CELLA_SYSTEMD_VM_DROPINS: no such directory: $CELLA_SYSTEMD_VM_DROPINS"
    log "unit drop-ins from $CELLA_SYSTEMD_VM_DROPINS: $(cd "$CELLA_SYSTEMD_VM_DROPINS" && find . -type f | tr '\n' ' ')"
    cp -r "$CELLA_SYSTEMD_VM_DROPINS"/. "$root/etc/systemd/system/"
fi
img="$run/disk.img"
mkfs.ext4 -q -L cella-vm -d "$root" "$img" 3G || die "mkfs.ext4 -d failed (e2fsprogs >= 1.43 is needed)"
rm -rf --one-file-system "$root"
log "disk image ready in $((SECONDS - t)) s"

# ---------------------------------------------------------------------------
# Boot (twice: the test reboots between step 6 and step 7; -no-reboot makes qemu
# exit then, and the same disk boots again).
clean_console() {
    sed -u -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1b[()][0-9A-Za-z]//g' \
        -e 's/\x1b[c78=>]//g' -e 's/\r//g'
}
boot() { # $1 = boot number, $2 = timeout
    local console="$workbase/console-boot$1.log" rc=0 t=$SECONDS
    log "boot $1: qemu (tcg thread=$tcg_thread, ${mem} MiB, ${smp} CPUs, $cgroup_mode cgroups, timeout $2 s); console: ${console#"$repo"/}"
    : > "$console"
    # shellcheck disable=SC2086 # cgroup_arg is empty or one word
    timeout -k 10 "$2" qemu-system-x86_64 \
        -accel "tcg,thread=$tcg_thread" -m "$mem" -smp "$smp" -nographic -no-reboot -nic none \
        -kernel "$kernel" -initrd "$initrd" \
        -drive "file=$img,format=raw,if=virtio" \
        -append "console=ttyS0 root=/dev/vda rw quiet panic=-1 $cgroup_arg" \
        < /dev/null > "$console" 2>&1 &
    qemu_pid=$!
    tail -n +1 -f --pid="$qemu_pid" "$console" | clean_console &
    tail_pid=$!
    wait "$qemu_pid" || rc=$?
    qemu_pid=
    wait "$tail_pid" 2> /dev/null || true
    tail_pid=
    log "boot $1 ended after $((SECONDS - t)) s (qemu exit $rc)"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        log "boot $1 timed out after $2 s"
    fi
}
phase_end() { # $1 = boot number: reboot, poweroff or nothing
    clean_console < "$workbase/console-boot$1.log" \
        | sed -n "s/^CELLA-SYSTEMD-VM-PHASE: $1 \([a-z]*\).*/\1/p" | tail -n 1
}
console_tail() {
    log "----- last 50 lines of boot $1's console ($workbase/console-boot$1.log) -----"
    clean_console < "$workbase/console-boot$1.log" | tail -n 50 >&2
}
# What a previous run left for a post-mortem.
rm -f "$workbase"/console-boot*.log "$workbase"/journal-boot*.txt "$workbase"/apt-*.txt \
    "$workbase"/dpkg-*.txt
boot 1 "$boot1_timeout"
end1=$(phase_end 1)
if [ "$end1" = reboot ]; then
    boot 2 "$boot2_timeout"
    [ -n "$(phase_end 2)" ] || console_tail 2
elif [ -z "$end1" ]; then
    console_tail 1
fi

# The guest's journals and logs, for a post-mortem.
for f in journal-boot1.txt journal-boot2.txt apt-install.txt dpkg-upgrade.txt apt-purge.txt; do
    debugfs -R "dump /var/log/cella-vm/$f $workbase/$f" "$img" > /dev/null 2>&1 || true
done
log "the guest's journals: ${workbase#"$repo"/}/journal-boot{1,2}.txt"

# ---------------------------------------------------------------------------
# The verdict: one line per expected check, from both consoles.
lines=$(cat "$workbase"/console-boot*.log | clean_console | grep -a '^CELLA-SYSTEMD-VM: \(PASS\|FAIL\) ' || true)
passed=0
failed=0
summary=
for c in "${checks[@]}"; do
    line=$(grep -a -m 1 "^CELLA-SYSTEMD-VM: [A-Z]* $c: " <<< "$lines" || true)
    case "$line" in
        *": PASS $c: "*) passed=$((passed + 1)); summary+="  PASS $c"$'\n' ;;
        *": FAIL $c: "*) failed=$((failed + 1)); summary+="  FAIL $c"$'\n' ;;
        *) failed=$((failed + 1)); summary+="  FAIL $c (no result: the VM did not get that far)"$'\n' ;;
    esac
done
printf '[systemd-vm] ----- summary -----\n%s' "$summary" >&2
elapsed=$((SECONDS - start_all))
if [ "$failed" -ne 0 ]; then
    die "systemd VM: $passed passed, $failed failed ($((elapsed / 60))m$((elapsed % 60))s)"
fi
log "systemd VM: $passed passed, 0 failed ($((elapsed / 60))m$((elapsed % 60))s)"
