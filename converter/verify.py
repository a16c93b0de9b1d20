"""Verify step: the ONNX model is valid and computes what the Keras model computes.

onnx.checker first, then onnxruntime (CPU) against the reference (Keras, or
the SavedModel's signature) on generated, representative inputs at batch sizes
1, an odd size and the maximum batch size, plus a different sequence length
where the sequence dimension was made dynamic. fp32 must agree elementwise
within ``atol + rtol * |reference|`` (numpy's allclose rule).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxserve.converter.errors import VerificationError
from onnxserve.converter.inputs import generate_batch
from onnxserve.converter.trace import TracedModel
from onnxserve.sessions import SessionError, create_session, needs_extensions

__all__ = [
    "CaseResult",
    "OutputDifference",
    "check_batch_axis",
    "check_batch_sizes",
    "check_onnx",
    "compare_outputs",
    "make_session",
    "run_cases",
    "verify_onnx",
]

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class OutputDifference:
    """How far one ONNX output is from the reference on one check case.

    ``max_rel`` is taken over the elements whose reference magnitude exceeds
    ``atol``; relative differences of values near zero mean nothing.
    """

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    within_tolerance: bool


@dataclass
class CaseResult:
    """One check case: a batch size (and sequence length), and each output's difference."""

    batch_size: int
    sequence_length: int | None
    outputs: list[OutputDifference] = field(default_factory=list)
    inputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    reference: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        return all(o.within_tolerance for o in self.outputs)

    @property
    def label(self) -> str:
        text = f"batch {self.batch_size}"
        return (
            text
            if self.sequence_length is None
            else f"{text}, sequence length {self.sequence_length}"
        )


def check_batch_sizes(max_batch_size: int) -> list[int]:
    """1, an odd size in between, and the maximum."""
    odd = next((n for n in (5, 3) if n < max_batch_size), None)
    return sorted({1, max_batch_size, *([odd] if odd else [])})


def check_onnx(model: onnx.ModelProto | Path, *, full_check: bool = True) -> None:
    """onnx.checker with shape inference; VerificationError if the model is invalid.

    A path is checked as a file (its external data is found beside it, and
    never read into Python). ``full_check=False`` leaves out onnx's shape
    inference, which crashes the process (onnx 1.23, a segmentation fault) on
    the text preprocessing graph; onnxruntime's own loading of that model
    checks it instead."""
    try:
        onnx.checker.check_model(
            str(model) if isinstance(model, Path) else model, full_check=full_check
        )
    except Exception as exc:
        raise VerificationError(f"the ONNX model is invalid: {str(exc).strip()[:500]}") from exc


def make_session(
    model: onnx.ModelProto | bytes | Path, *, custom_ops: bool | None = None
) -> object:
    """A CPU onnxruntime session (conversion is checked on the CPU, like it is traced).

    From a path onnxruntime loads the file itself and memory-maps its external
    data. ``custom_ops`` (onnxruntime-extensions' operators): by default where
    the model's opset imports name their domain."""
    data = model if isinstance(model, (bytes, Path)) else model.SerializeToString()
    if custom_ops is None:
        custom_ops = isinstance(model, onnx.ModelProto) and needs_extensions(
            entry.domain for entry in model.opset_import
        )
    try:
        return create_session(
            data, intra_op_threads=min(4, os.cpu_count() or 1), custom_ops=custom_ops
        )
    except SessionError as exc:
        raise VerificationError(f"onnxruntime cannot load the ONNX model: {exc}") from exc


def compare_outputs(
    actual: Arrays, reference: Arrays, *, rtol: float, atol: float
) -> list[OutputDifference]:
    """Elementwise comparison per output; a missing output, other shape or dtype fails."""
    differences = []
    for name, expected in reference.items():
        expected = np.asarray(expected)
        got = actual.get(name)
        if got is None or np.shape(got) != expected.shape or got.dtype != expected.dtype:
            differences.append(
                OutputDifference(name, tuple(expected.shape), float("inf"), float("inf"), False)
            )
            continue
        got_f = np.asarray(got, dtype=np.float64)
        exp_f = np.asarray(expected, dtype=np.float64)
        error = np.abs(got_f - exp_f)
        max_abs = float(error.max()) if error.size else 0.0
        big = np.abs(exp_f) > atol
        max_rel = float((error[big] / np.abs(exp_f[big])).max()) if big.any() else 0.0
        ok = bool(np.allclose(got_f, exp_f, rtol=rtol, atol=atol, equal_nan=True))
        differences.append(OutputDifference(name, tuple(expected.shape), max_abs, max_rel, ok))
    return differences


