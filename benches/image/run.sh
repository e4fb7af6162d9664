#!/usr/bin/env bash
# Pull and unpack of a ~100 MiB multi-layer image from a registry on loopback:
#   (a) Cella: `cargo run --release -p cella-image --example pull` into a fresh store
#       (pull, verify, unpack every layer, fsync);
#   (b) skopeo copy docker://… oci:DIR, then umoci unpack of the same image.
# Same image, same registry, same run; each round starts from empty directories.
#
#   sudo benches/image/run.sh [ROUNDS]      (default 5; needs docker-registry, umoci,
#                                            skopeo, busybox-static, hyperfine:
#                                            scripts/install-test-deps.sh)
#
# The image is built here from local files only: busybox-static plus layers of
# random data (files of several sizes), packed with umoci. Everything lives in a
# temporary directory, removed at the end (also on failure).
set -euo pipefail

rounds=${1:-5}
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# Root: umoci unpack keeps ownership.
bench_setup image-bench docker-registry umoci skopeo hyperfine busybox python3
log() { printf '[bench] %s\n' "$*" >&2; }

log "building cella-image's pull example (release)"
cargo build --quiet --release -p cella-image --example pull
pull=target/release/examples/pull

log "building the image with umoci"
layout=$work/layout
bundle=$work/bundle
umoci init --layout "$layout"
umoci new --image "$layout:bench"
umoci unpack --image "$layout:bench" "$bundle" >/dev/null
rootfs=$bundle/rootfs
mkdir -p "$rootfs/bin" "$rootfs/etc"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(busybox --list); do [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/etc/passwd"
umoci repack --refresh-bundle --image "$layout:bench" "$bundle"
# Four layers of ~24 MiB each: a 12 MiB file, 1,000 files of 8 KiB, 100 of 40 KiB.
for layer in 1 2 3 4; do
    python3 - "$rootfs/data/layer$layer" <<'PY'
import os, sys
d = sys.argv[1]
os.makedirs(f"{d}/small"); os.makedirs(f"{d}/medium")
open(f"{d}/big.bin", "wb").write(os.urandom(12 << 20))
for i in range(1000): open(f"{d}/small/f{i}", "wb").write(os.urandom(8192))
for i in range(100): open(f"{d}/medium/f{i}", "wb").write(os.urandom(40960))
PY
    umoci repack --refresh-bundle --image "$layout:bench" "$bundle"
done
rm -rf "$bundle"
size=$(du -sb "$layout/blobs" | cut -f1)
log "image: $(( size >> 20 )) MiB of blobs, $(umoci stat --image "$layout:bench" | grep -c '^sha256') layers"

start_registry
skopeo --insecure-policy copy --quiet --preserve-digests --dest-tls-verify=false \
    "oci:$layout:bench" "docker://$host/bench:1"
log "pushed to $host/bench:1"

hyperfine --runs "$rounds" --warmup 1 --export-json "$work/result.json" \
    --prepare "rm -rf $work/cella-store $work/oci $work/unpacked" \
    -n cella "$pull $work/cella-store $host/bench:1 --insecure $host" \
    -n skopeo+umoci "sh -c 'skopeo --insecure-policy copy --quiet --src-tls-verify=false docker://$host/bench:1 oci:$work/oci:bench && umoci unpack --image $work/oci:bench $work/unpacked >/dev/null'"

python3 - "$work/result.json" <<'PY'
import json, sys
results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
cella, other = results["cella"]["median"], results["skopeo+umoci"]["median"]
print(f"median: cella {cella:.3f} s, skopeo+umoci {other:.3f} s, ratio cella/skopeo+umoci {cella/other:.2f}")
PY
