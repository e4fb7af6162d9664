#!/bin/sh
# /init of the Cella test VM (PID 1, busybox sh). tests/vm/run.sh copies this file
# into the initramfs together with:
#   /cella-vm/env    shell assignments (sourced): CELLA_VM_TEST_THREADS, ..., passed-through vars
#   /cella-vm/tests  one line per test binary: "<working dir>|<absolute path of binary>"
#   /cella-vm/modules  kernel module files (.ko) to insmod, in load order, one per line
# It prepares a cgroup v2 machine, runs every test binary, prints a summary line
#   CELLA-VM-RESULT: <passed> passed, <failed> failed
# and powers the VM off. It must never exit: PID 1 exiting panics the kernel.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
umask 022

say() { echo "CELLA-VM: $*"; }

# pivot_root(2) refuses to move away from the initial ramfs, and Cella's --rootfs
# uses it: first copy the image into a tmpfs and switch_root there (once).
if [ -z "${CELLA_VM_SWITCHED:-}" ]; then
    mkdir -p /newroot
    mount -t tmpfs -o mode=0755 tmpfs /newroot
    for e in /*; do
        case "$e" in
            /newroot|/proc|/sys|/dev) ;;
            *) cp -a "$e" /newroot/ ;;
        esac
    done
    mkdir -p /newroot/proc /newroot/sys /newroot/dev
    export CELLA_VM_SWITCHED=1
    exec switch_root /newroot /init
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# tmpfs on /tmp and /run; what the image has there (e.g. a test binary under /tmp) is
# copied onto the new tmpfs.
for d in /tmp /run; do
    mv "$d" "$d.image"
    mkdir "$d"
done
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
for d in /tmp /run; do
    cp -a "$d.image/." "$d/" && rm -rf "$d.image"
done
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup

# Defaults, then what the harness wrote (may override them).
CELLA_VM_CONTROLLERS="+cpu +memory +pids +io"
CELLA_VM_TEST_THREADS=1
CELLA_VM_BIN_TIMEOUT=600
CELLA_VM_TEST_ARGS=
CELLA_VM_DIAG=0
# shellcheck disable=SC1091
. /cella-vm/env
export CELLA_IN_VM=1

hostname cella-vm
ip link set lo up

if [ -s /cella-vm/modules ]; then
    while read -r ko; do
        [ -n "$ko" ] || continue
        insmod "$ko" || say "warning: insmod $ko failed"
    done < /cella-vm/modules
fi

# shellcheck disable=SC2086 # one word per controller
if ! echo $CELLA_VM_CONTROLLERS > /sys/fs/cgroup/cgroup.subtree_control; then
    say "warning: could not enable '$CELLA_VM_CONTROLLERS' in /sys/fs/cgroup/cgroup.subtree_control"
fi

say "kernel $(uname -r), cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
say "cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"

if [ "$CELLA_VM_DIAG" = 1 ]; then
    d=/sys/fs/cgroup/cella-vm-diag
    mkdir "$d"
    for f in cgroup.kill memory.peak memory.events memory.max cpu.max pids.max io.stat cgroup.procs; do
        if [ -e "$d/$f" ]; then say "diag: $f present"; else say "diag: $f MISSING"; fi
    done
    rmdir "$d"
    out=$(sh -c 'echo "ok from $0, pid $$"; exit 3')
    say "diag: sh -c: '$out', exit status $? (expected 3)"
    say "diag: /bin/sh -> $(readlink /bin/sh), id: $(id), nobody: $(grep ^nobody: /etc/passwd)"
    say "diag: modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
fi

passed=0
failed=0
summary=
work=/run/cella-vm
mkdir -p "$work"

while IFS='|' read -r dir bin <&3; do
    [ -n "$bin" ] || continue
    name=${bin##*/}
    say "===== running $bin (in $dir) ====="
    cd "$dir" 2>/dev/null || cd /
    export CARGO_MANIFEST_DIR="$dir"
    rm -f "$work/rc" "$work/out"
    # shellcheck disable=SC2086 # CELLA_VM_TEST_ARGS is a word list on purpose
    {
        if [ "$CELLA_VM_BIN_TIMEOUT" -gt 0 ] 2>/dev/null; then
            timeout -s KILL "$CELLA_VM_BIN_TIMEOUT" "$bin" --test-threads="$CELLA_VM_TEST_THREADS" $CELLA_VM_TEST_ARGS
        else
            "$bin" --test-threads="$CELLA_VM_TEST_THREADS" $CELLA_VM_TEST_ARGS
        fi </dev/null
        echo "$?" > "$work/rc"
    } 2>&1 | tee "$work/out"
    cd /
    rc=$(cat "$work/rc" 2>/dev/null || echo 255)
    line=$(grep '^test result:' "$work/out" | tail -n 1)
    p=$(echo "$line" | sed -n 's/.* \([0-9][0-9]*\) passed;.*/\1/p')
    f=$(echo "$line" | sed -n 's/.* \([0-9][0-9]*\) failed;.*/\1/p')
    p=${p:-0}
    f=${f:-0}
    if [ -z "$line" ]; then
        say "no 'test result:' line from $name (exit status $rc): counted as 1 failure"
        f=$((f + 1))
    elif [ "$rc" != 0 ] && [ "$f" = 0 ]; then
        say "$name exited with status $rc although no test failed: counted as 1 failure"
        f=1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    summary="$summary
CELLA-VM:   $name: $p passed, $f failed (exit $rc)"
done 3< /cella-vm/tests

echo "CELLA-VM: ===== summary =====$summary"
echo "CELLA-VM-RESULT: $passed passed, $failed failed"
sync
poweroff -f
# Not reached; keep PID 1 alive just in case.
while :; do sleep 3600; done
