"""Drive a server's REST port with KServe's own REST client, unmodified; print what it saw as JSON.

KServe's ``InferenceRESTClient`` (``RESTConfig(protocol="v2")``) has, in 0.21,
infer, is_server_live, is_server_ready and is_model_ready, and no metadata
calls: the metadata documents are fetched with httpx (the library the client
itself uses) and parsed with KServe's own v2 data models
(kserve.protocol.rest.v2_datamodels), the ones KServe's server answers with.
Every call is attempted on its own: what one raises (its type, status and
message) is recorded, and the next goes on.

Run from .venv-kserve by tests/test_client_kserve.py (KServe registers the
protobuf package `inference` too, and needs protobuf 6).
Usage: python kserve_rest_check.py BASE_URL TOKEN < CASES.json
CASES.json: a list of {"model", "datatype", "shape", "data", "binary_in", "binary_out"}.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import InferResponse, RequestedOutput
from kserve.protocol.rest import v2_datamodels

# What each document is, in KServe's own types (fetched with the token).
DOCUMENTS = {
    "/v2/health/live": v2_datamodels.ServerLiveResponse,
    "/v2/health/ready": v2_datamodels.ServerReadyResponse,
    "/v2": v2_datamodels.ServerMetadataResponse,
    "/v2/models/simple": v2_datamodels.ModelMetadataResponse,
    "/v2/models/simple_config/versions/2": v2_datamodels.ModelMetadataResponse,
    "/v2/models/simple/ready": v2_datamodels.ModelReadyResponse,
    "/v2/models/simple_config/versions/2/ready": v2_datamodels.ModelReadyResponse,
}


def _error(exc: BaseException) -> dict[str, Any]:
    seen: dict[str, Any] = {"type": f"{type(exc).__module__}.{type(exc).__qualname__}"}
    seen["message"] = str(exc)
    if isinstance(exc, httpx.HTTPStatusError):
        seen["status"] = exc.response.status_code
        seen["content_type"] = exc.response.headers.get("content-type")
        seen["body"] = exc.response.text
    return seen


async def attempt(call: Awaitable[Any]) -> dict[str, Any]:
    """{"value": what the call returned} or {"error": what it raised}."""
    try:
        return {"value": await call}
    except Exception as exc:
        return {"error": _error(exc)}


def _plain(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _response(response: InferResponse, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "id": response.id,
        "model_name": response.model_name,
        # Binary outputs come back as application/octet-stream with the JSON's length.
        "content_type": headers.get("content-type"),
        "header_length": headers.get("inference-header-content-length"),
        "outputs": {
            o.name: {
                "datatype": o.datatype,
                "shape": list(o.shape),
                "data": [_plain(v) for v in o.as_numpy().reshape(-1).tolist()],
            }
            for o in response.outputs
        },
    }


class Checks:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.auth = {"Authorization": f"Bearer {token}"}
        self.client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
        self.http = httpx.AsyncClient(base_url=base, headers=self.auth, timeout=30)

    async def infer(
        self, request: InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        answered: dict[str, str] = {}
        response = await self.client.infer(
            self.base,
            request,
            model_name=request.model_name,
            # A fresh dict each call: for binary inputs KServe adds its
            # Inference-Header-Content-Length and content-type to the one it is given.
            headers=dict(self.auth if headers is None else headers),
            response_headers=answered,
        )
        return _response(response, answered)

    async def document(self, path: str) -> dict[str, Any]:
        response = await self.http.get(path)
        seen: dict[str, Any] = {"status": response.status_code, "body": response.json()}
        try:
            DOCUMENTS[path].model_validate_json(response.content)
            seen["valid"] = True
        except Exception as exc:
            seen["valid"] = str(exc)
        return seen

    async def as_document(self, request: dict[str, Any]) -> dict[str, Any]:
        """A JSON request through the client's dict path (is_graph_endpoint: the URL as
        given, the answer as a dict), the answer parsed as KServe's InferenceResponse."""
        url = f"{self.base}/v2/models/{request['model_name']}/infer"
        answer = await self.client.infer(
            url, request, headers=dict(self.auth), is_graph_endpoint=True
        )
        seen: dict[str, Any] = {"body": answer}
        try:
            v2_datamodels.InferenceResponse.model_validate(answer)
            seen["valid"] = True
        except Exception as exc:
            seen["valid"] = str(exc)
        return seen

    async def case(self, case: dict[str, Any]) -> dict[str, Any]:
        tensor = InferInput("INPUT0", case["shape"], case["datatype"])
        # The numpy type named outright: 2**64 - 1 among small integers is no float.
        data = np.array(case["data"], dtype=_NP[case["datatype"]]).reshape(case["shape"])
        tensor.set_data_from_numpy(data, binary_data=case["binary_in"])
        outputs = [RequestedOutput("OUTPUT0", {"binary_data": case["binary_out"]})]
        request = InferRequest(case["model"], [tensor], request_outputs=outputs)
        return await attempt(self.infer(request))

    async def run(self, cases: list[dict[str, Any]]) -> dict[str, Any]:
        a = np.arange(32, dtype=np.float32).reshape(2, 16)
        b = np.full((2, 16), 0.5, dtype=np.float32)
        client, base, auth = self.client, self.base, self.auth
        seen: dict[str, Any] = {
            # Health takes no token (probes); the rest do.
            "live": await attempt(client.is_server_live(base)),
            "ready": await attempt(client.is_server_ready(base)),
            "model_ready": await attempt(client.is_model_ready(base, "simple", headers=auth)),
            "version_ready": await attempt(
                client.is_model_ready(base, "simple_config/versions/2", headers=auth)
            ),
            "unknown_model_ready": await attempt(
                client.is_model_ready(base, "no_such_model", headers=auth)
            ),
            "model_ready_without_token": await attempt(client.is_model_ready(base, "simple")),
            "documents": {path: await self.document(path) for path in DOCUMENTS},
        }
        simple: dict[str, Any] = {}
        for mode in ("json", "binary", "binary_data_output"):
            parameters = {"binary_data_output": True} if mode == "binary_data_output" else None
            simple[mode] = await attempt(
                self.infer(_add_sub("simple", a, b, f"rest-{mode}", mode == "binary", parameters))
            )
        seen["simple"] = simple
        # One input in JSON, the other binary, in one request.
        seen["mixed"] = await attempt(self.infer(_add_sub("simple", a, b, "mixed", None)))
        tensor = {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
        request = {"model_name": "identity_fp32", "inputs": [tensor]}
        seen["response_documents"] = {
            "with_id": await attempt(self.as_document({"id": "doc-1", **request})),
            "without_id": await attempt(self.as_document(request)),
        }
        seen["tensors"] = [await self.case(case) for case in cases]
        many = await asyncio.gather(
            *(
                attempt(self.infer(_add_sub("simple", a + i, b, f"c{i}", i % 2 == 0)))
                for i in range(32)
            )
        )
        seen["concurrent"] = [
            m.get("value", {}).get("outputs", {}).get("OUTPUT0", {}).get("data") for m in many
        ]
        seen["errors"] = await self.errors(a, b)
        await self.client.close()
        await self.http.aclose()
        return seen

    async def errors(self, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        wrong = InferInput("INPUT0", [1, 3], "FP32")
        wrong.set_data_from_numpy(np.ones((1, 3), np.float32), binary_data=False)
        errors = {
            "unknown_model": await attempt(self.infer(_add_sub("no_such_model", a, b, "x", True))),
            "unknown_model_json": await attempt(
                self.infer(_add_sub("no_such_model", a, b, "x", False))
            ),
            "wrong_shape": await attempt(self.infer(InferRequest("identity_fp32", [wrong]))),
            "no_token": await attempt(self.infer(_add_sub("simple", a, b, "x", True), headers={})),
        }
        # A model unloaded (explicit model control): not ready, and calls to it refused.
        unload = await self.http.post("/v2/repository/models/fixed/unload")
        errors["unload_status"] = unload.status_code
        errors["unloaded_ready"] = await attempt(
            self.client.is_model_ready(self.base, "fixed", headers=self.auth)
        )
        errors["unloaded_infer"] = await attempt(self.infer(_add_sub("fixed", a, b, "u", True)))
        load = await self.http.post("/v2/repository/models/fixed/load")
        errors["load_status"] = load.status_code
        errors["reloaded_ready"] = await attempt(
            self.client.is_model_ready(self.base, "fixed", headers=self.auth)
        )
        return errors


def _add_sub(
    model: str,
    a: np.ndarray,
    b: np.ndarray,
    request_id: str,
    binary: bool | None,
    parameters: dict[str, Any] | None = None,
) -> InferRequest:
    """INPUT0 and INPUT1 for the add/sub models; binary None: INPUT0 as JSON, INPUT1 binary."""
    inputs = [
        InferInput(name="INPUT0", shape=list(a.shape), datatype="FP32"),
        InferInput(name="INPUT1", shape=list(b.shape), datatype="FP32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=bool(binary))
    inputs[1].set_data_from_numpy(b, binary_data=binary is None or binary)
    return InferRequest(
        model_name=model, infer_inputs=inputs, request_id=request_id, parameters=parameters
    )


_NP: dict[str, Any] = {
    "BYTES": np.object_,
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


if __name__ == "__main__":
    found = asyncio.run(Checks(sys.argv[1], sys.argv[2]).run(json.load(sys.stdin)))
    print(json.dumps(found))
