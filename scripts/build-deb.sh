#!/usr/bin/env bash
# Builds the Debian package `cella` from the workspace with cargo-deb:
#
#   scripts/build-deb.sh            release build -> target/debian/cella_<version>-1_amd64.deb
#   scripts/build-deb.sh --debug    the debug build (what the tests already compiled),
#                                   quick compression -> target/debian/debug/cella_...deb;
#                                   for tests/systemd-vm, never for distribution
#   scripts/build-deb.sh --output DIR
#
# The package's metadata is [package.metadata.deb] in cli/Cargo.toml: the binaries
# cella, cella-agent, cella-master and cella-shim in /usr/bin, the units, the
# sysusers.d and tmpfiles.d entries and /etc/cella/{agent,master}.toml (conffiles)
# from systemd/, and the maintainer scripts in systemd/debian/. See
# docs/deployment.md.
#
# Installs cargo-deb from crates.io when it is missing. Progress goes to stderr; the
# last line on stdout is the path of the package.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
log() { printf '[build-deb] %s\n' "$*" >&2; }
die() { printf '[build-deb] ERROR: %s\n' "$*" >&2; exit 1; }

debug=0
output=
while [ "$#" -gt 0 ]; do
    case "$1" in
        --debug) debug=1 ;;
        --output) output=${2:?--output needs a directory}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo > /dev/null || die "cargo not found"
if ! cargo deb --version > /dev/null 2>&1; then
    log "installing cargo-deb (cargo install cargo-deb --locked)"
    cargo install --quiet cargo-deb --locked >&2 || die "cargo install cargo-deb failed"
    cargo deb --version > /dev/null 2>&1 \
        || die "cargo-deb installed but cargo cannot find it (add \$CARGO_HOME/bin, usually ~/.cargo/bin, to PATH)"
fi

args=(-p cella-cli)
if [ "$debug" = 1 ]; then
    output=${output:-target/debian/debug}
    # The binaries the tests use, built the usual way; cargo-deb only strips and
    # packs them (it warns that the dev profile is not for releases: right).
    log "cargo build --bins -p cella-cli -p cella-agent -p cella-master -p cella-containerizer"
    cargo build --bins -p cella-cli -p cella-agent -p cella-master -p cella-containerizer >&2 \
        || die "cargo build failed"
    args+=(--no-build --profile dev --fast)
else
    output=${output:-target/debian}
fi
mkdir -p "$output"
log "cargo deb ${args[*]} --output $output"
out=$(cargo deb "${args[@]}" --output "$output" 2> >(grep -v -e 'dev profile is not supported' \
    -e 'To enable debug symbols set' >&2)) || die "cargo deb failed"
deb=$(printf '%s\n' "$out" | grep '\.deb$' | tail -n 1)
[ -f "$deb" ] || die "cargo deb printed no package path (output: $out)"
log "built $deb ($(du -h "$deb" | cut -f1))"
echo "$deb"
