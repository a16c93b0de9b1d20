"""Explanations: which words, tokens, pixels or columns drove a served model's prediction.

Client side only, on top of the SDK, so it works against any Open Inference
Protocol server (onnxserve, Triton, KServe): perturbed copies of one input go
to the server in batches (the server's batcher merges them), and the answers
are turned into one attribution per feature by occlusion (built here, exact)
or by shap's and lime's estimators (the ``explain`` extra:
``pip install 'onnxserve[explain]'``).

Example::

    import numpy as np
    from onnxserve.client import Client
    from onnxserve.client.explain import explain

    with Client("localhost:8001") as client:
        image = np.load("digit.npy")                     # (8, 8) grey levels
        result = explain(client, "digits", {"image": image}, method="occlusion")
    print(result.score, result.inferences, f"{result.seconds:.2f}s")
    for item in result.ranked()[:5]:
        print(item.label, item.attribution)

``explain_async`` takes an :class:`~onnxserve.client.AsyncClient` and the same
arguments. :mod:`onnxserve.client.explain.render` prints tables and coloured
sentences and draws heat maps; ``onnxserve explain`` does all of it from a shell.
"""

from onnxserve.client.explain.core import DEFAULT_MAX_ROWS, explain, explain_async
from onnxserve.client.explain.features import FeatureSpace, TokenCodec
from onnxserve.client.explain.methods import METHODS
from onnxserve.client.explain.result import Attribution, Explanation

__all__ = [
    "DEFAULT_MAX_ROWS",
    "METHODS",
    "Attribution",
    "Explanation",
    "FeatureSpace",
    "TokenCodec",
    "explain",
    "explain_async",
]
