"""The attribution methods: occlusion here, the sampling estimators from shap and lime.

Each method gets the features (:class:`FeatureSpace`), a ``score`` function
(model input rows -> one float per row, through the server) and the sampling
parameters, and returns one attribution per feature and a base value. What
"removing" a feature means is the feature space's, so every method removes
the same way.

- ``occlusion``: ``score(x) - score(x without feature i)``, exact, ``size``
  inferences; for a model that is linear in its features it is the feature's
  whole contribution.
- ``kernel-shap``: :class:`shap.KernelExplainer` over the binary mask space
  (background: every feature removed), ``samples`` coalitions, seeded;
  ``samples + 2`` inferences (shap scores the background and the input too).
- ``partition-shap``: shap's Partition explainer with a ``Text`` masker, which
  groups the words of a sentence into a hierarchy and spends ``samples``
  evaluations at most; for words and tokens.
- ``lime``: :class:`lime.lime_text.LimeTextExplainer` (words, tokens) or
  :class:`lime.lime_image.LimeImageExplainer` (images; the patches are its
  segments), ``samples`` perturbations, seeded.

shap and lime are the ``explain`` extra (``pip install 'onnxserve[explain]'``)
and are imported only when their method runs.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from onnxserve.client.explain.features import MASK_MARK, FeatureSpace, masks_of_texts

__all__ = ["METHODS", "Method", "MethodResult", "import_method", "run_method"]

Method = Literal["occlusion", "kernel-shap", "partition-shap", "lime"]
METHODS: tuple[str, ...] = ("occlusion", "kernel-shap", "partition-shap", "lime")
#: The kinds of features each method explains.
KINDS: dict[str, tuple[str, ...]] = {
    "occlusion": ("text", "tokens", "image", "tabular"),
    "kernel-shap": ("text", "tokens", "image", "tabular"),
    "partition-shap": ("text", "tokens"),
    "lime": ("text", "tokens", "image"),
}
Score = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class MethodResult:
    """Attributions in feature order, and the method's base value (None where it has none)."""

    values: np.ndarray
    base: float | None


def _extra(module: str, method: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"the {method} method needs {exc.name}, from the explain extra: "
            "pip install 'onnxserve[explain]'",
            name=exc.name,
        ) from None


#: The modules each method imports (the explain extra's).
_MODULES: dict[str, tuple[str, ...]] = {
    "occlusion": (),
    "kernel-shap": ("shap",),
    "partition-shap": ("shap",),
    "lime": ("lime.lime_text", "lime.lime_image"),
}


