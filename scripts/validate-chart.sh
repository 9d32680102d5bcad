#!/usr/bin/env bash
# Lints and renders the Helm chart (charts/kubevirt-metrics-sidecars) and validates what it
# renders offline: built-in kinds against the Kubernetes OpenAPI schemas (PyPI
# kubernetes-validate, --strict: unknown fields fail), custom resources (the policy, the
# PodMonitor, the PrometheusRule) against their CRDs' openAPIV3Schema.
#   scripts/validate-chart.sh            # K8S_VERSION defaults to 1.33.0
# Renders twice: with the default values, and with every optional object enabled.
# Needs helm (HELM, .work/bin/helm, or installed by scripts/install-kube-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
k8s_version="${K8S_VERSION:-1.33.0}"
chart=charts/kubevirt-metrics-sidecars

helm="${HELM:-}"
if [ -z "$helm" ]; then
  [ -x .work/bin/helm ] || bash scripts/install-kube-tools.sh .work/bin >&2
  helm=.work/bin/helm
fi
if ! python3 -c 'import kubernetes_validate, jsonschema' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate jsonschema
fi

all_on=(--set policy.enabled=true --set monitoring.podMonitor.enabled=true
        --set monitoring.networkPolicy.enabled=true --set monitoring.prometheusRule.enabled=true
        --set monitoring.grafanaDashboard.enabled=true)
out=.work/chart
mkdir -p "$out"
status=0

"$helm" lint --strict "$chart" || status=1
"$helm" lint --strict "$chart" "${all_on[@]}" || status=1
"$helm" template kms "$chart" --namespace kubevirt-metrics-operator --include-crds \
  > "$out/defaults.yaml" || status=1
"$helm" template kms "$chart" --namespace kubevirt-metrics-operator --include-crds "${all_on[@]}" \
  > "$out/all.yaml" || status=1
[ "$status" -eq 0 ] || exit "$status"
echo "rendered $chart: $(grep -c '^kind:' "$out/defaults.yaml") objects with the defaults, $(grep -c '^kind:' "$out/all.yaml") with everything enabled"

python3 - "$out" "$k8s_version" <<'PY' || status=1
import subprocess, sys, yaml, jsonschema
out, version = sys.argv[1], sys.argv[2]
crds = {}
for path in ["crds/metricssidecarpolicies.metrics.kubevirt.io.yaml", "testdata/prometheus-operator/crds.yaml"]:
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            for v in doc["spec"]["versions"]:
                crds[(doc["spec"]["group"] + "/" + v["name"], doc["spec"]["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
failed = 0
for name in ["defaults", "all"]:
    docs = [d for d in yaml.safe_load_all(open(f"{out}/{name}.yaml")) if d]
    builtin = [d for d in docs if (d["apiVersion"], d["kind"]) not in crds]
    custom = [d for d in docs if (d["apiVersion"], d["kind"]) in crds]
    path = f"{out}/{name}-builtin.yaml"
    with open(path, "w") as f:
        yaml.safe_dump_all(builtin, f)
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, path],
                            capture_output=True, text=True)
    if result.returncode != 0:
        failed += 1
        print(result.stdout + result.stderr, file=sys.stderr)
    for doc in custom:
        schema = crds[(doc["apiVersion"], doc["kind"])]
        try:
            jsonschema.validators.validator_for(schema)(schema).validate(doc)
        except jsonschema.ValidationError as error:
            failed += 1
            print(f"FAIL: {name}: {doc['kind']}/{doc['metadata']['name']}: {error.message}", file=sys.stderr)
    print(f"{name}: {len(builtin)} built-in objects validated against Kubernetes {version}, "
          f"{len(custom)} custom resources against their CRDs")
sys.exit(1 if failed else 0)
PY

[ "$status" -eq 0 ] && echo "chart OK (Kubernetes $k8s_version)"
exit "$status"
