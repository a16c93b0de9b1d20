"""Load step: a path or an in-memory model becomes a :class:`LoadedModel`.

Keras 3 loads ``.keras`` and (where it still can) legacy ``.h5`` files into a
``keras.Model``. A SavedModel directory, as ``model.export()`` writes it, cannot
be turned back into a ``keras.Model``; it is loaded with TensorFlow and
converted through its ``serving_default`` signature.
"""

from __future__ import annotations

import contextlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxserve.converter.analysis import unconvertible_layers
from onnxserve.converter.environment import import_tensorflow
from onnxserve.converter.errors import ModelLoadError, UnsupportedModelError, first_line

__all__ = ["KERAS_SUFFIXES", "LoadedModel", "from_keras_model", "load_model"]

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# HDF5 files may start with a user block of 512, 1024, 2048... bytes.
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096)


@dataclass
class LoadedModel:
    """A model ready to trace: either a keras.Model or a restored SavedModel.

    ``source`` says where it came from, for the report.
    """

    source: str
    keras_model: Any | None = None
    saved_model: Any | None = None
    #: The model's TextVectorization front (:mod:`onnxserve.converter.text`), if any.
    text_front: Any | None = None

    @property
    def kind(self) -> str:
        return "keras" if self.keras_model is not None else "saved_model"


def from_keras_model(model: Any, source: str = "in-memory keras.Model") -> LoadedModel:
    """Wrap an in-memory model after checking it is a keras.Model with known inputs.

    Layers known not to convert (see ``UNCONVERTIBLE_LAYERS`` in
    :mod:`onnxserve.converter.analysis`) are refused here, by name, before any
    tracing: UnsupportedModelError. A TextVectorization first layer is found
    here too, and refused here where its settings cannot be reproduced.
    """
    import_tensorflow()
    import keras

    if not isinstance(model, keras.Model):
        raise ModelLoadError(
            f"expected a keras.Model, a .keras/.h5 file or a SavedModel directory, "
            f"got {type(model).__name__}"
        )
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ModelLoadError(
            f"the model {model.name!r} has no symbolic inputs (a subclassed model, or a "
            "Sequential never built): wrap it in a functional model first, e.g. "
            "inputs = keras.Input(shape=..., name=...); keras.Model(inputs, model(inputs))"
        )
    from onnxserve.converter.text import find_text_front

    front = find_text_front(model)  # refuses settings it cannot reproduce
    refused = unconvertible_layers(model, allowed=[front.layer] if front else [])
    if refused:
        raise UnsupportedModelError("; ".join(refused))
    return LoadedModel(source=source, keras_model=model, text_front=front)


def load_model(path: str | Path, *, safe_mode: bool = True) -> LoadedModel:
    """Load a .keras / .h5 file or a SavedModel directory; ModelLoadError if that fails.

    ``safe_mode=False`` is Keras' own switch: it deserializes Python code stored
    in the file (Lambda layers), i.e. runs code from the model file. Keras
    refuses such files by default; the error then names the converter's flag
    and the Python alternative instead of Keras' ``safe_mode`` advice, which
    ``onnxserve convert`` users cannot follow as such.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist")
    if path.is_dir():
        return _load_saved_model(path)
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise ModelLoadError(
            f"{path} is not a Keras model: expected a .keras or .h5 file, "
            "or a SavedModel directory (as model.export() writes it)"
        )
    _check_file_format(path)
    import_tensorflow()
    import keras

    from onnxserve.converter.lean_load import LEAN_ABOVE_BYTES, lean_loading, weights_member_bytes

    lean = weights_member_bytes(path) > LEAN_ABOVE_BYTES
    try:
        with lean_loading() if lean else contextlib.nullcontext():
            model = keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
    except Exception as exc:  # Keras raises many types for unreadable files
        if safe_mode and "safe_mode" in str(exc):
            raise ModelLoadError(_unsafe_advice(path, exc)) from exc
        raise ModelLoadError(f"Keras cannot load {path}: {first_line(exc)}") from exc
    return from_keras_model(model, source=str(path))


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as handle:
        for offset in _HDF5_OFFSETS:
            handle.seek(offset)
            if handle.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                return True
    return False


def _what_it_holds(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(40)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c.isspace() for c in text):
        return f"it holds text: {text.strip()[:30]!r}"
    return f"it starts with the bytes {head[:16].hex(' ')}"


def _check_file_format(path: Path) -> None:
    """ModelLoadError saying what is wrong with a file that is not what its suffix says.

    Keras answers such files with "File not found" (.keras) or an h5py error
    (.h5); the file exists, so say what it is instead. Read before TensorFlow
    is imported, which takes seconds.
    """
    try:
        size = path.stat().st_size
        hdf5 = _is_hdf5(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror}") from None
    if size == 0:
        raise ModelLoadError(f"{path} is empty (0 bytes): not a Keras model")
    archive = zipfile.is_zipfile(path)
    if path.suffix.lower() == ".keras":
        if hdf5:
            raise ModelLoadError(
                f"{path} is an HDF5 file (a legacy Keras .h5 model?) named .keras: a .keras "
                "file is a zip archive; rename it to .h5 and convert that"
            )
        if not archive:
            raise ModelLoadError(
                f"{path} is not a Keras model: a .keras file is a zip archive (as "
                f"model.save('model.keras') writes it) and this one is not; {_what_it_holds(path)}"
            )
        with zipfile.ZipFile(path) as opened:
            if "config.json" not in opened.namelist():
                raise ModelLoadError(
                    f"{path} is a zip archive without config.json: not a Keras model (a .keras "
                    "file holds config.json, metadata.json and model.weights.h5)"
                )
        return
    if not hdf5:
        if archive:
            raise ModelLoadError(
                f"{path} is a zip archive (a Keras .keras model?) named {path.suffix}: "
                "rename it to .keras and convert that"
            )
        raise ModelLoadError(
            f"{path} is not a Keras model: a {path.suffix} file is an HDF5 file (as "
            f"model.save('model.h5') wrote it) and this one is not; {_what_it_holds(path)}"
        )


def _unsafe_advice(path: Path, exc: BaseException) -> str:
    reason = first_line(exc).split(". This carries")[0].replace("Requested the d", "D")
    return (
        f"Keras refuses to load {path} by default: {reason}. Loading it runs Python code "
        "stored in the model file. If you trust the file, convert with "
        "--unsafe-deserialization (ONNXSERVE_UNSAFE_DESERIALIZATION=true, or "
        "unsafe_deserialization = true in [convert]), or load the model in Python with "
        "keras.saving.load_model(path, safe_mode=False) and pass it to "
        "onnxserve.converter.convert(model, repository, name)"
    )


def _load_saved_model(path: Path) -> LoadedModel:
    if not ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()):
        raise ModelLoadError(
            f"{path} is a directory but not a TensorFlow SavedModel (it has no saved_model.pb)"
        )
    tf = import_tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"TensorFlow cannot load the SavedModel {path}: {first_line(exc)}"
        ) from exc
    signatures = getattr(loaded, "signatures", {})
    if "serving_default" not in signatures:
        raise ModelLoadError(
            f"the SavedModel {path} has no 'serving_default' signature; export it with "
            "keras model.export(path) or tf.saved_model.save(..., signatures=...)"
        )
    return LoadedModel(source=str(path), saved_model=loaded)
