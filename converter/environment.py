"""Hide GPUs from TensorFlow before it is imported, and import it quietly.

Why: with a GPU visible, Keras picks cuDNN kernels for LSTM/GRU and the traced
graph holds ``CudnnRNNV3``, which tf2onnx cannot convert. Conversion therefore
runs with ``CUDA_VISIBLE_DEVICES=""`` set before TensorFlow is first imported.
Nothing here runs at import time; :func:`import_tensorflow` does it on demand.
"""

from __future__ import annotations

import logging
import os
import sys
from types import ModuleType

__all__ = ["gpus_hidden", "hide_gpus", "import_tensorflow"]

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
