#!/bin/sh
# Copy a model repository (Triton's layout) into the onnxserve-models claim:
#   deploy/kubernetes/fill-models.sh build/model_repository
# Starts deploy/kubernetes/models-filler (a pod holding the claim read-write),
# copies with kubectl cp, lists what arrived, deletes the pod. The server's
# pods read the claim read-only; in poll mode they load what was added, else
# restart them: kubectl -n onnxserve rollout restart deployment/onnxserve.
set -eu
repository=${1:?usage: fill-models.sh REPOSITORY}
namespace=onnxserve
here=$(cd "$(dirname "$0")" && pwd)
if [ ! -d "$repository" ]; then
    echo "fill-models.sh: $repository is not a directory" >&2
    exit 2
fi
kubectl apply -k "$here/models-filler"
trap 'kubectl delete -k "$here/models-filler" --wait=false' EXIT
kubectl wait -n "$namespace" --for=condition=Ready --timeout=300s pod/onnxserve-models-filler
kubectl cp "$repository/." "$namespace/onnxserve-models-filler:/models"
kubectl exec -n "$namespace" onnxserve-models-filler -- find /models -name model.onnx
