"""What an explanation returns: an attribution per feature, and what it cost.

Attributions are in the units of the explained output: for occlusion, how much
the output drops when the feature is removed; for the shap methods, Shapley
values whose sum is ``score - base``; for lime, the weights of its local
linear model. Positive means the feature pushed the output up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Attribution", "Explanation"]


@dataclass(frozen=True)
class Attribution:
    """One feature's share: ``index`` in feature order, where it sits, what it is."""

    index: int
    label: str
    position: tuple[int, ...]
    value: str | float
    attribution: float


@dataclass(frozen=True)
class Explanation:
    """Attributions of one prediction, with the inferences and time they took.

    ``score`` is the explained output element (``output``, flattened index
    ``target``) for the unperturbed input; ``base`` the method's value with
    every feature removed (None for occlusion and where a method has none).
    ``inferences`` counts rows the server scored, ``calls`` the requests that
    carried them (at most ``max_rows`` rows each, at most ``concurrency`` in
    flight), ``seconds`` the wall-clock time of the whole explanation,
    metadata calls included. For images, ``segments`` maps each pixel to its
    feature and ``image`` is the input row, for heat maps.
    """

    model: str
    input: str
    output: str
    target: int
    kind: str
    method: str
    score: float
    base: float | None
    attributions: tuple[Attribution, ...]
    inferences: int
    calls: int
    seconds: float
    samples: int | None
    seed: int | None
    max_rows: int
    concurrency: int
    image: np.ndarray | None = field(default=None, repr=False, compare=False)
    segments: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def values(self) -> np.ndarray:
        """The attributions as an array, in feature order."""
        return np.array([a.attribution for a in self.attributions], dtype=np.float64)

    def ranked(self) -> list[Attribution]:
        """Features by the size of their attribution, largest first (ties: input order)."""
        return sorted(self.attributions, key=lambda a: (-abs(a.attribution), a.index))

    def pixel_map(self) -> np.ndarray:
        """Images: each pixel's feature's attribution, ``(H, W)``; ValueError for other kinds."""
        if self.segments is None:
            raise ValueError(f"a {self.kind} explanation has no pixels")
        return self.values[self.segments]

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, for JSON: every field but the image arrays."""
        return {
            "model": self.model,
            "input": self.input,
            "output": self.output,
            "target": self.target,
            "kind": self.kind,
            "method": self.method,
            "score": self.score,
            "base": self.base,
            "inferences": self.inferences,
            "calls": self.calls,
            "seconds": round(self.seconds, 4),
            "samples": self.samples,
            "seed": self.seed,
            "max_rows": self.max_rows,
            "concurrency": self.concurrency,
            "attributions": [
                {
                    "index": a.index,
                    "label": a.label,
                    "position": list(a.position),
                    "value": a.value,
                    "attribution": a.attribution,
                }
                for a in self.attributions
            ],
        }
