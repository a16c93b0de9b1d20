"""Python models: Triton's Python backend API, each model in its own process.

- :mod:`.pb_utils`: ``triton_python_backend_utils`` as a model.py imports it
  (Tensor, InferenceRequest/InferenceResponse, TritonError, the helpers);
- :mod:`.ipc`: the frames both processes exchange over one socket pair;
- :mod:`.stub`: the model's process (Triton's stub): imports model.py, runs
  ``initialize``/``execute``/``finalize``, sends BLS calls back;
- :mod:`.process`: the server's side of one stub process (start, run a
  batch, answer its BLS calls, notice a crash);
- :mod:`.model`: a loaded Python model version and its batch executor.
"""
