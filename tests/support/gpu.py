"""Whether this process can run onnxruntime on CUDA, and if not, why (a skip reason in words).

The check is real: it creates a CUDA session on a tiny model and reads the
providers back, because onnxruntime-gpu lists CUDAExecutionProvider even
where its libraries are missing and then silently runs on the CPU.
"""

from __future__ import annotations

import ctypes
import functools
import os
import tempfile
from pathlib import Path

from onnxserve.server.runtime import CUDA, nvidia_gpu_visible
from tests.support.gpu_models import dense_model


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """None when a CUDA session works here; else what is missing."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return "onnxruntime has no CUDA provider here (onnxruntime-gpu is not installed)"
    if nvidia_gpu_visible() is False:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and not visible.strip():
            return (
                "CUDA_VISIBLE_DEVICES is empty: the suite hides GPUs unless it is set "
                "(benchmarks/gpu_check.sh sets it)"
            )
        return "no NVIDIA GPU is visible to this process (no /dev/nvidia* device)"
    with tempfile.TemporaryDirectory(prefix="onnxserve-cuda-probe-") as folder:
        model = dense_model(Path(folder) / "probe.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(model), options, providers=[CUDA])
        except Exception as exc:  # onnxruntime raises several unrelated types
            return f"onnxruntime could not create a CUDA session: {exc}"
        if CUDA in session.get_providers():
            return None
    return f"onnxruntime fell back to the CPU: {_missing_library()}"


def _missing_library() -> str:
    """Loading the CUDA provider's library names the first dependency the loader cannot find."""
    import onnxruntime as ort

    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return str(exc).replace(str(library.parent) + "/", "")
    return "its CUDA provider library loads, so the driver or the GPU refused"


@functools.cache
def tensorrt_libraries_load() -> bool:
    """Whether libnvinfer and libnvonnxparser (onnxruntime's TensorRT provider needs them) load."""
    try:
        ctypes.CDLL("libnvinfer.so.10")
        ctypes.CDLL("libnvonnxparser.so.10")
    except OSError:
        return False
    return True
