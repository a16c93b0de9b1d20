"""Dynamic batching: merge concurrent requests of one model into one onnxruntime run.

Batching is why a server beats calling onnxruntime in each service: an LSTM
runs several times more samples per second at batch 64 than at batch 1. The
batcher follows Triton's dynamic batcher where its config says so, and
TensorFlow Serving's opportunistic batching where it says nothing. Its parts:

- :mod:`.queue`: the queued requests by priority level, their queue policies
  and timeouts, and which requests would form the next batch;
- :mod:`.load`: how busy the model is lately (smoothed load, arrival gaps,
  one-row run time), for gathering under load and inline runs;
- :mod:`.executor`: one batch run (merge, pad, run, split, time, record),
  shared with the direct scheduler;
- :mod:`.batcher`: :class:`DynamicBatcher`, which decides when a batch leaves
  and where it runs, and delivers each request's outcome (in arrival order
  with ``preserve_ordering``).

``dynamic_batching`` itself is read and checked by
:mod:`onnxserve.server.config_batching`.
"""

from __future__ import annotations

from onnxserve.server.batching.batcher import DynamicBatcher

__all__ = ["DynamicBatcher"]