def run_cases(traced: TracedModel, max_batch_size: int, seed: int) -> list[CaseResult]:
    """The check cases with their inputs and reference outputs (computed once, reused)."""
    cases: list[CaseResult] = []
    sizes = check_batch_sizes(max_batch_size)
    for n, batch in enumerate(sizes):
        case = CaseResult(batch_size=batch, sequence_length=None)
        case.inputs = generate_batch(traced.inputs, batch, seed + n)
        cases.append(case)
    dynamic = [i for i in traced.inputs if i.dynamic_sequence]
    if dynamic:
        length = dynamic[0].example_shape[0] + 3
        batch = sizes[1] if len(sizes) > 2 else sizes[-1]
        case = CaseResult(batch_size=batch, sequence_length=length)
        case.inputs = generate_batch(
            traced.inputs, batch, seed + len(sizes), sequence_length=length
        )
        cases.append(case)
    for case in cases:
        case.reference = traced.reference(case.inputs)
    return cases


def evaluate(
    session: object,
    cases: Sequence[CaseResult],
    *,
    rtol: float,
    atol: float,
) -> tuple[list[CaseResult], list[dict[str, np.ndarray]]]:
    """Run the ONNX session on every case; new CaseResults with differences, and the outputs."""
    results: list[CaseResult] = []
    produced: list[dict[str, np.ndarray]] = []
    names = [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]
    for case in cases:
        try:
            values = session.run(names, dict(case.inputs))  # type: ignore[attr-defined]
        except Exception as exc:
            raise VerificationError(
                f"onnxruntime failed on the check inputs ({case.label}): {str(exc)[:500]}"
            ) from exc
        outputs = dict(zip(names, values, strict=False))
        produced.append(outputs)
        result = CaseResult(
            case.batch_size, case.sequence_length, inputs=case.inputs, reference=case.reference
        )
        result.outputs = compare_outputs(outputs, case.reference, rtol=rtol, atol=atol)
        results.append(result)
    return results, produced


def check_batch_axis(cases: Sequence[CaseResult]) -> None:
    """Every output must have the batch as its first dimension, as the server assumes.

    The server stacks requests along axis 0 and splits the results the same
    way; an output that reduces over the batch (or has none) would be split
    wrongly, so such a model is refused rather than served with wrong answers.
    """
    for case in cases:
        for name, value in case.reference.items():
            shape = np.shape(value)
            if not shape or shape[0] != case.batch_size:
                raise VerificationError(
                    f"output {name!r} has shape {list(shape)} for a batch of "
                    f"{case.batch_size}: its first dimension is not the batch, which the "
                    "server needs to batch requests (compute batch-level results in the client)"
                )


def verify_onnx(
    model: onnx.ModelProto | Path,
    traced: TracedModel,
    *,
    max_batch_size: int,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[CaseResult]:
    """Check the model and compare it with the reference; VerificationError if it differs.

    ``model`` is the ONNX model, or the path of a written one (a model with
    external data: onnxruntime maps the weights, which are read once).
    """
    check_onnx(model)
    session = make_session(model)
    cases = run_cases(traced, max_batch_size, seed)
    check_batch_axis(cases)
    results, _ = evaluate(session, cases, rtol=rtol, atol=atol)
    if progress is not None:
        for case in results:
            worst = max((o.max_abs for o in case.outputs), default=0.0)
            progress(f"  {case.label}: max abs difference {worst:.3g}")
    failed = [case for case in results if not case.passed]
    if failed:
        lines = [
            f"{case.label}, output {o.name!r}: max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}"
            for case in failed
            for o in case.outputs
            if not o.within_tolerance
        ]
        raise VerificationError(
            f"the ONNX model does not match the Keras model within rtol={rtol}, atol={atol}: "
            + "; ".join(lines)
        )
    return results
