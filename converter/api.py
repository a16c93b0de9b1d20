"""The Python API: ``convert(model, repository, name, ...)`` runs the whole pipeline.

load -> trace -> export -> verify -> (optimize / int8 / fp16) -> write. Each
step is a function of its own module with plain inputs and outputs; this module
only strings them together, reports progress, times each step and samples its
peak memory (:mod:`onnxserve.memory`) and builds the report. A model whose
first layer is a TextVectorization has its network converted as usual and the
preprocessing rebuilt in ONNX string operators in front of it
(:mod:`onnxserve.converter.text`), then checked on sentences. Every check runs
before anything is written, so a failure leaves the repository as it was.

A model whose weights exceed ``external_data_above_mib`` keeps them as ONNX
external data (:mod:`onnxserve.converter.external`): export writes
model.onnx and model.onnx.data into a hidden staging folder inside the
repository, verification opens that model.onnx by path (onnxruntime maps the
weights: read once, never held twice), and the write step links the staged
files into the new version folder; the staging folder is removed either way.

Conversion runs with GPUs hidden from TensorFlow (``CUDA_VISIBLE_DEVICES=""``
set before TensorFlow is imported, see :mod:`onnxserve.converter.environment`):
with a GPU, Keras traces LSTMs as cuDNN kernels that ONNX cannot express.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxserve.converter.environment import hide_gpus
from onnxserve.converter.errors import ConversionError
from onnxserve.converter.report import ConversionReport, StepCost, TensorSummary
from onnxserve.converter.settings import ConvertOptions, ConvertOptionsError, ConvertSettings
from onnxserve.memory import format_bytes, measure

if TYPE_CHECKING:
    from onnxserve.converter.external import StagedModel
    from onnxserve.converter.text import TextFront

__all__ = ["convert", "convert_with_settings"]

log = logging.getLogger("onnxserve.converter")
MIB = 1 << 20
Progress = Callable[[str], None]
Stage = Callable[[str, str], contextlib.AbstractContextManager[None]]


def convert(
    model: Any,
    repository: str | os.PathLike[str],
    name: str,
    *,
    progress: Progress | None = None,
    sentences: Sequence[str] | None = None,
    **options: Any,
) -> ConversionReport:
    """Convert a Keras model into ``<repository>/<name>/<version>/model.onnx`` + config.pbtxt.

    ``model`` is an in-memory ``keras.Model`` or a path to a ``.keras`` / ``.h5``
    file or a SavedModel directory. ``options`` are the fields of
    :class:`~onnxserve.converter.settings.ConvertOptions` (``version``,
    ``opset``, ``max_batch_size``, ``optimize``, ``quantize``, ``fp16``, ...),
    with its defaults and its validation (``verbose=True`` lets TensorFlow's,
    tf2onnx's and onnxruntime's own log lines through, see
    :mod:`onnxserve.converter.logs`); ``unsafe_deserialization=True``
    loads a model file with Keras' ``safe_mode=False``, which runs the Python
    code stored in it (Lambda layers): only for files you trust. ``progress``
    receives one line per stage (default: the 'onnxserve.converter' logger at
    INFO). Raises a :class:`ConversionError` subclass, having written nothing,
    when any step fails (an unknown option is a TypeError). GPUs are hidden
    from TensorFlow during conversion (see the module docstring).

    A model whose first layer is a TextVectorization becomes one ONNX model
    with a BYTES input (:mod:`onnxserve.converter.text`); ``sentences`` (the
    training sentences, say; or the ``sentences_file`` option) are checked
    against Keras besides the fixed hard cases.
    """
    return _convert(model, Path(repository), name, ConvertOptions(**options), progress, sentences)


def _convert(
    model: Any,
    repository: Path,
    name: str,
    options: ConvertOptions,
    progress: Progress | None,
    sentences: Sequence[str] | None = None,
) -> ConversionReport:
    from onnxserve.converter.logs import library_output

    with library_output(options.verbose):
        return _pipeline(model, repository, name, options, progress, sentences)


def convert_with_settings(
    settings: ConvertSettings, progress: Progress | None = None
) -> ConversionReport:
    """``convert`` driven by a resolved :class:`ConvertSettings` (what the CLI does)."""
    return _convert(settings.model, settings.repository, settings.name, settings, progress)


@dataclass(frozen=True)
class _TextModel:
    """A text model's parts: its TextVectorization front, the whole model traced (Keras'
    reference answers on sentences), and the names of the ids and the text inputs."""

    front: TextFront
    whole: Any
    ids_name: str
    text_name: str
    sentences: list[str]


def _pipeline(
    model: Any,
    repository: Path,
    name: str,
    options: ConvertOptions,
    progress: Progress | None,
    sentences: Sequence[str] | None = None,
) -> ConversionReport:
    hide_gpus()
    from onnxserve.converter.export import export_onnx
    from onnxserve.converter.external import write_staged
    from onnxserve.converter.load import LoadedModel, from_keras_model, load_model
    from onnxserve.converter.repository import check_target, staging_folder
    from onnxserve.converter.text import MIN_TEXT_OPSET
    from onnxserve.converter.trace import trace_model

    say = progress or log.info
    started = time.monotonic()
    check_target(repository, name, options.version)

    variants = options.has_variants
    total = 6 if variants else 5
    # An in-memory text model is known before its first stage line; a file after loading.
    counted = _has_text_layer(model)
    total += counted
    text_sentences = _sentences(sentences, options.sentences_file)
    done = 0
    steps: list[StepCost] = []

    @contextlib.contextmanager
    def stage(step: str, text: str) -> Iterator[None]:
        nonlocal done
        done += 1
        say(f"[{done}/{total} {time.monotonic() - started:5.1f}s] {text}")
        with measure() as span:
            yield
        steps.append(StepCost(step, span.seconds, span.peak_bytes))

    if isinstance(model, (str, os.PathLike)):
        with stage("load", f"loading {model}"):
            loaded = load_model(model, safe_mode=not options.unsafe_deserialization)
    else:
        with stage("load", "checking the in-memory Keras model"):
            loaded = from_keras_model(model)
    front = loaded.text_front
    if front is not None:
        total += not counted
        if options.opset < MIN_TEXT_OPSET:
            raise ConvertOptionsError(
                f"--opset {options.opset}: a text model's preprocessing needs opset "
                f"{MIN_TEXT_OPSET} or more (ScatterElements with reduction)"
            )
        say(f"  {front.describe()} becomes ONNX string operators in front of the network")
    text: _TextModel | None = None
    with stage("trace", "tracing with an explicit input signature"):
        if front is not None:
            whole = trace_model(loaded, dynamic_sequence=False)  # Keras with the text layer
            network = LoadedModel(source=loaded.source, keras_model=front.network)
            traced = trace_model(network, dynamic_sequence=False)
            text = _TextModel(
                front,
                whole,
                traced.inputs[front.input_index].name,
                whole.inputs[front.input_index].name,
                text_sentences,
            )
        else:
            traced = trace_model(loaded, dynamic_sequence=options.dynamic_sequence)
    ranges = {
        i.name: i.declared_range
        for i in traced.inputs
        if i.declared_range is not None and (text is None or i.name != text.ids_name)
    }
    for info in traced.inputs:
        if info.name in ranges:
            say(f"  input {info.name!r}: {_range_text(ranges[info.name])}, from {_reasons(info)}")
    staging: Path | None = None
    try:
        with stage("export", f"exporting to ONNX (opset {options.opset}) with tf2onnx"):
            exported = export_onnx(
                traced,
                opset=options.opset,
                external_above_bytes=int(options.external_data_above_mib * MIB),
            )
            _stamp(exported.model, loaded.source)
            staged = None
            if exported.external:
                if variants or text is not None:
                    raise ConvertOptionsError(
                        "--optimize, --quantize, --fp16 and text models work on models that "
                        "fit in one file; this one keeps its weights as external data (over "
                        "--external-data-above-mib)"
                    )
                staging = staging_folder(repository, name)
                staged = write_staged(exported.model, exported.external, staging / "version")
                say(
                    f"  {len(exported.external)} weight(s), "
                    f"{format_bytes(sum(w.nbytes for w in exported.external))}, written as "
                    f"external data beside model.onnx"
                )
        for warning in exported.warnings:
            log.warning("%s", warning)
        report = _verify_and_write(
            exported, staged, traced, loaded.source, repository, name, options, ranges, stage, say,
            text,
        )  # fmt: skip
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    report.steps = steps
    report.seconds = time.monotonic() - started
    return report


def _verify_and_write(
    exported: Any,
    staged: StagedModel | None,
    traced: Any,
    source: str,
    repository: Path,
    name: str,
    options: ConvertOptions,
    ranges: dict[str, tuple[int | None, int | None]],
    stage: Stage,
    say: Progress,
    text: _TextModel | None,
) -> ConversionReport:
    """Verify (by path where the model was staged), optionally make a variant, put a text
    model's preprocessing in front and check it on sentences, and write."""
    from onnxserve.converter.repository import build_config, write_entry
    from onnxserve.converter.text import attach_front
    from onnxserve.converter.text_check import check_text
    from onnxserve.converter.variants import apply_variants
    from onnxserve.converter.verify import check_onnx, verify_onnx

    with stage("verify", "verifying with onnx.checker and onnxruntime against Keras"):
        checks = verify_onnx(
            staged.model_path if staged is not None else exported.model,
            traced,
            max_batch_size=options.max_batch_size,
            rtol=options.rtol,
            atol=options.atol,
            seed=options.seed,
            progress=say,
        )
    final_model, variant = exported.model, None
    if options.has_variants:
        with stage("variant", "optimizing / quantizing and judging the result against Keras"):
            final_model, variant = apply_variants(
                exported.model,
                checks,  # the same inputs and Keras answers as the fp32 check
                optimize=options.optimize,
                quantize=options.quantize,
                fp16=options.fp16,
                min_agreement=options.min_agreement,
                variant_atol=options.variant_atol,
            )
    text_check = None
    if text is not None:
        with stage(
            "text", "checking the text preprocessing and the whole model against Keras on sentences"
        ):
            final_model = attach_front(final_model, text.front, text.ids_name, text.text_name)
            check_onnx(final_model, full_check=False)
            text_check = check_text(
                final_model,
                text.front,
                text.whole.reference,
                text.text_name,
                _other_inputs(text.whole, text.text_name, options.seed),
                text.sentences,
                opset=options.opset,
                max_batch_size=options.max_batch_size,
                rtol=options.rtol,
                atol=options.atol,
                progress=say,
            )
    config = build_config(final_model, name, options.max_batch_size, input_ranges=ranges)
    with stage("write", f"writing to {repository / name}"):
        written = write_entry(
            repository, name, staged if staged is not None else final_model, config, options.version
        )
    return ConversionReport(
        name=name,
        version=written.version,
        source=source,
        model_path=written.model_path,
        config_path=written.config_path,
        config_written=written.config_written,
        opset=options.opset,
        max_batch_size=options.max_batch_size,
        size_bytes=written.size_bytes,
        inputs=_summaries(final_model.graph.input, config.input, ranges),
        outputs=_summaries(final_model.graph.output, config.output, {}),
        checks=checks,
        rtol=options.rtol,
        atol=options.atol,
        variant=variant,
        warnings=list(exported.warnings),
        loop_nodes=list(exported.loop_nodes),
        text_check=text_check,
        files=sorted(p.name for p in written.model_path.parent.iterdir()),
        external_bytes=sum(w.nbytes for w in exported.external),
    )


