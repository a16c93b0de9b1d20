"""Drive Python models with Triton's own client; print what it saw as JSON.

Run in a subprocess (tritonclient registers the protobuf package `inference`
too), against onnxserve and against real Triton serving the same repository
(tests/support/python_repository.build_triton_comparable), so that the test can
compare the two answers field by field.
Usage: python triton_python_check.py HOST:PORT
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def _input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def _call(call: Any) -> dict[str, Any]:
    try:
        result = call()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return {"status": "OK", "outputs": result}


def main() -> None:
    client = grpcclient.InferenceServerClient(sys.argv[1])
    a = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    b = np.array([0.5, 0.5, 0.5, 0.5], dtype=np.float32)
    seen: dict[str, Any] = {}
    result = client.infer("add_sub", [_input("INPUT0", a), _input("INPUT1", b)])
    seen["add_sub"] = {
        "OUTPUT0": result.as_numpy("OUTPUT0").tolist(),
        "OUTPUT1": result.as_numpy("OUTPUT1").tolist(),
    }
    auto = client.infer("add_sub_auto", [_input("INPUT0", a), _input("INPUT1", b)])
    auto_config = client.get_model_config("add_sub_auto", as_json=True)["config"]
    seen["add_sub_auto"] = {
        "OUTPUT0": auto.as_numpy("OUTPUT0").tolist(),
        "inputs": [(i["name"], i["data_type"], i["dims"]) for i in auto_config["input"]],
        "max_batch_size": auto_config.get("max_batch_size", 0),
    }
    twice = client.infer("twice", [_input("A", a), _input("B", b)])
    seen["twice"] = {
        "TWICE_A": twice.as_numpy("TWICE_A").tolist(),
        "TWICE_B": twice.as_numpy("TWICE_B").tolist(),
        "platform": client.get_model_metadata("twice", as_json=True).get("platform", ""),
    }
    metadata = client.get_model_metadata("add_sub", as_json=True)
    seen["add_sub_metadata"] = {
        "platform": metadata.get("platform", ""),
        "inputs": [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]],
    }
    config = client.get_model_config("add_sub", as_json=True)["config"]
    seen["add_sub_config"] = {"backend": config.get("backend"), "name": config.get("name")}

    def judge(value: float) -> dict[str, Any]:
        return _call(
            lambda: (
                client.infer("judge", [_input("INPUT0", np.array([[value]], np.float32))])
                .as_numpy("OUTPUT0")
                .tolist()
            )
        )

    seen["judge"] = {str(v): judge(v) for v in (2.0, -1.0, 13.0)}
    # Concurrent calls: a batch where one request is refused and the others answered.
    with ThreadPoolExecutor(6) as pool:
        seen["judge_concurrent"] = list(pool.map(judge, [1.0, 2.0, -3.0, 4.0, 5.0, 6.0]))
    scores = np.array([[0.1, 0.7, 0.05, 0.15], [0.4, 0.1, 0.3, 0.2]], dtype=np.float32)
    seen["classification"] = {}
    for count in (1, 2, 10):
        labelled = client.infer(
            "labelled",
            [_input("INPUT0", scores)],
            outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=count)],
        )
        output = labelled.as_numpy("OUTPUT0")
        seen["classification"][str(count)] = {
            "values": [[e.decode() for e in row] for row in output.reshape(output.shape[0], -1)],
            "shape": list(output.shape),
            "datatype": labelled.get_output("OUTPUT0").datatype,
        }
    seen["unknown_model"] = _call(
        lambda: client.infer("no_such_model", [_input("INPUT0", a)]).as_numpy("OUTPUT0")
    )
    client.close()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
