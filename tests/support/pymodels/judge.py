"""A Python model whose requests decide how it fails (for the error and crash tests).

OUTPUT0 = 2 * INPUT0 per request, except: a negative value gets its own
TritonError (INVALID_ARG); 13 makes ``execute`` raise; 666 kills the process
with SIGSEGV (as a crashing C extension would).
"""

import os
import signal

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.batches = 0

    def execute(self, requests):
        self.batches += 1
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if (value == 666).any():
                os.kill(os.getpid(), signal.SIGSEGV)
            if (value == 13).any():
                raise RuntimeError("thirteen is unlucky")
            if (value < 0).any():
                error = pb_utils.TritonError(
                    "negative input is refused", pb_utils.TritonError.INVALID_ARG
                )
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            doubled = pb_utils.Tensor("OUTPUT0", (value * 2).astype(np.float32))
            batches = pb_utils.Tensor(
                "BATCHES", np.full((value.shape[0], 1), self.batches, dtype=np.int32)
            )
            responses.append(pb_utils.InferenceResponse(output_tensors=[doubled, batches]))
        return responses
