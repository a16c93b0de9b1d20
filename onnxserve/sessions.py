"""One way to build an onnxruntime InferenceSession, for the server, the bench and the converter.

Each of them used to set providers, options and logging up in its own way.
:func:`create_session` takes the model (a file or its bytes), the providers
in priority order (names, or ``(name, options)`` pairs), and either prepared
SessionOptions or the few settings the callers vary; it keeps onnxruntime's
own log quiet (the callers report fallbacks and failures once, in words) and
raises :class:`SessionError` with onnxruntime's message, the model's path
replaced by its file name, so that no caller leaks a path. onnxruntime is
imported on first use: importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CPU_PROVIDER", "SessionError", "create_session"]

CPU_PROVIDER = "CPUExecutionProvider"
_GRAPH_LEVELS = ("basic", "extended", "all")
# onnxruntime's default logger severity (warning), restored after a quiet creation.
_DEFAULT_SEVERITY = 2
_MESSAGE_LIMIT = 500

Provider = str | tuple[str, dict[str, str]]


class SessionError(RuntimeError):
    """onnxruntime could not create the session; the message holds no path."""


def create_session(
    model: Path | bytes,
    providers: Sequence[Provider] = (CPU_PROVIDER,),
    *,
    options: Any = None,
    intra_op_threads: int = 0,
    graph_optimization: str | None = None,
    optimized_model_path: Path | None = None,
    quiet_providers: bool = False,
) -> Any:
    """An ``onnxruntime.InferenceSession``; raises SessionError naming what went wrong.

    ``options``: prepared SessionOptions (then the three settings after it
    must be left out); else new options with ``intra_op_threads`` (0:
    onnxruntime's default), ``graph_optimization`` ("basic", "extended",
    "all"; None: onnxruntime's default, all) and ``optimized_model_path``
    (where onnxruntime writes the optimized graph). The session's own log
    shows errors only. ``quiet_providers`` also silences onnxruntime's
    process-wide log while the providers load, for callers that report a
    fallback themselves from the providers in use (a CUDA provider whose
    libraries are missing otherwise prints a page of loader errors).
    """
    import onnxruntime as ort

    if options is None:
        options = ort.SessionOptions()
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        if graph_optimization is not None:
            if graph_optimization not in _GRAPH_LEVELS:
                raise ValueError(f"graph_optimization must be one of {', '.join(_GRAPH_LEVELS)}")
            options.graph_optimization_level = {
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            }[graph_optimization]
        if optimized_model_path is not None:
            options.optimized_model_filepath = str(optimized_model_path)
    elif intra_op_threads or graph_optimization or optimized_model_path:
        raise ValueError("give prepared options or the settings to prepare them, not both")
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    if quiet_providers:
        ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises several unrelated types
        message = str(exc).strip()
        if isinstance(model, Path):
            message = message.replace(str(model), model.name)
        raise SessionError(message[:_MESSAGE_LIMIT]) from None
    finally:
        if quiet_providers:
            ort.set_default_logger_severity(_DEFAULT_SEVERITY)
