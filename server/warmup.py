"""Warm-up at load from config.pbtxt's ``model_warmup``, as Triton does it.

The first run of each input shape is slow (memory planning here, kernel and
algorithm selection on CUDA), so a model that will be padded to a few batch
sizes can run each of them once before it reports ready, and its first real
requests do not pay for it. Samples are zeros, random values, or a raw tensor
file from ``<model>/warmup/`` (the folder Triton uses); a file path may not
leave that folder. A failing warm-up makes the model UNAVAILABLE with the
reason, because a model that cannot run its own sample will not serve either.
Warm-up runs are not counted in the model's statistics.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxserve.protocol import codec
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.protocol.datatypes import config_to_protocol
from onnxserve.server.errors import ConfigError

if TYPE_CHECKING:
    from onnxserve.server.model import ModelVersion

log = logging.getLogger(__name__)

WARMUP_FOLDER = "warmup"


def warm_up(model: ModelVersion, model_dir: Path) -> None:
    """Run every ``model_warmup`` sample ``count`` times; raise ConfigError if one fails."""
    outputs = tuple(model.signature.outputs)
    for index, sample in enumerate(model.config.model_warmup):
        label = sample.name or f"#{index + 1}"
        feeds = {
            name: _input(model, label, name, spec, sample.batch_size, model_dir)
            for name, spec in sample.inputs.items()
        }
        missing = [name for name in model.signature.inputs if name not in feeds]
        if missing:
            raise ConfigError(
                f"model '{model.name}': warm-up {label} lacks input(s) {', '.join(missing)}"
            )
        for _ in range(max(sample.count, 1)):
            try:
                model.execute(feeds, outputs)
            except Exception as exc:  # onnxruntime raises several unrelated types
                raise ConfigError(
                    f"model '{model.name}': warm-up {label} failed to run: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
        log.info(
            "model '%s' warmed up with %s (batch size %d, %d run(s))",
            model.name,
            label,
            sample.batch_size,
            max(sample.count, 1),
        )


def _input(
    model: ModelVersion,
    label: str,
    name: str,
    spec: mc.ModelWarmup.Input,
    batch_size: int,
    model_dir: Path,
) -> np.ndarray:
    where = f"model '{model.name}': warm-up {label} input '{name}'"
    if name not in model.signature.inputs:
        raise ConfigError(f"{where} is not an input of the model")
    datatype = config_to_protocol(spec.data_type)
    expected = model.signature.inputs[name].datatype
    if datatype != expected:
        raise ConfigError(f"{where} has data type {datatype} but the model expects {expected}")
    if model.signature.batchable:
        if not 1 <= batch_size <= model.signature.max_batch_size:
            raise ConfigError(
                f"model '{model.name}': warm-up {label} has batch_size {batch_size}; it must be "
                f"within 1 to max_batch_size ({model.signature.max_batch_size})"
            )
        shape = (batch_size, *spec.dims)
    else:
        shape = tuple(spec.dims)
    if any(d < 0 for d in shape):
        raise ConfigError(f"{where} needs concrete dims, not {list(spec.dims)}")
    kind = spec.WhichOneof("input_data_type")
    if kind == "input_data_file":
        return _from_file(where, spec.input_data_file, datatype, shape, model_dir)
    if datatype == "BYTES":
        if kind == "random_data":
            return np.full(shape, "warm-up", dtype=object)
        return np.full(shape, "", dtype=object)
    dtype = codec.numpy_dtype(datatype)
    if kind == "random_data":
        # Small non-negative values: valid as token ids and indices too.
        generator = np.random.default_rng(0)
        if dtype.kind in "iu":
            return generator.integers(0, 2, size=shape).astype(dtype)
        if dtype.kind == "b":
            return generator.integers(0, 2, size=shape).astype(bool)
        return generator.random(size=shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _from_file(
    where: str, relative: str, datatype: str, shape: tuple[int, ...], model_dir: Path
) -> np.ndarray:
    folder = (model_dir / WARMUP_FOLDER).resolve()
    path = (folder / relative).resolve()
    try:
        path.relative_to(folder)
    except ValueError:
        raise ConfigError(
            f"{where}: input_data_file '{relative}' leads outside the model's "
            f"{WARMUP_FOLDER}/ folder"
        ) from None
    try:
        raw = path.read_bytes()
    except OSError:
        raise ConfigError(
            f"{where}: input_data_file '{relative}' cannot be read from the model's "
            f"{WARMUP_FOLDER}/ folder"
        ) from None
    try:
        array = codec.raw_to_array(raw, datatype, shape)
    except codec.CodecError as exc:
        raise ConfigError(f"{where}: input_data_file '{relative}': {exc}") from None
    if datatype == "BYTES":
        return np.array(
            [v.decode("utf-8", "replace") for v in array.reshape(-1)], dtype=object
        ).reshape(shape)
    return array
