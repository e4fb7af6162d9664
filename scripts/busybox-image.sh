#!/bin/sh
# Builds a small container image from this machine's busybox (busybox-static) with
# umoci and pushes it with skopeo, for trying `cella run --image` without reaching
# the Internet:
#
#   scripts/busybox-image.sh localhost:5000/busybox:latest
#
# The registry is spoken to over plain HTTP (a local registry such as Debian's
# docker-registry, which listens on localhost:5000 once installed).
set -eu
target=${1:?usage: $0 HOST:PORT/REPO:TAG}
for tool in umoci skopeo; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is not installed (apt-get install $tool)" >&2; exit 1; }
done
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "$0: $busybox is missing (apt-get install busybox-static)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umoci init --layout "$work/layout"
umoci new --image "$work/layout:latest"
umoci unpack --image "$work/layout:latest" "$work/bundle"
root=$work/bundle/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
umoci repack --image "$work/layout:latest" "$work/bundle"
umoci config --image "$work/layout:latest" --config.cmd=sh --config.env=PATH=/bin
skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
    "oci:$work/layout:latest" "docker://$target"
echo "pushed $target"
