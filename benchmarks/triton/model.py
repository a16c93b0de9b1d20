"""Triton python-backend model: onnxruntime on each batch Triton's dynamic batcher forms.

Triton has no onnxruntime backend in the PyTriton wheel, so the benchmark's
peer runs the same model.onnx through onnxruntime here, once per batch:
concatenate the requests' input rows, run, split the output back. The session
runs as a Triton user would run it for throughput: onnxruntime's own defaults
(intra-op threads = the machine's cores, spinning on), unless the config's
``intra_op_thread_count`` (0: the default) or ``allow_spinning`` ("0"/"1")
parameters say otherwise, which the benchmark's ``--triton`` variants set.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        threads = int(parameters.get("intra_op_thread_count", {}).get("string_value", "0"))
        spinning = parameters.get("allow_spinning", {}).get("string_value", "")
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        if spinning in ("0", "1"):
            options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.session = ort.InferenceSession(
            os.path.join(folder, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        feeds = {}
        sizes = []
        for name in self.inputs:
            arrays = [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            if not sizes:
                sizes = [len(array) for array in arrays]
            feeds[name] = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        results = self.session.run(self.outputs, feeds)
        responses = []
        start = 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, result[start : start + size])
                for name, result in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
