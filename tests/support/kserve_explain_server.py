"""KServe's own model server with the explanation tests' known-position models.

Run from .venv-kserve (KServe cannot share an environment with the project):
    python kserve_explain_server.py GRPC_PORT HTTP_PORT

Written with KServe's Model API, in numpy (the KServe environment has no
onnxruntime), computing what tests/support/explain_models.py's ONNX graphs do:
- token_counts: INT32 ids [-1, 12] -> sum of per-id weights (id 5: +2, id 9: -1.5), [-1, 1].
- region_mean: FP32 images [-1, 8, 8] -> mean of rows 2:4, columns 4:6, [-1, 1].
KServe answers no ModelConfig, so a client learns no max_batch_size from it.
The weights are repeated here rather than imported: this file runs in KServe's
environment, outside the project.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

TOKEN_WEIGHTS = {5: 2.0, 9: -1.5}


class KnownPositions(Model):
    def __init__(self, name: str, input_type: dict[str, Any]) -> None:
        super().__init__(name)
        self.input_type = input_type
        self.ready = True

    def get_input_types(self) -> list[dict[str, Any]]:
        return [self.input_type]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}]

    def score(self, value: np.ndarray) -> np.ndarray:
        if self.name == "token_counts":
            weights = np.zeros(20, np.float32)
            for token, weight in TOKEN_WEIGHTS.items():
                weights[token] = weight
            return weights[value.astype(np.int64)].sum(axis=1, keepdims=True)
        return value[:, 2:4, 4:6].mean(axis=(1, 2))[:, np.newaxis]

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        (tensor,) = payload.inputs
        value = tensor.as_numpy()
        expected = self.input_type["shape"][1:]
        if list(value.shape[1:]) != expected:
            raise ValueError(f"input {tensor.name} must be [-1, {expected}], got {value.shape}")
        score = self.score(value).astype(np.float32)
        output = InferOutput(name="score", shape=list(score.shape), datatype="FP32")
        output.set_data_from_numpy(score, binary_data=True)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=[output])


def main() -> None:
    grpc_port, http_port = int(sys.argv[1]), int(sys.argv[2])
    models = [
        KnownPositions("token_counts", {"name": "tokens", "datatype": "INT32", "shape": [-1, 12]}),
        KnownPositions("region_mean", {"name": "image", "datatype": "FP32", "shape": [-1, 8, 8]}),
    ]
    ModelServer(grpc_port=grpc_port, http_port=http_port, enable_docs_url=False).start(models)


if __name__ == "__main__":
    main()
