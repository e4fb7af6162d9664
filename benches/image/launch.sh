#!/usr/bin/env bash
# Launch from an image against launch from a root filesystem directory, with
# `cella exec -- /bin/true` (see docs/benchmarks.md, "Launch from an image"):
#   (a) --rootfs DIR: the image unpacked by umoci into a directory;
#   (b) --image REF, warm: the image already in the store (the overlay is mounted per
#       launch; nothing is fetched);
#   (c) --image REF, cold: the store emptied before each run (`cella images gc`), so
#       the launch pulls, verifies and unpacks the image first.
# Same image (scripts/busybox-image.sh: busybox-static, one layer), same session.
#
#   sudo benches/image/launch.sh [RUNS]     (default 50; needs docker-registry, umoci,
#                                            skopeo, busybox-static, hyperfine)
#   CELLA_BENCH_PROFILE=debug ...           the debug build instead of release
#   CELLA_BENCH_FS=ext4 ...                 the temporary directory on a new ext4 file system with a
#                                           journal on a loop device (ext4-nojournal:
#                                           without one); see common.sh
#   CELLA_BENCH_CHURN=N ...                 N files made and removed beside the stores
#                                           right before the timed launches
#   CELLA_BENCH_BEFORE=DIR ...              also: warm launches of this build and of the
#                                           one in DIR (its cella and cella-shim), each
#                                           against rootfs launches, interleaved
#                                           (interleave.py; RUNS rounds)
#
# Everything lives in a temporary directory, removed at the end (also on failure).
set -euo pipefail

runs=${1:-50}
bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_setup image-launch docker-registry umoci skopeo hyperfine
log() { printf '[image-launch] %s\n' "$*" >&2; }

profile=${CELLA_BENCH_PROFILE:-release}
log "building cella and cella-shim ($profile)"
if [ "$profile" = release ]; then
    cargo build --quiet --release -p cella-cli --bin cella -p cella-containerizer --bin cella-shim
    bin_dir=target/release
else
    cargo build --quiet -p cella-cli --bin cella -p cella-containerizer --bin cella-shim
    bin_dir=target/debug
fi
# Copies: a concurrent cargo build cannot swap the binaries during the measurement.
cp "$bin_dir/cella" "$bin_dir/cella-shim" "$work/"
export CELLA_SHIM=$work/cella-shim

start_registry
ref=$host/bench/busybox:1
log "building and pushing $ref"
scripts/busybox-image.sh "$ref" >/dev/null

log "unpacking the same image into a directory for --rootfs"
skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/layout:1"
umoci unpack --image "$work/layout:1" "$work/bundle" >/dev/null

cella=$work/cella
image_flags="--insecure-registry $host"
warm_store=$work/store-warm
cold_store=$work/store-cold
"$cella" images --image-store "$warm_store" $image_flags pull "$ref" >/dev/null 2>&1

# The setup above wrote the image several times over: let the disk write it back
# now rather than during the timed launches (the later commands would pay for it).
sync
if [ -n "${CELLA_BENCH_CHURN:-}" ]; then
    # What a busy node does beside the store now and then (a large image collected,
    # a build's tree removed): that many files made and removed just before timing.
    log "making and removing $CELLA_BENCH_CHURN files beside the stores"
    python3 - "$work/churn" "$CELLA_BENCH_CHURN" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
for i in range(n):
    open(f"{d}/{i}", "w").close()
for i in range(n):
    os.unlink(f"{d}/{i}")
PY
fi
log "timing $runs runs of each"
# From an empty directory: a --rootfs task's sandbox is the current directory, which
# the launch measures (walks) for --disk, as an image task's fresh sandbox.
mkdir "$work/empty"
cd "$work/empty"
hyperfine -N --runs "$runs" --warmup 3 --export-markdown "$work/report.md" \
    -n "rootfs dir" "$cella exec --rootfs $work/bundle/rootfs -- /bin/true" \
    -n "image (warm)" "$cella exec --image $ref --image-store $warm_store $image_flags -- /bin/true" \
    -n "image (cold)" --prepare "$cella images --image-store $cold_store gc" \
    "$cella exec --image $ref --image-store $cold_store $image_flags -- /bin/true" >&2
before_store=$work/store-before
if [ -n "${CELLA_BENCH_BEFORE:-}" ]; then
    mkdir "$work/before"
    cp "$CELLA_BENCH_BEFORE/cella" "$CELLA_BENCH_BEFORE/cella-shim" "$work/before/"
    CELLA_SHIM=$work/before/cella-shim "$work/before/cella" images --image-store "$before_store" \
        $image_flags pull "$ref" >/dev/null 2>&1
    log "interleaving $runs rounds: this build against $CELLA_BENCH_BEFORE"
    python3 "$bench_dir/interleave.py" "$runs" "$work/bundle/rootfs" "$ref" "$host" \
        "before=$work/before:$before_store" "this=$work:$warm_store" >"$work/interleaved.md"
fi
# The last launch's sandbox is removed by a detached process: let it finish before
# the work directory goes.
for store in "$warm_store" "$cold_store" "$before_store"; do
    flock "$store/sandboxes/lock" true 2>/dev/null || true
done
cat "$work/report.md"
[ ! -f "$work/interleaved.md" ] || { echo; cat "$work/interleaved.md"; }
