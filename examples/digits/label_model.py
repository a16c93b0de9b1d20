"""The model.py of ``digits_label``: the digits model's probabilities -> label and probability.

A Triton Python-backend model (``backend: "python"``), the post-processing step
of the ``digits_labelled`` ensemble. It is copied into the repository as
``digits_label/1/model.py`` and runs in its own process, where
``triton_python_backend_utils`` is importable; it is never imported here.
"""

import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], "labels.txt")
        with open(path, encoding="utf-8") as handle:
            self.labels = [line.strip() for line in handle if line.strip()]

    def execute(self, requests):
        responses = []
        for request in requests:
            probabilities = pb_utils.get_input_tensor_by_name(request, "probabilities").as_numpy()
            best = probabilities.argmax(axis=1)
            labels = np.array([[self.labels[i].encode()] for i in best], dtype=object)
            chosen = probabilities[np.arange(len(best)), best].reshape(-1, 1)
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor("label", labels),
                        pb_utils.Tensor("probability", chosen.astype(np.float32)),
                    ]
                )
            )
        return responses
