"""A Python model that calls another served model (BLS): OUTPUT0 = target(INPUT0, INPUT0).OUTPUT0.

The target and the way of calling come from the config's parameters: "target" (a
model name) and "mode" ("async": every request's call in flight at once with
async_exec; "sync": one exec() after the other).
"""

import asyncio
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.target = parameters["target"]["string_value"]
        self.mode = parameters["mode"]["string_value"]

    def _call(self, request):
        value = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
        return pb_utils.InferenceRequest(
            model_name=self.target,
            inputs=[pb_utils.Tensor("INPUT0", value), pb_utils.Tensor("INPUT1", value)],
            requested_output_names=["OUTPUT0"],
        )

    @staticmethod
    def _answer(response):
        if response.has_error():
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError("the call failed: " + response.error().message())
            )
        output = pb_utils.get_output_tensor_by_name(response, "OUTPUT0")
        return pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", output.as_numpy())])

    async def execute(self, requests):
        calls = [self._call(request) for request in requests]
        if self.mode == "async":
            responses = await asyncio.gather(*(call.async_exec() for call in calls))
        else:
            responses = [call.exec() for call in calls]
        return [self._answer(response) for response in responses]
