"""What both examples share: where their files go, importing Keras the converter's way,
and writing reports."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "REPOSITORY_ENVIRONMENT_VARIABLE",
    "Say",
    "add_config_warning",
    "build_folder",
    "example_repository",
    "import_keras",
    "write_json",
]

Say = Callable[[str], None]
#: Overrides where the example repository is built and read.
REPOSITORY_ENVIRONMENT_VARIABLE = "ONNXSERVE_EXAMPLE_REPOSITORY"


def build_folder() -> Path:
    """``build/`` of the onnxserve checkout these examples run from (an editable
    install, as ``make`` makes), else ``build/`` under the working directory
    (a wheel has no checkout). Absolute, so it does not depend on where a
    script runs."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "build"
    return Path.cwd() / "build"


def example_repository() -> Path:
    """The model repository ``make serve`` builds and serves:
    ``$ONNXSERVE_EXAMPLE_REPOSITORY``, else ``build/model_repository`` of the checkout."""
    configured = os.environ.get(REPOSITORY_ENVIRONMENT_VARIABLE, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    return build_folder() / "model_repository"


def import_keras(threads: int | None = None, seed: int | None = None) -> Any:
    """Keras, imported after the converter has hidden GPUs from TensorFlow.

    Why the converter's import: with a GPU visible, Keras traces LSTMs as
    cuDNN kernels that ONNX cannot express, and GPUs can only be hidden before
    TensorFlow starts. ``threads`` caps TensorFlow's thread pools (the tests
    run on two shared cores); ``seed`` makes weight initialisation and
    shuffling repeatable.
    """
    from onnxserve.converter.environment import import_tensorflow

    tf = import_tensorflow()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # TensorFlow already started its pools; keep them
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    return keras


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, through a temporary file so readers never see half."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", "utf-8")
    partial.replace(path)
    return path


def add_config_warning(config_path: str | os.PathLike[str], warning: str) -> None:
    """Write ``warning`` into a config.pbtxt as ``onnxserve.warning``, which `serve` logs.

    For what a caller of the model should know before trusting its answers
    (a model trained on the fallback sentences); written through a temporary
    file, like the converter's own writes.
    """
    from google.protobuf import text_format

    from onnxserve.layout import WARNING_PARAMETER
    from onnxserve.protocol import model_config_pb2 as mc

    path = Path(config_path)
    config = text_format.Parse(path.read_text("utf-8"), mc.ModelConfig())
    config.parameters[WARNING_PARAMETER].string_value = warning
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text_format.MessageToString(config), "utf-8")
    partial.replace(path)
