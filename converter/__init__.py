"""Keras -> ONNX conversion into ready-to-serve, verified model repository entries.

``convert(model, repository, name, ...)`` is the entry point; the steps it
strings together are exported too, each a function with plain inputs and
outputs: ``load_model`` / ``from_keras_model`` -> ``trace_model`` ->
``export_onnx`` -> ``verify_onnx`` -> ``build_config`` + ``write_entry``.

Importing this package imports neither TensorFlow nor ONNX: the names below
are loaded on first use, so ``onnxserve --help`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnxserve.converter.api import convert, convert_with_settings
    from onnxserve.converter.errors import (
        ConversionError,
        ExportError,
        ModelLoadError,
        RepositoryError,
        UnsupportedModelError,
        VerificationError,
    )
    from onnxserve.converter.export import export_onnx
    from onnxserve.converter.load import from_keras_model, load_model
    from onnxserve.converter.report import ConversionReport
    from onnxserve.converter.repository import build_config, write_entry
    from onnxserve.converter.settings import ConvertSettings
    from onnxserve.converter.trace import trace_model
    from onnxserve.converter.verify import verify_onnx

__all__ = [
    "ConversionError",
    "ConversionReport",
    "ConvertSettings",
    "ExportError",
    "ModelLoadError",
    "RepositoryError",
    "UnsupportedModelError",
    "VerificationError",
    "build_config",
    "convert",
    "convert_with_settings",
    "export_onnx",
    "from_keras_model",
    "load_model",
    "trace_model",
    "verify_onnx",
    "write_entry",
]

_WHERE = {
    "load_model": "load",
    "from_keras_model": "load",
    "trace_model": "trace",
    "export_onnx": "export",
    "verify_onnx": "verify",
    "build_config": "repository",
    "write_entry": "repository",
    "convert": "api",
    "convert_with_settings": "api",
    "ConversionReport": "report",
    "ConvertSettings": "settings",
    "ConversionError": "errors",
    "ExportError": "errors",
    "ModelLoadError": "errors",
    "RepositoryError": "errors",
    "UnsupportedModelError": "errors",
    "VerificationError": "errors",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
