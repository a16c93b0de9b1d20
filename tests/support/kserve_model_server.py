"""A tiny KServe v2 model server: the second Open Inference Protocol implementation.

Run from .venv-kserve (KServe cannot share an environment with the project):
    python kserve_model_server.py GRPC_PORT HTTP_PORT

Models, all written with KServe's own Model API:
- simple: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (FP32), answered raw.
- simple_typed: the same, answered in typed contents (fp32_contents) instead of raw.
- identity: returns INPUT0 as OUTPUT0 with its datatype, whatever it is.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

_TENSOR = [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]},
           {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 16]}]  # fmt: skip
_OUTPUTS = [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 16]},
            {"name": "OUTPUT1", "datatype": "FP32", "shape": [-1, 16]}]  # fmt: skip


def _inputs(payload: InferRequest) -> dict[str, np.ndarray]:
    return {tensor.name: tensor.as_numpy() for tensor in payload.inputs}


class AddSub(Model):
    """Triton's "simple" model written against KServe's API."""

    def __init__(self, name: str, raw: bool) -> None:
        super().__init__(name)
        self.raw = raw
        self.ready = True

    def get_input_types(self) -> list[dict[str, Any]]:
        return _TENSOR

    def get_output_types(self) -> list[dict[str, Any]]:
        return _OUTPUTS

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        tensors = _inputs(payload)
        a, b = tensors["INPUT0"], tensors["INPUT1"]
        outputs = []
        for name, value in (("OUTPUT0", a + b), ("OUTPUT1", a - b)):
            value = value.astype(np.float32)
            if self.raw:
                output = InferOutput(name=name, shape=list(value.shape), datatype="FP32")
                output.set_data_from_numpy(value, binary_data=True)
            else:
                output = InferOutput(
                    name=name,
                    shape=list(value.shape),
                    datatype="FP32",
                    data=value.reshape(-1).tolist(),
                )
            outputs.append(output)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs)


class Identity(Model):
    """Echoes INPUT0 back as OUTPUT0, for datatype round trips."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ready = True

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        (tensor,) = payload.inputs
        value = tensor.as_numpy()
        output = InferOutput(name="OUTPUT0", shape=list(value.shape), datatype=tensor.datatype)
        output.set_data_from_numpy(value, binary_data=True)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=[output])


def main() -> None:
    grpc_port, http_port = int(sys.argv[1]), int(sys.argv[2])
    models = [AddSub("simple", raw=True), AddSub("simple_typed", raw=False), Identity("identity")]
    ModelServer(grpc_port=grpc_port, http_port=http_port, enable_docs_url=False).start(models)


if __name__ == "__main__":
    main()
