"""The Python API: ``convert(model, repository, name, ...)`` runs the whole pipeline.

load -> trace -> export -> verify -> (optimize / int8 / fp16) -> write. Each
step is a function of its own module with plain inputs and outputs; this module
only strings them together, reports progress and builds the report. Every
check runs before anything is written, so a failure leaves the repository as
it was.

Conversion runs with GPUs hidden from TensorFlow (``CUDA_VISIBLE_DEVICES=""``
set before TensorFlow is imported, see :mod:`onnxserve.converter.environment`):
with a GPU, Keras traces LSTMs as cuDNN kernels that ONNX cannot express.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from onnxserve.converter.environment import hide_gpus
from onnxserve.converter.errors import ConversionError
from onnxserve.converter.report import ConversionReport, TensorSummary
from onnxserve.converter.settings import ConvertOptions, ConvertOptionsError, ConvertSettings

__all__ = ["convert", "convert_with_settings"]

log = logging.getLogger("onnxserve.converter")
Progress = Callable[[str], None]


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
) -> ConversionReport:
    from onnxserve.converter.logs import library_output

    with library_output(options.verbose):
        return _pipeline(model, repository, name, options, progress)


def convert_with_settings(
    settings: ConvertSettings, progress: Progress | None = None
) -> ConversionReport:
    """``convert`` driven by a resolved :class:`ConvertSettings` (what the CLI does)."""
    return _convert(settings.model, settings.repository, settings.name, settings, progress)


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
    from onnxserve.converter.load import LoadedModel, from_keras_model, load_model
    from onnxserve.converter.repository import build_config, check_target, write_entry
    from onnxserve.converter.text import MIN_TEXT_OPSET, attach_front
    from onnxserve.converter.text_check import check_text
    from onnxserve.converter.trace import trace_model
    from onnxserve.converter.variants import apply_variants
    from onnxserve.converter.verify import check_onnx, verify_onnx

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

    def stage(text: str) -> None:
        nonlocal done
        done += 1
        say(f"[{done}/{total} {time.monotonic() - started:5.1f}s] {text}")

    if isinstance(model, (str, os.PathLike)):
        stage(f"loading {model}")
        loaded = load_model(model, safe_mode=not options.unsafe_deserialization)
    else:
        stage("checking the in-memory Keras model")
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
    stage("tracing with an explicit input signature")
    if front is not None:
        whole = trace_model(loaded, dynamic_sequence=False)  # Keras with the text layer
        network = LoadedModel(source=loaded.source, keras_model=front.network)
        traced = trace_model(network, dynamic_sequence=False)
        ids_name = traced.inputs[front.input_index].name
        text_name = whole.inputs[front.input_index].name
    else:
        traced = trace_model(loaded, dynamic_sequence=options.dynamic_sequence)
    ranges = {
        i.name: i.declared_range
        for i in traced.inputs
        if i.declared_range is not None and (front is None or i.name != ids_name)
    }
    for info in traced.inputs:
        if info.name in ranges:
            say(f"  input {info.name!r}: {_range_text(ranges[info.name])}, from {_reasons(info)}")
    stage(f"exporting to ONNX (opset {options.opset}) with tf2onnx")
    exported = export_onnx(traced, opset=options.opset)
    for warning in exported.warnings:
        log.warning("%s", warning)
    _stamp(exported.model, loaded.source)
    stage("verifying with onnx.checker and onnxruntime against Keras")
    checks = verify_onnx(
        exported.model,
        traced,
        max_batch_size=options.max_batch_size,
        rtol=options.rtol,
        atol=options.atol,
        seed=options.seed,
        progress=say,
    )
    final_model, variant = exported.model, None
    if variants:
        stage("optimizing / quantizing and judging the result against Keras")
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
    if front is not None:
        stage("checking the text preprocessing and the whole model against Keras on sentences")
        final_model = attach_front(final_model, front, ids_name, text_name)
        check_onnx(final_model, full_check=False)
        text_check = check_text(
            final_model,
            front,
            whole.reference,
            text_name,
            _other_inputs(whole, text_name, options.seed),
            text_sentences,
            opset=options.opset,
            max_batch_size=options.max_batch_size,
            rtol=options.rtol,
            atol=options.atol,
            progress=say,
        )
    config = build_config(final_model, name, options.max_batch_size, input_ranges=ranges)
    stage(f"writing to {repository / name}")
    written = write_entry(repository, name, final_model, config, options.version)
    report = ConversionReport(
        name=name,
        version=written.version,
        source=loaded.source,
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
        seconds=time.monotonic() - started,
        text_check=text_check,
    )
    return report


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
