"""The conversion report: what was written, and how close it is to Keras."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from onnxserve.converter.text_check import TextCheck
from onnxserve.converter.variants import VariantResult
from onnxserve.converter.verify import CaseResult
from onnxserve.memory import format_bytes

__all__ = ["ConversionReport", "StepCost", "TensorSummary"]


@dataclass(frozen=True)
class StepCost:
    """One step of the conversion: how long it took and the converter's peak resident memory
    during it (bytes; None where the platform cannot tell)."""

    name: str
    seconds: float
    peak_bytes: int | None


@dataclass(frozen=True)
class TensorSummary:
    """One input or output as the server will see it (config.pbtxt terms)."""

    name: str
    data_type: str  # TYPE_FP32, ...
    dims: tuple[int, ...]  # without the batch dim; -1 = dynamic
    onnx_shape: tuple[str | int, ...]  # with named dims, e.g. ('batch', 'sequence')
    valid_range: tuple[int | None, int | None] | None = None  # declared in config.pbtxt


@dataclass
class ConversionReport:
    """Everything a user (or a test) wants to know after a conversion."""

    name: str
    version: int
    source: str
    model_path: Path
    config_path: Path
    config_written: bool
    opset: int
    max_batch_size: int
    size_bytes: int
    inputs: list[TensorSummary]
    outputs: list[TensorSummary]
    checks: list[CaseResult]
    rtol: float
    atol: float
    variant: VariantResult | None = None
    warnings: list[str] = field(default_factory=list)
    loop_nodes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: For a text model: the check of its token ids and outputs on sentences.
    text_check: TextCheck | None = None
    #: Time and peak memory of each step (load, trace, export, verify, write ...).
    steps: list[StepCost] = field(default_factory=list)
    #: The files of the version folder besides config.pbtxt (model.onnx, its data, sha256sums).
    files: list[str] = field(default_factory=list)
    #: Bytes of weights kept as ONNX external data (0: model.onnx holds everything).
    external_bytes: int = 0

    @property
    def peak_bytes(self) -> int | None:
        """The converter's peak resident memory over all steps."""
        peaks = [s.peak_bytes for s in self.steps if s.peak_bytes is not None]
        return max(peaks) if peaks else None

    @property
    def max_abs_difference(self) -> float:
        return max((o.max_abs for c in self.checks for o in c.outputs), default=0.0)

    @property
    def max_rel_difference(self) -> float:
        return max((o.max_rel for c in self.checks for o in c.outputs), default=0.0)

    def max_abs_by_output(self) -> dict[str, float]:
        result: dict[str, float] = {}
        for case in self.checks:
            for o in case.outputs:
                result[o.name] = max(result.get(o.name, 0.0), o.max_abs)
        return result

    def format(self) -> str:
        """A readable multi-line summary (what the CLI prints)."""
        lines = [
            f"Converted {self.source}",
            f"  wrote     {self.model_path} ({_size(self.size_bytes)}), opset {self.opset}",
            *(
                [
                    f"  weights   {_size(self.external_bytes)} as external data in "
                    f"{', '.join(f for f in self.files if f != self.model_path.name)}"
                ]
                if self.external_bytes
                else []
            ),
            f"  config    {self.config_path}"
            + ("" if self.config_written else " (existing, kept: same inputs and outputs)"),
            f"  model     {self.name!r} version {self.version}, "
            f"max_batch_size {self.max_batch_size}",
        ]
        for title, tensors in (("input ", self.inputs), ("output", self.outputs)):
            for t in tensors:
                shape = ", ".join(str(d) for d in t.onnx_shape)
                line = f"  {title}    {t.name}: {t.data_type} [{shape}]"
                if t.valid_range is not None:
                    low, high = ("" if b is None else b for b in t.valid_range)
                    line += f", valid values {low}..{high} (declared in config.pbtxt)"
                lines.append(line)
        lines.append(
            f"  fp32 check vs Keras (rtol={self.rtol:g}, atol={self.atol:g}): passed on "
            + ", ".join(c.label for c in self.checks)
        )
        for case in self.checks:
            for o in case.outputs:
                lines.append(
                    f"    {case.label:<32} {o.name}: "
                    f"max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}"
                )
        if self.text_check is not None:
            lines.append(self.text_check.format())
        if self.variant is not None:
            v = self.variant
            text = f"  {v.description}: max abs difference {v.max_abs:.3g}"
            if v.agreement is not None:
                text += f", label agreement {v.agreement:.4f}"
            lines.append(text + f" (needs {v.criterion}: passed)")
        for warning in self.warnings:
            lines.append(f"  WARNING: {warning}")
        for step in self.steps:
            peak = "" if step.peak_bytes is None else f", peak memory {_size(step.peak_bytes)}"
            lines.append(f"  step      {step.name:<8} {step.seconds:6.1f}s{peak}")
        lines.append(f"  took {self.seconds:.1f}s")
        return "\n".join(lines)


def _size(n: int) -> str:
    return format_bytes(n)
