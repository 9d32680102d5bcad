# Developer shortcuts; every recipe is a plain script underneath, so `just` is optional.

# Bring up a local QEMU guest and show the virt-handler sidecar's kubevirt_vmi_* metrics.
quickstart:
    bash scripts/quickstart.sh

# Everything CI runs: real peers, lints, tests, manifest checks.
test:
    bash scripts/test.sh

# Regenerate the committed CRD YAML from the Rust types.
crd:
    cargo run -q -p kubevirt-metrics-operator -- crd > crds/metricssidecarpolicies.metrics.kubevirt.io.yaml

# Rewrite golden files after an intended output change (review the diff!).
update-golden:
    UPDATE_GOLDEN=1 cargo test --workspace

bench:
    bash bench/handler-vs-exporter.sh

peers-up:
    bash scripts/real-peers.sh up

peers-down:
    bash scripts/real-peers.sh down

images:
    docker build -f Dockerfile.collectors -t kubevirt-metrics-collectors:dev .
    docker build -f Dockerfile.operator -t kubevirt-metrics-operator:dev .

# Both images with bases made from Debian packages (no container registry), smoke-tested.
images-local:
    bash scripts/build-images.sh
