#!/usr/bin/env bash
# Builds the stand-in Kit image ovas/kit-standin:1.0.0 (also tagged latest) with the Docker
# engine that DOCKER_HOST (or the local socket) names. Needs Debian's busybox-static
# (`apt-get install busybox-static`), whose /bin/busybox is one static binary, and Debian's
# websocketd (`apt-get install websocketd`), copied with the libraries it loads (libc and
# the dynamic loader, as `ldd` lists them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
busybox="${BUSYBOX:-/bin/busybox}"
websocketd="${WEBSOCKETD:-$(command -v websocketd || true)}"
image="${STANDIN_IMAGE:-ovas/kit-standin}"

if [ ! -x "$busybox" ]; then
    echo "build.sh: $busybox not found; install busybox-static" >&2
    exit 1
fi
if ldd "$busybox" >/dev/null 2>&1; then
    echo "build.sh: $busybox is dynamically linked; install busybox-static instead of busybox" >&2
    exit 1
fi
if [ -z "$websocketd" ] || [ ! -x "$websocketd" ]; then
    echo "build.sh: websocketd not found; install websocketd" >&2
    exit 1
fi

context="$(mktemp -d)"
messages="$(mktemp)"
trap 'rm -rf "$context" "$messages"' EXIT
cp "$here/Dockerfile" "$here/entrypoint.sh" "$context/"
cp "$busybox" "$context/busybox"
mkdir -p "$context/root/bin"
cp "$websocketd" "$context/root/bin/websocketd"
# Each library at the path the binary asks for it (ldd's absolute paths), links followed.
for lib in $(ldd "$websocketd" | grep -o '/[^ ]*'); do
    mkdir -p "$context/root$(dirname "$lib")"
    cp -L "$lib" "$context/root$lib"
done

# Without the buildx plugin, the classic builder builds this image just as well; it then
# prints a notice that it is deprecated, which reads like an error. The build's messages
# are shown only when it fails.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
if ! docker build --quiet -t "$image:1.0.0" -t "$image:latest" "$context" \
    >"$messages" 2>&1; then
    cat "$messages" >&2
    echo "build.sh: the image did not build" >&2
    exit 1
fi
echo "build.sh: built $image:1.0.0 and $image:latest"
