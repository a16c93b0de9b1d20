"""Hide GPUs from TensorFlow before it is imported, and import it quietly.

Quietly: TensorFlow 2.21's C++ start-up lines (oneDNN's "custom operations
are on", cpu_feature_guard's "optimized to use available CPU instructions",
absl's "All log messages before absl::InitializeLog()") ignore
TF_CPP_MIN_LOG_LEVEL and go straight to file descriptor 2, so
:func:`native_noise_filtered` runs ``onnxserve convert`` with descriptor 2 fed
through a filter that drops the lines of :data:`NATIVE_NOISE` and passes every
other line on as it comes. Other native start-up lines belong in that tuple,
so that one place decides what convert's output leaves out.

Why: with a GPU visible, Keras picks cuDNN kernels for LSTM/GRU and the traced
graph holds ``CudnnRNNV3``, which tf2onnx cannot convert. Conversion therefore
runs with ``CUDA_VISIBLE_DEVICES=""`` set before TensorFlow is first imported.
Nothing here runs at import time; :func:`import_tensorflow` does it on demand.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

__all__ = [
    "NATIVE_NOISE",
    "gpus_hidden",
    "hide_gpus",
    "import_tensorflow",
    "native_noise_filtered",
]

#: Lines native libraries write to stderr that tell a converter's user nothing.
NATIVE_NOISE: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern)
    for pattern in (
        r"oneDNN custom operations are on",
        r"cpu_feature_guard\.cc",
        r"^To enable the following instructions: .* rebuild TensorFlow",
        r"^WARNING: All log messages before absl::InitializeLog\(\) is called",
        r"Unable to register cu(DNN|FFT|BLAS) factory",
        r"computation_placer\.cc",
        r"TF-TRT Warning: Could not find TensorRT",
        r"Could not find cuda drivers on your machine",
        r"failed call to cuInit",
    )
)

log = logging.getLogger(__name__)


def hide_gpus() -> bool:
    """Hide GPUs from TensorFlow; return True when TensorFlow will not use one.

    Before TensorFlow is imported, setting ``CUDA_VISIBLE_DEVICES=""`` suffices
    (and is the only reliable way). When TensorFlow is already imported (a
    caller passing an in-memory keras.Model), GPUs are hidden through
    ``tf.config.set_visible_devices`` if TensorFlow has not initialised them
    yet; if it has, False is returned and the caller warns.
    """
    if "tensorflow" not in sys.modules:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return True
    return gpus_hidden()


def gpus_hidden() -> bool:
    """True when an already imported TensorFlow sees no GPU (hiding them if still possible)."""
    import tensorflow as tf

    try:
        if not tf.config.list_physical_devices("GPU"):
            return True
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # GPUs were initialised already; they can no longer be hidden.
        return not tf.config.list_logical_devices("GPU")
    return not tf.config.list_logical_devices("GPU")


def import_tensorflow() -> ModuleType:
    """Import TensorFlow with GPUs hidden (see the module docstring for why)."""
    if not hide_gpus():
        log.warning(
            "TensorFlow was imported with a GPU visible before conversion. Recurrent layers "
            "are traced with Keras' generic kernels anyway, but if conversion fails, set "
            'CUDA_VISIBLE_DEVICES="" before importing TensorFlow.'
        )
    import tensorflow as tf

    return tf


@contextmanager
def native_noise_filtered(patterns: Sequence[re.Pattern[str]] = NATIVE_NOISE) -> Iterator[None]:
    """Within the block, lines written to descriptor 2 that match ``patterns`` are dropped.

    Descriptor 2 becomes a pipe that a thread reads line by line and copies
    to the original stderr, so Python's own stderr (progress lines, warnings,
    tracebacks) and native libraries' other lines still appear, in order.
    """
    sys.stderr.flush()
    original = os.dup(2)
    reader, writer = os.pipe()
    os.dup2(writer, 2)
    os.close(writer)

    def pump() -> None:
        with os.fdopen(reader, "rb") as lines:
            for line in lines:
                text = line.decode("utf-8", errors="replace")
                if not any(p.search(text) for p in patterns):
                    os.write(original, line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last writer goes: the thread reads to its end
        thread.join(timeout=5)
        os.close(original)
