"""Build ModelInferRequests from numpy arrays the way Triton's client does (raw contents)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from onnxserve.protocol import codec
from onnxserve.protocol import grpc_service_pb2 as pb


def infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    version: str = "",
    outputs: Sequence[str] = (),
    request_id: str = "",
    raw: bool = True,
    datatypes: Mapping[str, str] | None = None,
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        datatype = (datatypes or {}).get(name) or codec.datatype_of(array)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            request.raw_input_contents.append(codec.array_to_raw(array, datatype))
        else:
            codec.array_to_contents(array, datatype, tensor.contents)
    for name in outputs:
        request.outputs.add(name=name)
    return request


def outputs_of(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    result = {}
    for index, tensor in enumerate(response.outputs):
        if response.raw_output_contents:
            result[tensor.name] = codec.raw_to_array(
                response.raw_output_contents[index], tensor.datatype, tensor.shape
            )
        else:
            result[tensor.name] = codec.contents_to_array(
                tensor.contents, tensor.datatype, tensor.shape
            )
    return result
