"""Settings of ``onnxserve convert``: one typed object, a help text per field.

Kept free of TensorFlow and ONNX imports so that ``onnxserve --help`` stays fast
and works on a client-only install.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from onnxserve.settings import LogLevel

OptimizeLevel = Literal["none", "basic", "extended"]
Quantize = Literal["none", "int8"]

# tf2onnx 1.17 emits opsets up to 18; below 13 the Keras 3 graphs need ops
# (e.g. Squeeze with axes as an input) that older opsets lack.
MIN_OPSET = 13
MAX_OPSET = 18


@dataclass(frozen=True)
class ConvertSettings:
    """Everything ``onnxserve convert`` can be told: flags, ONNXSERVE_CONVERT_*, [convert]."""

    model: Path = field(
        metadata={
            "help": "The Keras model: a .keras file, a legacy .h5 file, or a TensorFlow "
            "SavedModel directory as model.export() writes it",
            "metavar": "MODEL",
        }
    )
    repository: Path = field(
        metadata={
            "help": "Model repository to add the model to (created if absent)",
            "metavar": "DIR",
        }
    )
    name: str = field(
        metadata={"help": "Model name: the folder <repository>/<name>", "metavar": "NAME"}
    )
    version: int | None = field(
        default=None,
        metadata={
            "help": "Version number to write; an existing version is never overwritten. "
            "Default: one more than the highest version present (1 for a new model)",
            "metavar": "N",
        },
    )
    opset: int = field(
        default=17, metadata={"help": f"ONNX opset ({MIN_OPSET}-{MAX_OPSET})", "metavar": "N"}
    )
    max_batch_size: int = field(
        default=64,
        metadata={
            "help": "Largest batch the server may form (config.pbtxt max_batch_size); the "
            "conversion is verified at this batch size too",
            "metavar": "N",
        },
    )
    optimize: OptimizeLevel = field(
        default="none",
        metadata={
            "help": "Save the model after onnxruntime's offline graph optimization at this "
            "level; basic and extended are portable across machines"
        },
    )
    quantize: Quantize = field(
        default="none",
        metadata={
            "help": "int8: dynamic int8 quantization of the weights (smaller, often faster "
            "for LSTM/Dense models on CPUs, slower for CNNs); judged on label agreement"
        },
    )
    fp16: bool = field(
        default=False,
        metadata={
            "help": "Store weights and compute in float16 (inputs and outputs stay float32); "
            "pays on GPUs, rarely on CPUs; judged on label agreement"
        },
    )
    dynamic_sequence: bool = field(
        default=True,
        metadata={
            "help": "Make the sequence dimension (axis 1) of sequence inputs dynamic where the "
            "model allows it; otherwise keep the lengths the model was built with"
        },
    )
    rtol: float = field(
        default=1e-5, metadata={"help": "Relative tolerance of the fp32 check against Keras"}
    )
    atol: float = field(
        default=1e-5, metadata={"help": "Absolute tolerance of the fp32 check against Keras"}
    )
    min_agreement: float = field(
        default=0.99,
        metadata={
            "help": "Smallest fraction of predicted labels an int8/fp16 model must share with "
            "Keras on the check inputs"
        },
    )
    variant_atol: float = field(
        default=1e-4,
        metadata={
            "help": "Largest absolute difference from Keras allowed for an optimized "
            "(not quantized, not fp16) model"
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the generated check inputs"})
    unsafe_deserialization: bool = field(
        default=False,
        metadata={
            "help": "Load the model with Keras' safe_mode=False, as Lambda layers need: this "
            "RUNS PYTHON CODE STORED IN THE MODEL FILE, so use it only for files you trust"
        },
    )
    log_level: LogLevel = field(default="INFO", metadata={"help": "Log level"})
