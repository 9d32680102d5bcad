#!/usr/bin/env bash
# Renders the kustomize trees under config/ and validates the output offline against the
# Kubernetes OpenAPI schemas (PyPI kubernetes-validate, --strict: unknown fields fail).
#   scripts/validate-config.sh            # K8S_VERSION defaults to 1.33.0
# Needs kubectl (KUBECTL, .work/bin/kubectl, or installed by scripts/install-kube-tools.sh) and
# installs kubernetes-validate with pip when it is missing. Custom resources (the sample
# policies) have no schema there; their CEL rules and schema are tested in
# operator/tests/crd_cel.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
k8s_version="${K8S_VERSION:-1.33.0}"

kubectl="${KUBECTL:-}"
if [ -z "$kubectl" ]; then
  [ -x .work/bin/kubectl ] || bash scripts/install-kube-tools.sh .work/bin >&2
  kubectl=.work/bin/kubectl
fi
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi

out=.work/config
mkdir -p "$out"
status=0
for tree in config/default config/samples config/crd config/rbac config/manager config/prometheus config/grafana; do
  name="$(echo "$tree" | tr '/' '-')"
  if ! "$kubectl" kustomize "$tree" > "$out/$name.yaml"; then
    echo "FAIL: kubectl kustomize $tree" >&2
    status=1
    continue
  fi
  echo "rendered $tree: $(grep -c '^kind:' "$out/$name.yaml") objects -> $out/$name.yaml"
done
[ "$status" -eq 0 ] || exit "$status"

# Everything except the custom resources (kubernetes-validate has no schema for them).
for file in "$out"/config-default.yaml "$out"/config-rbac.yaml "$out"/config-manager.yaml "$out"/config-crd.yaml "$out"/config-grafana.yaml; do
  if ! python3 -m kubernetes_validate --strict -k "$k8s_version" "$file"; then
    echo "FAIL: $file does not validate against Kubernetes $k8s_version" >&2
    status=1
  fi
done

# The manager Deployment keeps its hardening (a guard against accidental edits).
python3 - "$out/config-default.yaml" <<'PY' || status=1
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
dep = next(d for d in docs if d["kind"] == "Deployment")
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
sc = c["securityContext"]
problems = []
if pod["securityContext"].get("runAsNonRoot") is not True: problems.append("runAsNonRoot")
if pod["securityContext"].get("seccompProfile", {}).get("type") != "RuntimeDefault": problems.append("seccomp RuntimeDefault")
if sc.get("readOnlyRootFilesystem") is not True: problems.append("readOnlyRootFilesystem")
if sc.get("allowPrivilegeEscalation") is not False: problems.append("allowPrivilegeEscalation false")
if sc.get("capabilities", {}).get("drop") != ["ALL"]: problems.append("drop ALL")
if not c.get("resources", {}).get("requests") or not c["resources"].get("limits"): problems.append("resources")
if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz": problems.append("liveness /healthz")
if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz": problems.append("readiness /readyz")
for d in docs:
    if d["kind"] in ("ClusterRole", "Role"):
        for rule in d.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                if "*" in rule.get(key, []): problems.append(f"wildcard in {d['kind']} {d['metadata']['name']} {key}")
if problems:
    print("FAIL: manager hardening/RBAC: " + ", ".join(problems), file=sys.stderr)
    sys.exit(1)
print("manager hardening and RBAC (no wildcards): ok")
PY
# Custom resources (the sample policies, the PodMonitor) have no schema in
# kubernetes-validate: check them against their CRDs' openAPIV3Schema (structure and types;
# the policy's CEL rules are tested in operator/tests/crd_cel.rs).
python3 - "$out" <<'PY' || status=1
import glob, sys, yaml, jsonschema
crds = {}
for path in ["crds/metricssidecarpolicies.metrics.kubevirt.io.yaml", "testdata/prometheus-operator/crds.yaml"]:
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            for version in doc["spec"]["versions"]:
                key = (doc["spec"]["group"] + "/" + version["name"], doc["spec"]["names"]["kind"])
                crds[key] = version["schema"]["openAPIV3Schema"]
failed = checked = 0
for path in sorted(glob.glob(sys.argv[1] + "/*.yaml")) + sorted(glob.glob("config/samples/metrics_*.yaml")):
    for doc in yaml.safe_load_all(open(path)):
        if not doc or (doc.get("apiVersion"), doc.get("kind")) not in crds:
            continue
        checked += 1
        try:
            # No check_schema: the Prometheus Operator's CRDs hold Go regexes such as
            # '^(?i)(abort|warn)?$' that Python's re rejects as patterns of the schema itself.
            schema = crds[(doc["apiVersion"], doc["kind"])]
            jsonschema.validators.validator_for(schema)(schema).validate(doc)
        except jsonschema.ValidationError as error:
            failed += 1
            print(f"FAIL: {path}: {doc['kind']}/{doc['metadata']['name']}: {error.message}", file=sys.stderr)
print(f"custom resources checked against their CRD schemas: {checked}, failed: {failed}")
sys.exit(1 if failed or not checked else 0)
PY

# The sidecar alerts: promtool's own checks and unit tests (also run by
# e2e/tests/monitoring_rules.rs, so `cargo test` counts them).
if command -v promtool >/dev/null; then
  promtool check rules config/prometheus/rules/*.yml || status=1
  (cd config/prometheus && promtool test rules tests/*.test.yml) || status=1
else
  echo "FAIL: promtool not found (apt-get install prometheus; scripts/real-peers.sh up does it)" >&2
  status=1
fi

[ "$status" -eq 0 ] && echo "config OK (Kubernetes $k8s_version)"
exit "$status"
