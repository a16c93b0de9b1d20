"""Settings of ``onnxserve convert``: one typed object, a help text per field.

Kept free of TensorFlow and ONNX imports so that ``onnxserve --help`` stays fast
and works on a client-only install.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from onnxserve.converter.errors import ConversionError
from onnxserve.layout import CONFIG_FILENAME, MODEL_FILENAME, version_folders
from onnxserve.settings import LogLevel, SettingsError

OptimizeLevel = Literal["none", "basic", "extended"]
Quantize = Literal["none", "int8"]

# tf2onnx 1.17 emits opsets up to 18; below 13 the Keras 3 graphs need ops
# (e.g. Squeeze with axes as an input) that older opsets lack.
MIN_OPSET = 13
MAX_OPSET = 18


class ConvertOptionsError(ConversionError, SettingsError):
    """A conversion option has a value the converter cannot use (before any work is done).

    Both a :class:`ConversionError` (what ``convert()`` raises) and a
    :class:`~onnxserve.settings.SettingsError` (the CLI's exit 2 naming the flag).
    """


@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    """How a model is converted: what ``convert()`` takes as keywords, defaults included.

    Validated here, once, for the Python API and the CLI alike.
    """

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
    sentences_file: Path | None = field(
        default=None,
        metadata={
            "help": "Text models (TextVectorization first): a UTF-8 file of sentences, one "
            "per line (the training sentences, say), on which the ONNX model's token ids and "
            "outputs must equal Keras', besides a fixed set of hard cases",
            "metavar": "FILE",
        },
    )
    verbose: bool = field(
        default=False,
        metadata={
            "help": "Show TensorFlow's, tf2onnx's and onnxruntime's own log lines (C++ and "
            "Python) as they are written; by default they are kept out of the output "
            "(logged at DEBUG) and the converter's own messages say what matters"
        },
    )
    external_data_above_mib: float = field(
        default=1024.0,
        metadata={
            "help": "When the model's weights total more than this many MiB, write every "
            "weight of 1 KiB or more to model.onnx.data beside model.onnx (ONNX external data, "
            "which onnxruntime memory-maps); needed above ONNX's 2 GiB file limit. 0: always",
            "metavar": "MIB",
        },
    )
    unsafe_deserialization: bool = field(
        default=False,
        metadata={
            "help": "Load the model with Keras' safe_mode=False, as Lambda layers need: this "
            "RUNS PYTHON CODE STORED IN THE MODEL FILE, so use it only for files you trust"
        },
    )

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConvertOptionsError(
                f"--opset {self.opset} is not supported; use {MIN_OPSET} to {MAX_OPSET}"
            )
        if self.max_batch_size < 1:
            raise ConvertOptionsError(
                f"--max-batch-size must be 1 or more, not {self.max_batch_size}"
            )
        if self.version is not None and self.version < 1:
            raise ConvertOptionsError(f"--version must be 1 or more, not {self.version}")
        if self.optimize not in ("none", "basic", "extended"):
            raise ConvertOptionsError(f"--optimize {self.optimize!r}: use none, basic or extended")
        if self.quantize not in ("none", "int8"):
            raise ConvertOptionsError(f"--quantize {self.quantize!r}: use none or int8")
        if self.quantize == "int8" and self.fp16:
            raise ConvertOptionsError("--quantize int8 and --fp16 exclude each other; choose one")
        for name in ("rtol", "atol", "variant_atol"):
            if getattr(self, name) < 0:
                raise ConvertOptionsError(f"--{name.replace('_', '-')} must not be negative")
        if self.external_data_above_mib < 0:
            raise ConvertOptionsError("--external-data-above-mib must not be negative")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ConvertOptionsError(
                f"--min-agreement must be within 0 and 1, not {self.min_agreement}"
            )

    @property
    def has_variants(self) -> bool:
        """Whether an optimization, int8 or fp16 step follows the fp32 export."""
        return self.optimize != "none" or self.quantize != "none" or self.fp16


@dataclass(frozen=True, kw_only=True)
class ConvertSettings(ConvertOptions):
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
        default="",
        metadata={
            "help": "Model name: the folder <repository>/<name>. Default: the model file's "
            "name without its suffix (digits.keras: digits)",
            "metavar": "NAME",
        },
    )
    log_level: LogLevel = field(default="INFO", metadata={"help": "Log level"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.name:
            object.__setattr__(self, "name", Path(self.model).stem)
        if Path(self.model).suffix.lower() == ".onnx":
            raise ConvertOptionsError(_onnx_advice(Path(self.model), self.repository, self.name))


def _onnx_advice(model: Path, repository: Path, name: str) -> str:
    """What to do with an ONNX file, which needs no conversion: where to copy it."""
    versions = version_folders(repository / name) if (repository / name).is_dir() else {}
    version = max(versions, default=0) + 1
    return (
        f"{model} is an ONNX model already, which onnxserve serves as it is: copy it to "
        f"{repository / name / str(version)}/ as {MODEL_FILENAME} (mkdir -p "
        f"{repository / name / str(version)} && cp {model} "
        f"{repository / name / str(version) / MODEL_FILENAME}); a {CONFIG_FILENAME} beside "
        f"the version folders is optional (serve fills one in from the file)"
    )
