"""Keras -> ONNX conversion into ready-to-serve, verified model repository entries.

``convert(model, repository, name, ...)`` is the entry point; the steps it
strings together (load, trace, export, verify, write) live in their own
modules. Importing this package imports neither TensorFlow nor ONNX: the names
below are loaded on first use, so ``onnxserve --help`` stays light.
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
    from onnxserve.converter.report import ConversionReport
    from onnxserve.converter.settings import ConvertSettings

__all__ = [
    "ConversionError",
    "ConversionReport",
    "ConvertSettings",
    "ExportError",
    "ModelLoadError",
    "RepositoryError",
    "UnsupportedModelError",
    "VerificationError",
    "convert",
    "convert_with_settings",
]

_WHERE = {
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
