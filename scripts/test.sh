#!/usr/bin/env bash
# Cella's test command: ./scripts/test.sh [--host-only | --vm-only] [--no-lint]
#
#   1. scripts/install-test-deps.sh          (installs only what is missing)
#   2. cargo fmt --all -- --check            (lint; skipped by --no-lint and --vm-only)
#      cargo clippy --workspace --all-targets -- -D warnings
#   3. cargo nextest run --workspace --no-fail-fast   (host: cgroup v1, namespaces; skipped by --vm-only;
#                                             the xfs_quota_* tests run in step 4 only)
#   4. tests/vm/run.sh                       (cgroup v2 tests in a qemu VM; skipped by --host-only)
#   5. tests/systemd-vm/run.sh               (the Debian package and its units under systemd
#                                             in a qemu VM; skipped by --host-only)
#
# Must run as root (cgroups, namespaces). A failing step does not stop the later
# steps; the exit status is non-zero if any step failed. The last line is a summary:
#   cella tests: lint ok, host ok, vm ok, systemd-vm ok
set -euo pipefail

# Tests that need root or a kernel feature fail instead of skipping when this is set.
export CELLA_TEST_STRICT=1

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
}

run_host=1
run_vm=1
run_lint=1
while [ "$#" -gt 0 ]; do
    case "$1" in
        --host-only) run_vm=0 ;;
        --vm-only) run_host=0; run_lint=0 ;;
        --no-lint) run_lint=0 ;;
        -h|--help) usage; exit 0 ;;
        *) printf 'test.sh: unknown option: %s\n' "$1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ "$run_host" = 0 ] && [ "$run_vm" = 0 ]; then
    echo "test.sh: --host-only and --vm-only exclude each other" >&2
    exit 2
fi

if [ "$(id -u)" != 0 ]; then
    echo "test.sh: must run as root: the tests create cgroups and namespaces (try: sudo ./scripts/test.sh)" >&2
    exit 2
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=$(date +%s)
section() {
    printf '\n==================== %s ====================\n' "$*"
}
elapsed_since() {
    local s=$(( $(date +%s) - $1 ))
    printf '%dm%02ds' $((s / 60)) $((s % 60))
}

lint_status=skipped
host_status=skipped
vm_status=skipped
systemd_vm_status=skipped

section "dependencies (scripts/install-test-deps.sh)"
if ! ./scripts/install-test-deps.sh; then
    echo "total elapsed: $(elapsed_since "$start")"
    echo "cella tests: dependencies FAILED (scripts/install-test-deps.sh), nothing run"
    exit 1
fi

if [ "$run_lint" = 1 ]; then
    t=$(date +%s)
    lint_status=ok
    section "lint: cargo fmt --all -- --check"
    if ! cargo fmt --all -- --check; then
        echo "test.sh: formatting differs (run: cargo fmt --all)" >&2
        lint_status=FAILED
    fi
    section "lint: cargo clippy --workspace --all-targets -- -D warnings"
    if ! cargo clippy --workspace --all-targets -- -D warnings; then
        lint_status=FAILED
    fi
    echo "lint: $lint_status ($(elapsed_since "$t"))"
fi

if [ "$run_host" = 1 ]; then
    t=$(date +%s)
    # The XFS project quota tests (named xfs_quota_*) run in the VM of step 4, whose
    # Debian kernel has XFS quotas; kernels built without CONFIG_XFS_QUOTA (as some
    # hosts are) cannot mount prjquota, so the host run leaves them to the VM.
    section "host tests: cargo nextest run --workspace --no-fail-fast -E 'not test(/^xfs_quota_/)'"
    if cargo nextest run --workspace --no-fail-fast -E 'not test(/^xfs_quota_/)'; then
        host_status=ok
    else
        host_status=FAILED
    fi
    echo "host tests: $host_status ($(elapsed_since "$t"))"
fi

if [ "$run_vm" = 1 ]; then
    t=$(date +%s)
    section "VM tests (cgroup v2): tests/vm/run.sh"
    rm -f tests/vm/work/failure.txt
    if ./tests/vm/run.sh; then
        vm_status=ok
    else
        vm_status=FAILED
    fi
    echo "VM tests: $vm_status ($(elapsed_since "$t"))"

    t=$(date +%s)
    section "systemd VM (package and units): tests/systemd-vm/run.sh"
    if ./tests/systemd-vm/run.sh; then
        systemd_vm_status=ok
    else
        systemd_vm_status=FAILED
    fi
    echo "systemd VM: $systemd_vm_status ($(elapsed_since "$t"))"
fi

section "done"
# CI may keep only the end of this output: repeat why the VM step failed.
if [ "$vm_status" = FAILED ] && [ -s tests/vm/work/failure.txt ]; then
    cat tests/vm/work/failure.txt
fi
echo "total elapsed: $(elapsed_since "$start")"
echo "cella tests: lint $lint_status, host $host_status, vm $vm_status, systemd-vm $systemd_vm_status"
case "$lint_status $host_status $vm_status $systemd_vm_status" in
    *FAILED*) exit 1 ;;
esac
exit 0