def _has_text_layer(model: Any) -> bool:
    if isinstance(model, (str, os.PathLike)):
        return False
    from onnxserve.converter.analysis import walk_layers

    return any(type(layer).__name__ == "TextVectorization" for layer in walk_layers(model))


def _sentences(given: Sequence[str] | None, path: Path | None) -> list[str]:
    """The user's check sentences: given in Python, or one per line of a UTF-8 file."""
    sentences = [str(s) for s in given or []]
    if path is not None:
        try:
            sentences += Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConversionError(f"cannot read the sentences file {path}: {exc}") from exc
    return sentences


def _other_inputs(traced: Any, text_name: str, seed: int) -> Callable[[int], dict[str, Any]]:
    """Generated values for a text model's other inputs (none for most text models)."""
    import numpy as np

    from onnxserve.converter.inputs import generate

    others = [info for info in traced.inputs if info.name != text_name]

    def make(batch: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        return {info.name: generate(info, batch, rng) for info in others}

    return make


def _stamp(model: Any, source: str) -> None:
    """Record where the model came from in the ONNX metadata."""
    import keras
    import tensorflow as tf

    model.producer_name = "onnxserve convert (tf2onnx)"
    for key, value in (
        ("onnxserve.source", source),
        ("onnxserve.keras_version", keras.__version__),
        ("onnxserve.tensorflow_version", tf.__version__),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _range_text(bounds: tuple[int | None, int | None]) -> str:
    low, high = bounds
    return f"values {'' if low is None else low}..{'' if high is None else high}"


def _reasons(info: Any) -> str:
    return ", ".join(info.facts.reasons) or "the model's layers"


def _summaries(
    values: Any, configs: Any, ranges: dict[str, tuple[int | None, int | None]]
) -> list[TensorSummary]:
    from onnxserve.protocol import model_config_pb2 as mc

    summaries = []
    for value, config in zip(values, configs, strict=False):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim
        )
        summaries.append(
            TensorSummary(
                name=config.name,
                data_type=mc.DataType.Name(config.data_type),
                dims=tuple(config.dims),
                onnx_shape=shape,
                valid_range=ranges.get(config.name),
            )
        )
    return summaries
