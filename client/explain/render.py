"""Explanations for people and programs: a table, a coloured sentence, JSON, a PNG heat map.

Colour follows the usual conventions: none when ``NO_COLOR`` is set (to
anything, https://no-color.org), when the stream is not a terminal or when
``TERM`` is ``dumb``, unless asked for with ``always``. Green pushed the
output up, red pushed it down; bold marks the features with at least half the
largest attribution. Without colour the sentence carries each word's
attribution in brackets instead, so nothing is lost in a log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, TextIO

import numpy as np

from onnxserve.client.explain.result import Explanation

__all__ = [
    "ColorMode",
    "format_json",
    "format_sentence",
    "format_table",
    "use_color",
    "write_heatmap",
]

ColorMode = Literal["auto", "always", "never"]
_GREEN, _RED, _BOLD, _RESET = "\033[32m", "\033[31m", "\033[1m", "\033[0m"


def use_color(stream: TextIO, mode: ColorMode = "auto") -> bool:
    """Whether to colour output on ``stream`` (NO_COLOR, a tty and TERM decide ``auto``)."""
    if mode != "auto":
        return mode == "always"
    if os.environ.get("NO_COLOR", "") != "" or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _number(value: float) -> str:
    return f"{value:+.4f}" if abs(value) >= 1e-4 or value == 0 else f"{value:+.2e}"


def _summary(explanation: Explanation) -> str:
    e = explanation
    base = "" if e.base is None else f", base {e.base:.4f}"
    sampled = (
        ""
        if e.samples is None
        else f", {e.samples} samples" + ("" if e.seed is None else f", seed {e.seed}")
    )
    return (
        f"{e.method} on {e.model}: {e.output}[{e.target}] = {e.score:.4f}{base}; "
        f"{len(e.attributions)} {e.kind} features{sampled}; "
        f"{e.inferences} inferences in {e.calls} calls (<= {e.max_rows} rows each, "
        f"{e.concurrency} in flight) in {e.seconds:.2f} s"
    )


def format_table(explanation: Explanation, top: int = 10, *, color: bool = False) -> str:
    """A header line and the ``top`` largest attributions, one row each."""
    ranked = explanation.ranked()[: max(top, 0)]
    rows = [("rank", "feature", "position", "value", "attribution")]
    for rank, item in enumerate(ranked, 1):
        value = item.value if isinstance(item.value, str) else f"{item.value:g}"
        position = ",".join(map(str, item.position))
        rows.append((str(rank), item.label, position, value, _number(item.attribution)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [_summary(explanation)]
    for n, row in enumerate(rows):
        cells = [row[0].rjust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2]),
                 row[3].ljust(widths[3]), row[4].rjust(widths[4])]  # fmt: skip
        line = "  ".join(cells).rstrip()
        if color and n:
            line = (_GREEN if ranked[n - 1].attribution > 0 else _RED) + line + _RESET
        lines.append(line)
    return "\n".join(lines) + "\n"


def format_sentence(explanation: Explanation, *, color: bool = False) -> str:
    """Words or tokens in input order, coloured by the sign of their attribution."""
    values = explanation.values
    scale = float(np.max(np.abs(values))) if values.size else 0.0
    parts = []
    for item in explanation.attributions:
        if not color:
            parts.append(f"{item.label}({item.attribution:+.2g})")
            continue
        if item.attribution == 0:
            parts.append(item.label)
            continue
        style = _GREEN if item.attribution > 0 else _RED
        if scale and abs(item.attribution) >= scale / 2:
            style += _BOLD
        parts.append(f"{style}{item.label}{_RESET}")
    return " ".join(parts) + "\n"


def format_json(explanation: Explanation) -> str:
    """The explanation as one JSON document (:meth:`Explanation.to_dict`)."""
    return json.dumps(explanation.to_dict(), indent=2, ensure_ascii=False) + "\n"


def write_heatmap(explanation: Explanation, path: str | os.PathLike[str]) -> Path:
    """A PNG of the image beside its attributions over it (needs matplotlib).

    The colour scale is symmetric about zero (red up, blue down), so white is
    "no effect" in every picture.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "a heat map needs matplotlib: pip install 'onnxserve[explain]'", name="matplotlib"
        ) from None
    if explanation.image is None:
        raise ValueError(f"a {explanation.kind} explanation has no image to draw")
    image = np.asarray(explanation.image, np.float64)
    heat = explanation.pixel_map()
    limit = float(np.max(np.abs(heat))) or 1.0
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 4), constrained_layout=True)
    shown = image if image.ndim == 2 or image.shape[-1] == 3 else image[..., 0]
    if shown.ndim == 3:
        shown = (shown - shown.min()) / (np.ptp(shown) or 1.0)
    left.imshow(shown, cmap="gray" if shown.ndim == 2 else None, interpolation="nearest")
    left.set_title(f"{explanation.input}: {explanation.output}[{explanation.target}] = "
                   f"{explanation.score:.3f}")  # fmt: skip
    right.imshow(shown, cmap="gray" if shown.ndim == 2 else None, interpolation="nearest")
    overlay = right.imshow(heat, cmap="bwr", vmin=-limit, vmax=limit, alpha=0.65,
                           interpolation="nearest")  # fmt: skip
    right.set_title(f"{explanation.method} attributions")
    for axes in (left, right):
        axes.set_xticks([])
        axes.set_yticks([])
    figure.colorbar(overlay, ax=right, shrink=0.8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
