"""The model repository's layout and onnxserve's config.pbtxt conventions: each fact once.

Triton's layout: ``<repository>/<model>/config.pbtxt`` (optional) and
``<repository>/<model>/<version>/model.onnx``. The server reads it, the
converter writes it and the bench finds model files in it; all three import
these names instead of spelling them. Light: no onnxruntime, no TensorFlow.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "ALLOWED_BATCH_SIZES_PARAMETER",
    "BACKEND",
    "CHECKSUMS_FILENAME",
    "CONFIG_FILENAME",
    "CUSTOM_OPS_EXTENSIONS",
    "CUSTOM_OPS_PARAMETER",
    "EXTERNAL_DATA_FILENAME",
    "INPUT_RANGE_PREFIX",
    "LOAD_RESIDENT_PARAMETER",
    "LOAD_SECONDS_PARAMETER",
    "MODEL_BYTES_PARAMETER",
    "MODEL_FILENAME",
    "MODEL_NAME_RULE",
    "PLATFORM",
    "PROVIDERS_PARAMETER",
    "REPORTED_PARAMETERS",
    "format_input_range",
    "input_range_key",
    "is_valid_model_name",
    "parse_input_range",
    "version_folders",
    "version_number",
]

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"
#: Where the converter keeps a large model's weights (ONNX external data), beside model.onnx.
EXTERNAL_DATA_FILENAME = "model.onnx.data"
#: Optional, per version folder: ``sha256sum`` output listing the model file and
#: its external data files, verified before the server loads the version.
CHECKSUMS_FILENAME = "sha256sums"
# Triton's names for an ONNX Runtime model; a config may give either.
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
# A version: ASCII digits only (int() also takes " 1" and other scripts' digits).
_VERSION = re.compile(r"[0-9]{1,18}")
MODEL_NAME_RULE = (
    "letters, digits, '_', '.', '-' (starting with a letter or digit), at most 128 characters"
)

# Model-level config parameters (``parameters { key: ... value { string_value: ... } }``),
# Triton's syntax, so Triton accepts and ignores a config that carries them.
#: Batch sizes a merged batch is padded up to: "1,8,32,64".
ALLOWED_BATCH_SIZES_PARAMETER = "allowed_batch_sizes"
#: Written by the server into the ModelConfig it reports: the providers in use.
PROVIDERS_PARAMETER = "onnxserve.execution_providers"
#: Written by the server into the ModelConfig it reports, per loaded version: seconds the
#: load took (session, config, warm-up), the growth of the server's resident memory over
#: it in bytes, and the bytes of the model's files (model.onnx plus external data).
LOAD_SECONDS_PARAMETER = "onnxserve.load_seconds"
LOAD_RESIDENT_PARAMETER = "onnxserve.load_resident_bytes"
MODEL_BYTES_PARAMETER = "onnxserve.model_bytes"
#: The parameters the server reports and a config.pbtxt may carry (a copy of a reported
#: ModelConfig) but never sets.
REPORTED_PARAMETERS = (
    PROVIDERS_PARAMETER,
    LOAD_SECONDS_PARAMETER,
    LOAD_RESIDENT_PARAMETER,
    MODEL_BYTES_PARAMETER,
)
#: Valid values of an integer input, one parameter per input:
#: ``onnxserve.input_range.<input>`` = "<min>,<max>", inclusive, either side may be empty.
INPUT_RANGE_PREFIX = "onnxserve.input_range."
#: Custom operator libraries a model needs, comma separated; the one known value is
#: :data:`CUSTOM_OPS_EXTENSIONS` (onnxruntime-extensions). The server also loads that
#: library, without the parameter, for a model whose graph imports its domain.
CUSTOM_OPS_PARAMETER = "onnxserve.custom_ops"
CUSTOM_OPS_EXTENSIONS = "onnxruntime_extensions"
#: What a user of the model should know before trusting its answers (the sentiment
#: example trained on its fallback sentences says so here); `serve` logs it at
#: WARNING each time the model loads, and ModelConfig reports it.
WARNING_PARAMETER = "onnxserve.warning"


def is_valid_model_name(name: str) -> bool:
    """A model (folder) name the server serves: see :data:`MODEL_NAME_RULE`."""
    # fullmatch: re's "$" also matches before a trailing newline.
    return _MODEL_NAME.fullmatch(name) is not None


def version_number(text: str) -> int | None:
    """A version folder's or a request's version as a number, or None: positive, ASCII digits."""
    if _VERSION.fullmatch(text) is None:
        return None
    number = int(text)
    return number if number > 0 else None


def version_folders(model_folder: Path) -> dict[int, Path]:
    """The version folders of a model folder by number: positive integer names, folders only.

    An absent or unreadable model folder has none.
    """
    try:
        entries = list(model_folder.iterdir())
    except OSError:
        return {}
    folders = {}
    for entry in entries:
        number = version_number(entry.name)
        if number is not None and entry.is_dir():
            folders[number] = entry
    return folders


def input_range_key(input_name: str) -> str:
    """The config parameter that declares ``input_name``'s valid range."""
    return INPUT_RANGE_PREFIX + input_name


def format_input_range(low: int | None, high: int | None) -> str:
    """``(0, 999)`` -> ``"0,999"``; None leaves that side open (``"0,"``)."""
    return f"{'' if low is None else low},{'' if high is None else high}"


def parse_input_range(text: str) -> tuple[int | None, int | None]:
    """``"0,999"`` -> ``(0, 999)``; raises ValueError (saying what is expected) otherwise."""
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(
            f"expected '<min>,<max>' (inclusive integers, either may be empty), not {text!r}"
        )
    try:
        low, high = (int(part) if part.strip() else None for part in parts)
    except ValueError:
        raise ValueError(
            f"expected '<min>,<max>' (inclusive integers, either may be empty), not {text!r}"
        ) from None
    if low is None and high is None:
        raise ValueError(f"a range needs at least one bound, not {text!r}")
    if low is not None and high is not None and low > high:
        raise ValueError(f"the range's minimum {low} is above its maximum {high}")
    return low, high
