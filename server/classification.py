"""Triton's classification extension: an output's top classes as "value:index[:label]" strings.

A request asks for it per output, with the output parameter
``classification`` (int64 k; tritonclient's ``InferRequestedOutput(name,
class_count=k)``). The answer replaces that output by a BYTES tensor of the k
largest values of each row, largest first, each ``"<value>:<index>"`` or, when
the output has a ``label_filename`` in config.pbtxt (one label per line, in the
model folder), ``"<value>:<index>:<label>"``: shape ``[batch, k]`` for a
batching model, ``[k]`` otherwise, as Triton answers it. The value is printed
as C++'s ``std::to_string`` prints a float (six decimals), which is what
Triton's clients parse. Ties keep index order. Any model kind can be asked
(ONNX, Python, ensemble); only numeric outputs can be classified.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.config import TensorSpec
from onnxserve.server.errors import ConfigError
from onnxserve.server.inference import DecodedRequest, ModelSignature
from onnxserve.server.model_files import resolve_inside

PARAMETER = "classification"


def read_labels(
    config: mc.ModelConfig, model_folder: Path, root: Path
) -> dict[str, tuple[str, ...]]:
    """Each output's labels from its ``label_filename`` (a file of the model folder)."""
    labels = {}
    for output in config.output:
        if not output.label_filename:
            continue
        name = output.label_filename
        where = f"model '{config.name}' output '{output.name}'"
        if Path(name).name != name or name.startswith("."):
            raise ConfigError(
                f"{where}: label_filename must be a plain file name in the model folder"
            )
        path = resolve_inside(model_folder / name, root)
        if path is None or not path.is_file():
            raise ConfigError(f"{where}: label_filename '{name}' is missing from the model folder")
        labels[output.name] = tuple(path.read_text(encoding="utf-8", errors="replace").splitlines())
    return labels


def _value(number: float) -> str:
    return f"{number:f}"


def classify(
    request: DecodedRequest,
    outputs: dict[str, np.ndarray],
    signature: ModelSignature,
    labels: Mapping[str, tuple[str, ...]],
) -> tuple[dict[str, np.ndarray], ModelSignature]:
    """The outputs with the classified ones as BYTES, and the signature to encode them by."""
    answered = dict(outputs)
    specs = dict(signature.outputs)
    for name, count in request.classification.items():
        array = np.asarray(outputs[name])
        rows = array.reshape(array.shape[0], -1) if signature.batchable else array.reshape(1, -1)
        names = labels.get(name, ())
        k = min(count, rows.shape[1])
        table = np.empty((rows.shape[0], k), dtype=object)
        for row_index, row in enumerate(rows):
            order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
            for column, index in enumerate(order):
                text = f"{_value(float(row[index]))}:{int(index)}"
                if int(index) < len(names):
                    text += f":{names[int(index)]}"
                table[row_index, column] = text.encode("utf-8")
        answered[name] = table if signature.batchable else table.reshape(k)
        specs[name] = TensorSpec(name, "BYTES", (k,))
    return answered, dataclasses.replace(signature, outputs=specs)
