"""Every Keras 3 built-in activation and layer converts and answers like Keras (issue 23).

Each one is put alone in a model (tests/converter_sweep.py) and converted
with the converter's own check against Keras (fp32 within 1e-5 at batch 1, an
odd size and the maximum). A refusal is expected only where
``EXPECTED_REFUSALS`` names it with its reason; a Keras layer class that the
sweep does not know fails ``test_every_public_layer_is_swept_or_excused``, so
that a new Keras release's layers are looked at rather than found by users.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.converter_models import _keras
from tests.converter_sweep import (
    ACTIVATIONS,
    LAYERS,
    NOT_SWEPT,
    activation_model,
    activation_names,
    unlisted_layers,
)

pytestmark = pytest.mark.slow

# name -> a phrase the converter's refusal must hold. Empty: everything converts (checked
# with Keras 3.15, TensorFlow 2.21, tf2onnx 1.17).
EXPECTED_REFUSALS: dict[str, str] = {}

# Recurrent layers that run as an ONNX Loop (reported), all others must not.
LOOPS = frozenset(
    {"GRU", "RNN", "SimpleRNN", "StackedRNNCells", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"}
)


def test_every_public_activation_and_layer_is_swept_or_excused() -> None:
    assert sorted(ACTIVATIONS) == activation_names(_keras())
    assert unlisted_layers(_keras()) == []
    assert not set(LAYERS) & set(NOT_SWEPT)


def _check(name: str, build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from onnxserve.converter import ConversionError, convert

    model = build(_keras())
    if name in EXPECTED_REFUSALS:
        with pytest.raises(ConversionError, match=EXPECTED_REFUSALS[name]):
            convert(model, tmp_path, "m", max_batch_size=4, progress=lambda _: None)
        return
    report = convert(model, tmp_path, "m", max_batch_size=4, progress=lambda _: None)
    assert [c.batch_size for c in report.checks][:3] == [1, 3, 4]
    assert all(c.passed for c in report.checks) and report.max_abs_difference <= 1e-5
    assert bool(report.loop_nodes) == (name in LOOPS), report.loop_nodes


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_converts_like_keras(name: str, tmp_path: Path) -> None:
    _check(name, activation_model(name), tmp_path)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_converts_like_keras(name: str, tmp_path: Path) -> None:
    _check(name, LAYERS[name], tmp_path)
