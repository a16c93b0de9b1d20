"""``onnxserve convert``: argument parsing only; the work is in onnxserve.converter.api.

Imports nothing heavy at module level: TensorFlow, tf2onnx and onnxruntime are
imported when the command runs (and then with GPUs hidden), so that
``onnxserve --help`` is fast and works on a client-only install.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from onnxserve.converter.environment import native_noise_filtered
from onnxserve.converter.errors import ConversionError
from onnxserve.converter.settings import ConvertSettings
from onnxserve.settings import add_arguments, resolve

__all__ = ["register", "run"]

_DESCRIPTION = """\
Convert a Keras model (.keras, legacy .h5, or a SavedModel directory written by
model.export()) to ONNX, check it against Keras with onnxruntime (fp32 within
1e-5 at batch sizes 1, an odd size and --max-batch-size), and write
<repository>/<name>/<version>/model.onnx and <repository>/<name>/config.pbtxt
for `onnxserve serve`. Nothing is written when a check fails, and an existing
version is never overwritten. TensorFlow runs with GPUs hidden.
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``convert`` subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a Keras model to a verified ONNX model repository entry",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, ConvertSettings, positional=("model",))
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file with a [convert] table of the settings above",
    )
    parser.set_defaults(handler=run)


_CONVERT_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "h5py")


def _missing_extra(exc: ModuleNotFoundError) -> int:
    """The converter's packages are an extra; say how to get them instead of a traceback."""
    if (exc.name or "").split(".")[0] not in _CONVERT_PACKAGES:
        raise exc
    print(
        f"onnxserve convert: error: {exc.name} is not installed; the converter needs the "
        "convert extra: pip install 'onnxserve[convert]'",
        file=sys.stderr,
    )
    return 1


def _level(name: str) -> int:
    return int(logging.getLevelName(name))


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Resolve the settings, convert, print the report; 1 with a message on failure."""
    settings = resolve(ConvertSettings, args, config_file=args.config, section="convert")
    if settings.log_level == "DEBUG":
        return _run(settings)
    # TensorFlow's C++ start-up lines, which its log level does not silence.
    with native_noise_filtered():
        return _run(settings)


def _run(settings: ConvertSettings) -> int:
    try:
        from onnxserve.converter.api import convert_with_settings
    except ModuleNotFoundError as exc:
        return _missing_extra(exc)

    if settings.log_level != "DEBUG":
        # tf2onnx logs every constant-folding pass at INFO; the stage lines say enough.
        logging.getLogger("tf2onnx").setLevel(max(logging.WARNING, _level(settings.log_level)))

    started = time.monotonic()
    try:
        report = convert_with_settings(settings, progress=_progress)
    except ModuleNotFoundError as exc:
        return _missing_extra(exc)
    except ConversionError as exc:
        quiet = "" if settings.verbose else "; --verbose shows the libraries' own log lines"
        print(
            f"onnxserve convert: error: {exc}\n"
            f"(nothing was written; failed after {time.monotonic() - started:.1f}s{quiet})",
            file=sys.stderr,
        )
        return 1
    print(report.format())
    return 0
