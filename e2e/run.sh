#!/usr/bin/env bash
# The end-to-end run on kind: create a cluster whose nodes share one host directory as backing
# root, build the image and load it into the cluster, create the local key Secret, install the
# chart and the admission policies, run the suite, collect logs if anything failed, and delete the
# cluster.
#
# Needs docker, kind, kubectl, helm and cargo on PATH, /dev/fuse, and root: the suite reads the
# backing directory, whose files pods wrote as root. Locally:
#
#   sudo -E env "PATH=$PATH" e2e/run.sh
#
# CRYPTVOL_E2E_KEEP_CLUSTER=1 keeps the cluster afterwards; KIND_NODE_IMAGE picks the node image.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CRYPTVOL_E2E_CLUSTER:-cryptvol-e2e}
IMAGE=cryptvol:e2e
NAMESPACE=cryptvol
BACKING_DIR=/tmp/cryptvol-e2e/backing  # as in e2e/kind-config.yaml
ARTIFACTS=${CRYPTVOL_E2E_ARTIFACTS:-$PWD/target/e2e-artifacts}
TIMEOUT=${CRYPTVOL_E2E_TIMEOUT_SECS:-180}

for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null || { echo "e2e/run.sh needs $tool on PATH" >&2; exit 2; }
done
if [ "$(id -u)" != 0 ]; then
  echo "e2e/run.sh must run as root: the suite reads files that pods wrote as root" >&2
  exit 2
fi
if [ ! -c /dev/fuse ]; then
  echo "/dev/fuse is missing: load the fuse module (modprobe fuse)" >&2
  exit 2
fi
if ! grep -q "hostPath: $BACKING_DIR\$" e2e/kind-config.yaml; then
  echo "e2e/kind-config.yaml does not mount $BACKING_DIR" >&2
  exit 2
fi

collect_logs() {
  echo "== collecting logs into $ARTIFACTS"
  mkdir -p "$ARTIFACTS"
  local component
  for component in controller node; do
    kubectl -n "$NAMESPACE" logs -l "app.kubernetes.io/component=$component" \
      --all-containers --prefix --tail=-1 --max-log-requests=20 >"$ARTIFACTS/$component.log" 2>&1 || true
  done
  kubectl describe pods -A >"$ARTIFACTS/pods.txt" 2>&1 || true
  kubectl describe pvc -A >"$ARTIFACTS/pvcs.txt" 2>&1 || true
  kubectl get pv,pvc -A -o wide >"$ARTIFACTS/volumes.txt" 2>&1 || true
  kubectl get events -A --sort-by=.lastTimestamp >"$ARTIFACTS/events.txt" 2>&1 || true
  kind export logs "$ARTIFACTS/kind" --name "$CLUSTER" >/dev/null 2>&1 || true
  local file
  for file in controller.log node.log pvcs.txt events.txt; do
    echo "---- $file"
    tail -n 300 "$ARTIFACTS/$file"
  done
}

finish() {
  local status=$?
  if [ "$status" != 0 ]; then
    collect_logs
  fi
  if [ -z "${CRYPTVOL_E2E_KEEP_CLUSTER:-}" ]; then
    echo "== deleting cluster $CLUSTER"
    kind delete cluster --name "$CLUSTER" || true
    rm -rf "$BACKING_DIR"
  fi
  exit "$status"
}
trap finish EXIT

echo "== cluster $CLUSTER"
mkdir -p "$BACKING_DIR"
kind create cluster --name "$CLUSTER" --config e2e/kind-config.yaml --wait 180s \
  ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}

echo "== image $IMAGE"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

echo "== local key and Secret"
keys=$(mktemp -d)
docker run --rm -v "$keys:/keys" "$IMAGE" cryptvol keys create --key-file /keys/keys.json e2e
# The rotation case re-wraps a volume under this second key.
docker run --rm -v "$keys:/keys" "$IMAGE" cryptvol keys create --key-file /keys/keys.json e2e-next
kubectl create namespace "$NAMESPACE"
kubectl -n "$NAMESPACE" create secret generic cryptvol-keys --from-file=keys.json="$keys/keys.json"
rm -rf "$keys"

echo "== chart"
helm install cryptvol charts/cryptvol --namespace "$NAMESPACE" -f e2e/values.yaml --wait --timeout 5m
kubectl -n "$NAMESPACE" get pods -o wide

echo "== admission policies"
kubectl apply -f manifests/policy/
kubectl -n "$NAMESPACE" patch configmap cryptvol-encrypted-storage-classes --type merge \
  -p '{"data":{"storageClasses":"cryptvol-e2e"}}'

echo "== suite"
export CRYPTVOL_E2E_BACKING_DIR=$BACKING_DIR
export CRYPTVOL_E2E_DRIVER_NAMESPACE=$NAMESPACE
export CRYPTVOL_E2E_STORAGE_CLASS=cryptvol-e2e
export CRYPTVOL_E2E_IMAGE=$IMAGE
export CRYPTVOL_E2E_TIMEOUT_SECS=$TIMEOUT
# One test at a time: the restart test takes a node plugin down.
cargo test -p cryptvol-e2e --tests -- --ignored --test-threads=1
