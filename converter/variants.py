"""Optional steps after the fp32 check: offline optimization, int8, fp16.

Each produces a new ONNX model that is judged against the reference on the
same check inputs, on what the task needs rather than on the fp32 tolerance:
int8 and fp16 by label agreement (argmax for multi-class outputs, the 0.5
threshold for sigmoid outputs, equality for integer outputs) with the max
difference reported; an optimization alone by its max difference, which must
stay within what serving promises (1e-4 by default).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxserve.converter.errors import ConversionError, VerificationError
from onnxserve.converter.export import iter_nodes
from onnxserve.converter.verify import CaseResult, evaluate, make_session
from onnxserve.sessions import create_session

__all__ = [
    "OutputAgreement",
    "VariantResult",
    "judge_variant",
    "label_agreement",
    "optimize_model",
    "quantize_int8",
    "to_fp16",
]

OPTIMIZATION_LEVELS = ("basic", "extended")


@dataclass(frozen=True)
class OutputAgreement:
    """One output of a variant: max difference, and label agreement where labels exist."""

    name: str
    max_abs: float
    agreement: float | None


@dataclass
class VariantResult:
    """What a variant (e.g. 'int8', 'fp16 + extended') did and how close it stayed."""

    description: str
    outputs: list[OutputAgreement] = field(default_factory=list)
    criterion: str = ""
    passed: bool = True

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def agreement(self) -> float | None:
        values = [o.agreement for o in self.outputs if o.agreement is not None]
        return min(values) if values else None


def optimize_model(model: onnx.ModelProto, level: str) -> onnx.ModelProto:
    """onnxruntime's offline graph optimization at a portable level (basic or extended)."""
    if level not in OPTIMIZATION_LEVELS:
        raise ConversionError(
            f"optimization level {level!r}: use one of {', '.join(OPTIMIZATION_LEVELS)}"
        )
    with tempfile.TemporaryDirectory(prefix="onnxserve-optimize-") as tmp:
        target = Path(tmp) / "optimized.onnx"
        # A SessionError here becomes _step's ConversionError, which names the step.
        create_session(
            model.SerializeToString(), graph_optimization=level, optimized_model_path=target
        )
        return onnx.load(str(target))


def quantize_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic int8 quantization of the weights (activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="onnxserve-quantize-") as tmp, _quiet_root_logger():
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, str(source))
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
        return onnx.load(str(target))


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs advice and per-tensor notes on the root logger.

    The advice (pre-process first) is about static quantization accuracy and
    the notes are noise for dynamic quantization; the result is judged here.
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and compute; inputs and outputs stay float32 (config unchanged).

    onnxruntime's own converter is used: onnxconverter-common's produced models
    onnxruntime refused for the Keras 3 text graphs.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


def label_agreement(actual: np.ndarray, reference: np.ndarray) -> float | None:
    """Fraction of rows whose predicted label is the same; None for outputs without labels."""
    reference = np.asarray(reference)
    actual = np.asarray(actual)
    if reference.shape != actual.shape or reference.size == 0:
        return 0.0
    if reference.dtype.kind in "biu":
        return float(np.mean(reference == actual))
    rows = reference.reshape(reference.shape[0], -1) if reference.ndim > 1 else reference[:, None]
    got = actual.reshape(rows.shape)
    if reference.ndim >= 2 and reference.shape[-1] > 1:
        ref_labels = np.argmax(reference, axis=-1)
        got_labels = np.argmax(actual, axis=-1)
        return float(np.mean(ref_labels == got_labels))
    if rows.shape[1] == 1 and float(rows.min()) >= 0.0 and float(rows.max()) <= 1.0:
        return float(np.mean((rows >= 0.5) == (got >= 0.5)))
    return None


def judge_variant(
    description: str,
    model: onnx.ModelProto,
    cases: Sequence[CaseResult],
    *,
    by_labels: bool,
    min_agreement: float,
    atol: float,
) -> VariantResult:
    """Run the variant on the check cases and judge it (see the module docstring)."""
    session = make_session(model)
    _, produced = evaluate(session, cases, rtol=0.0, atol=0.0)
    result = VariantResult(description=description)
    names = list(cases[0].reference) if cases else []
    for name in names:
        refs = [case.reference[name] for case in cases]
        gots = [out[name] for out in produced]
        max_abs = max(
            float(
                np.max(np.abs(np.asarray(g, np.float64) - np.asarray(r, np.float64)), initial=0.0)
            )
            for g, r in zip(gots, refs, strict=False)
        )
        agreements = [label_agreement(g, r) for g, r in zip(gots, refs, strict=False)]
        counted = [
            (a, len(r))
            for a, r in zip(agreements, refs, strict=False)
            if a is not None and np.ndim(r) > 0
        ]
        agreement = sum(a * n for a, n in counted) / sum(n for _, n in counted) if counted else None
        result.outputs.append(OutputAgreement(name, max_abs, agreement))
    if by_labels:
        result.criterion = f"label agreement >= {min_agreement:g}"
        judged = [o.agreement for o in result.outputs if o.agreement is not None]
        result.passed = all(a >= min_agreement for a in judged)
    else:
        result.criterion = f"max abs difference <= {atol:g}"
        result.passed = result.max_abs <= atol
    return result


def _step(
    what: str, function: Callable[[onnx.ModelProto], onnx.ModelProto], model: onnx.ModelProto
) -> onnx.ModelProto:
    """Run one step; its failure becomes a ConversionError that says which step failed."""
    try:
        return function(model)
    except ConversionError:
        raise
    except Exception as exc:
        loops = any(node.op_type in ("Loop", "Scan") for node in iter_nodes(model.graph))
        hint = (
            " (the model holds an ONNX Loop, from a GRU or masked recurrent layer, which "
            "onnxruntime's tools often cannot handle)"
            if loops
            else ""
        )
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConversionError(f"{what} failed{hint}: {first}; convert without it") from exc


def apply_variants(
    model: onnx.ModelProto,
    cases: Sequence[CaseResult],
    *,
    optimize: str,
    quantize: str,
    fp16: bool,
    min_agreement: float,
    variant_atol: float,
) -> tuple[onnx.ModelProto, VariantResult | None]:
    """Apply the requested steps (int8 or fp16 first, then optimization) and judge the result.

    The options are :class:`~onnxserve.converter.settings.ConvertOptions`' checked values.
    """
    if optimize == "none" and quantize == "none" and not fp16:
        return model, None
    steps: list[str] = []
    if quantize == "int8":
        model = _step("int8 dynamic quantization", quantize_int8, model)
        steps.append("int8 dynamic quantization")
    if fp16:
        model = _step("fp16 conversion", to_fp16, model)
        steps.append("fp16")
    if optimize != "none":
        model = _step(f"{optimize} optimization", lambda m: optimize_model(m, optimize), model)
        steps.append(f"{optimize} optimization")
    result = judge_variant(
        " + ".join(steps),
        model,
        cases,
        by_labels=quantize == "int8" or fp16,
        min_agreement=min_agreement,
        atol=variant_atol,
    )
    if not result.passed:
        raise VerificationError(
            f"the {result.description} model is too far from Keras "
            f"(needs {result.criterion}; got max abs {result.max_abs:.3g}"
            + (f", label agreement {result.agreement:.3f}" if result.agreement is not None else "")
            + "); nothing written. Convert without it, or relax --min-agreement/--variant-atol"
        )
    return model, result