def import_method(method: str) -> None:
    """Import what ``method`` needs now: shap takes seconds to import (numba, pandas), which
    an explanation's time should not include; ModuleNotFoundError names the extra."""
    for module in _MODULES.get(method, ()):
        _extra(module, method)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """numpy's global generator seeded for the block (KernelExplainer draws from it)."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextlib.contextmanager
def _no_progress_bar(module: Any) -> Iterator[None]:
    """lime_image draws a tqdm bar on stderr, with no switch: its loop is passed through.

    The name is swapped on lime's module for the call and put back after.
    """
    bar = module.tqdm
    module.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        module.tqdm = bar


def occlusion(space: FeatureSpace, score: Score, full: float) -> MethodResult:
    masks = ~np.eye(space.size, dtype=bool)
    return MethodResult(full - score(space.rows(masks)), None)


def kernel_shap(space: FeatureSpace, score: Score, samples: int, seed: int) -> MethodResult:
    shap = _extra("shap", "kernel-shap")

    def on_masks(masks: np.ndarray) -> np.ndarray:
        return score(space.rows(masks > 0.5))

    with _seeded(seed):
        explainer = shap.KernelExplainer(on_masks, np.zeros((1, space.size)))
        values = explainer.shap_values(np.ones((1, space.size)), nsamples=samples, silent=True)
    base = float(np.asarray(explainer.expected_value).reshape(-1)[0])
    return MethodResult(np.asarray(values, np.float64).reshape(-1)[: space.size], base)


def partition_shap(space: FeatureSpace, score: Score, samples: int) -> MethodResult:
    shap = _extra("shap", "partition-shap")
    masker = shap.maskers.Text(r"\s+", mask_token=MASK_MARK, collapse_mask_token=False)

    def on_texts(texts: np.ndarray) -> np.ndarray:
        return score(space.rows(masks_of_texts(texts, space.size)))

    explainer = shap.Explainer(on_texts, masker, algorithm="partition")
    result = explainer([space.text], max_evals=samples, silent=True)
    values = np.asarray(result.values, np.float64).reshape(-1)
    if values.size != space.size:
        raise RuntimeError(f"shap returned {values.size} values for {space.size} features")
    return MethodResult(values, float(np.asarray(result.base_values).reshape(-1)[0]))


def lime_text(space: FeatureSpace, score: Score, samples: int, seed: int) -> MethodResult:
    lime_text_module = _extra("lime.lime_text", "lime")
    explainer = lime_text_module.LimeTextExplainer(
        split_expression=r"\s+", bow=False, mask_string=MASK_MARK, random_state=seed
    )

    def on_texts(texts: list[str]) -> np.ndarray:
        return score(space.rows(masks_of_texts(texts, space.size)))[:, np.newaxis]

    explanation = explainer.explain_instance(
        space.text, on_texts, labels=(0,), num_features=space.size, num_samples=samples
    )
    values = np.zeros(space.size)
    for feature, weight in explanation.as_map()[0]:
        values[int(feature)] = weight
    return MethodResult(values, float(explanation.intercept[0]))


def lime_image(space: FeatureSpace, score: Score, samples: int, seed: int) -> MethodResult:
    lime_image_module = _extra("lime.lime_image", "lime")
    assert space.segments is not None
    row = space.row
    grey = row.ndim == 2 or row.shape[-1] == 1
    if not grey and row.shape[-1] != 3:
        raise ValueError("lime explains images of 1 or 3 channels (H, W) or (H, W, C)")
    view = np.repeat(row.reshape(*row.shape[:2], 1), 3, axis=-1) if grey else row

    def on_images(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, row.dtype)
        rows = images[..., 0].reshape(len(images), *row.shape) if grey else images
        return score(rows)[:, np.newaxis]

    explainer = lime_image_module.LimeImageExplainer(random_state=seed)
    with _no_progress_bar(lime_image_module):
        explanation = explainer.explain_instance(
            view,
            on_images,
            labels=(0,),
            hide_color=float(np.asarray(space.baseline)),
            top_labels=None,
            num_features=space.size,
            num_samples=samples,
            batch_size=samples,
            segmentation_fn=lambda _image: space.segments,
            random_seed=seed,
        )
    values = np.zeros(space.size)
    for feature, weight in explanation.local_exp[0]:
        values[int(feature)] = weight
    return MethodResult(values, float(explanation.intercept[0]))


def run_method(
    method: str, space: FeatureSpace, score: Score, *, full: float, samples: int, seed: int
) -> MethodResult:
    """Run ``method`` on ``space``; ValueError for a method that does not explain this kind."""
    if method not in KINDS:
        raise ValueError(f"unknown method {method!r}; the methods are {', '.join(METHODS)}")
    if space.kind not in KINDS[method]:
        raise ValueError(
            f"{method} does not explain {space.kind} inputs; for {space.kind} use "
            + " or ".join(m for m, kinds in KINDS.items() if space.kind in kinds)
        )
    if method == "occlusion":
        return occlusion(space, score, full)
    if method == "kernel-shap":
        return kernel_shap(space, score, samples, seed)
    if method == "partition-shap":
        return partition_shap(space, score, samples)
    if space.kind == "image":
        return lime_image(space, score, samples, seed)
    return lime_text(space, score, samples, seed)
