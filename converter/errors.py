"""The converter's exceptions: one base class the CLI turns into a message and exit code.

Every failure the user can do something about is a :class:`ConversionError`
subclass whose message says what went wrong and, where there is one, what to do
about it. Nothing is written to the model repository when one is raised.
"""

from __future__ import annotations

__all__ = [
    "ConversionError",
    "ExportError",
    "ModelLoadError",
    "RepositoryError",
    "UnsupportedModelError",
    "VerificationError",
    "first_line",
]


class ConversionError(Exception):
    """Conversion failed; the message is meant for the user, and nothing was written."""


class ModelLoadError(ConversionError):
    """The model file is missing, or it is not something Keras or TensorFlow can load."""


class UnsupportedModelError(ConversionError):
    """The model uses a layer or operation that cannot be expressed in ONNX (by tf2onnx)."""


class ExportError(ConversionError):
    """tf2onnx failed while tracing or converting the model."""


class VerificationError(ConversionError):
    """The ONNX model is invalid or does not compute what the Keras model computes."""


class RepositoryError(ConversionError):
    """The repository entry cannot be written (name taken, version exists, bad name, I/O)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 500 characters), for a user message."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
