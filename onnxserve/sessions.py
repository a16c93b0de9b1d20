"""One way to build an onnxruntime InferenceSession, for the server, the bench and the converter.

Each of them used to set providers, options and logging up in its own way.
:func:`create_session` takes the model (a file or its bytes), the providers
in priority order (names, or ``(name, options)`` pairs), and either prepared
SessionOptions or the few settings the callers vary; it keeps onnxruntime's
own log quiet (the callers report fallbacks and failures once, in words) and
raises :class:`SessionError` with onnxruntime's message, the model's path
replaced by its file name, so that no caller leaks a path. onnxruntime is
imported on first use: importing this module costs nothing.

Custom operators: a model whose graph uses the ``ai.onnx.contrib`` domain
(string ops that standard ONNX lacks, as the converter's text preprocessing
emits: StringRegexReplace, StringRegexSplitWithOffsets) needs
onnxruntime-extensions' operator library registered in its SessionOptions.
Callers say so with ``custom_ops=True`` (they know the graph's domains: see
:data:`EXTENSIONS_DOMAIN`); the library is loaded only then, so models that do
not need it never load it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CPU_PROVIDER",
    "EXTENSIONS_DOMAIN",
    "SessionError",
    "create_session",
    "needs_extensions",
    "register_extensions",
]

CPU_PROVIDER = "CPUExecutionProvider"
_GRAPH_LEVELS = ("basic", "extended", "all")
# onnxruntime's default logger severity (warning), restored after a quiet creation.
_DEFAULT_SEVERITY = 2
_MESSAGE_LIMIT = 500

Provider = str | tuple[str, dict[str, str]]

#: The operator domain of onnxruntime-extensions' custom operators.
EXTENSIONS_DOMAIN = "ai.onnx.contrib"
_EXTENSIONS_HINT = (
    "the model uses onnxruntime-extensions' operators (domain ai.onnx.contrib) and "
    "onnxruntime_extensions is not installed: pip install onnxruntime-extensions "
    "(part of the onnxserve[server] and [server-cpu] extras)"
)


def needs_extensions(domains: Iterable[str]) -> bool:
    """Whether a graph with these operator domains needs onnxruntime-extensions."""
    return EXTENSIONS_DOMAIN in set(domains)


def register_extensions(options: Any) -> None:
    """Register onnxruntime-extensions' operator library in ``options``; SessionError
    (saying what to install) where the package is missing."""
    try:
        import onnxruntime_extensions
    except ImportError:
        raise SessionError(_EXTENSIONS_HINT) from None
    options.register_custom_ops_library(onnxruntime_extensions.get_library_path())


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
    custom_ops: bool = False,
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
    ``custom_ops`` registers onnxruntime-extensions' operators (see the module
    docstring).
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
    if custom_ops:
        register_extensions(options)
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
