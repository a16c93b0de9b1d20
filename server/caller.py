"""Calls from inside the server to a served model: ensemble steps and BLS calls.

A call takes the same way as a request from the network once it is decoded:
the registry's READY version, ``enter()``/``leave()`` (so draining waits for
it), the same validation (:func:`onnxserve.server.inference.decode_arrays`),
and the model's own scheduler, so an ensemble step or a Python model's
``pb_utils.InferenceRequest(...).exec()`` is batched together with every
other caller's requests to that model, and counted in its statistics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxserve.server.errors import INTERNAL_MESSAGE, ServerError
from onnxserve.server.inference import DecodedRequest, decode_arrays
from onnxserve.server.triton_errors import INTERNAL, code_for_error

if TYPE_CHECKING:
    from onnxserve.server.lifecycle import ServingVersion

log = logging.getLogger(__name__)

Lookup = Callable[[str, str], "ServingVersion"]


class ModelCaller:
    """Runs a request on a served model by name, through that model's scheduler."""

    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup

    async def infer(
        self,
        model_name: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        *,
        request_id: str = "",
        priority: int = 0,
        deadline_ns: int | None = None,
    ) -> tuple[DecodedRequest, dict[str, np.ndarray]]:
        """The decoded request (with its report once answered) and its outputs.

        ``version`` "" is the highest READY version. Raises the ServerError the
        call ended with (NOT_FOUND, UNAVAILABLE, INVALID_ARGUMENT...).
        """
        serving = self._lookup(model_name, version)
        serving.enter()
        try:
            started = time.monotonic_ns()
            try:
                decoded = decode_arrays(
                    serving.model.signature,
                    serving.label,
                    inputs,
                    output_names,
                    request_id=request_id,
                    priority=priority,
                )
            except ServerError as exc:
                serving.statistics.record_failure(time.monotonic_ns() - started, exc)
                raise
            outputs = await serving.scheduler.infer(decoded, deadline_ns)
            return decoded, outputs
        finally:
            serving.leave()

    def bls_handler(
        self, loop: asyncio.AbstractEventLoop
    ) -> Callable[[int, dict[str, Any], Callable[[Any, Any, int], None]], None]:
        """What a Python model's instance thread calls with each BLS call of its model.

        The call runs on ``loop`` (the server's event loop); its answer is sent
        back to the model's process from there, so a model may have several
        ``async_exec`` calls in flight at once.
        """

        def handle(
            call: int, fields: dict[str, Any], reply: Callable[[Any, Any, int], None]
        ) -> None:
            timeout_us = int(fields.get("timeout_us") or 0)
            deadline = time.monotonic_ns() + timeout_us * 1000 if timeout_us > 0 else None
            version = int(fields.get("model_version", -1))
            coroutine = self.infer(
                str(fields["model_name"]),
                "" if version < 0 else str(version),
                fields["inputs"],
                list(fields.get("outputs") or ()),
                request_id=str(fields.get("request_id") or ""),
                deadline_ns=deadline,
            )
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)

            def done(finished: concurrent.futures.Future[Any]) -> None:
                try:
                    _, outputs = finished.result()
                except ServerError as exc:
                    reply(None, exc.message, code_for_error(exc))
                    return
                except BaseException as exc:
                    log.error("a BLS call failed", exc_info=exc)
                    reply(None, INTERNAL_MESSAGE, INTERNAL)
                    return
                reply({name: _for_python(array) for name, array in outputs.items()}, None, 0)

            future.add_done_callback(done)

        return handle


def _for_python(array: np.ndarray) -> np.ndarray:
    """An output as a Python model reads it: contiguous, BYTES elements as bytes."""
    if array.dtype == object:
        flat = [e if isinstance(e, bytes) else str(e).encode("utf-8") for e in array.reshape(-1)]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(array.shape)
    return np.ascontiguousarray(array)
