#!/usr/bin/env bash
# Install what Cella's tests and benchmarks need, only what is missing (idempotent):
#   Debian packages: qemu-system-x86 linux-image-amd64 busybox-static crun hyperfine
#                    iproute2 cpio procps
#                    docker-registry umoci skopeo (the image tests run a registry on
#                    loopback, build images with umoci and push them with skopeo)
#                    linux-libc-dev (the kernel's syscall table, checked by the seccomp tests)
#                    debootstrap e2fsprogs (the systemd VM: tests/systemd-vm)
#                    prometheus (its promtool checks both /metrics in the API tests)
#                    xfsprogs (mkfs.xfs: the disk quota tests, cli/tests/exec_disk.rs)
#   cargo-nextest and cargo-deb (from crates.io if they are not on PATH)
# Runs `apt-get update` at most once, and only if a package is missing. Needs root for
# apt-get. Prints one line when everything is already there.
set -euo pipefail

# debootstrap and e2fsprogs (mkfs.ext4 -d, debugfs): the systemd VM (tests/systemd-vm).
packages=(qemu-system-x86 linux-image-amd64 busybox-static crun hyperfine iproute2 cpio procps
    docker-registry umoci skopeo linux-libc-dev debootstrap e2fsprogs prometheus xfsprogs)

log() { printf '[deps] %s\n' "$*"; }
die() { printf '[deps] ERROR: %s\n' "$*" >&2; exit 1; }

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done
# The VM harness also needs an actual kernel image, not only the metapackage.
if ! compgen -G '/boot/vmlinuz-*' >/dev/null && [ -z "${missing[*]}" ]; then
    die "linux-image-amd64 is installed but /boot has no vmlinuz-*; reinstall linux-image-amd64"
fi

if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}); run as root to install them"
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    if ! apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Use-Pty=0 "${missing[@]}" > /tmp/cella-apt-install.log 2>&1; then
        tail -n 40 /tmp/cella-apt-install.log >&2
        die "apt-get install failed (full log: /tmp/cella-apt-install.log)"
    fi
    for p in "${missing[@]}"; do
        installed "$p" || die "$p still not installed after apt-get install"
    done
    compgen -G '/boot/vmlinuz-*' >/dev/null || die "no /boot/vmlinuz-* after installing linux-image-amd64"
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
    command -v cargo >/dev/null || die "cargo not found"
    log "installing cargo-nextest (cargo install cargo-nextest --locked)"
    cargo install --quiet cargo-nextest --locked || die "cargo install cargo-nextest failed"
    command -v cargo-nextest >/dev/null 2>&1 \
        || die "cargo-nextest installed but not on PATH (add \$CARGO_HOME/bin, usually ~/.cargo/bin)"
fi

# The Debian package is built with cargo-deb (scripts/build-deb.sh).
if ! cargo deb --version >/dev/null 2>&1; then
    command -v cargo >/dev/null || die "cargo not found"
    log "installing cargo-deb (cargo install cargo-deb --locked)"
    cargo install --quiet cargo-deb --locked || die "cargo install cargo-deb failed"
    cargo deb --version >/dev/null 2>&1 \
        || die "cargo-deb installed but cargo cannot find it (add \$CARGO_HOME/bin, usually ~/.cargo/bin, to PATH)"
fi

if [ "${#missing[@]}" -eq 0 ]; then
    log "all test dependencies present"
else
    log "installed: ${missing[*]}"
fi
