"""The SDK casts inputs to the declared datatype without changing a value, and splits big batches.

Issue 26: Keras users pass lists and float64 arrays, and got "has datatype FP64
but model expects FP32"; a batch of 100 rows for a model of max_batch_size 64
was refused where Keras' predict would have split it. Against the real
protocol server: ``simple`` (FP32 add/sub, max_batch_size 64), ``simple_config``
(the same with max_batch_size 8), ``identity_<datatype>``.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from onnxserve.client import AsyncClient, Client, InvalidInputError
from onnxserve.client.casting import cast_inputs, to_declared
from onnxserve.client.splitting import join_outputs, split_rows
from tests.support.server import RunningServer

ROWS = np.arange(20 * 16, dtype=np.float64).reshape(20, 16) / 7  # float64, 20 rows


# -- the rule, as pure functions ------------------------------------------------


def test_lossless_casts_and_keras_rounding_for_narrower_floats() -> None:
    cast = cast_inputs(
        {"f": [[0.5, 2.0]], "i": [[1.0, 2.0]], "t": ["a", "é"], "other": [1.5]},
        {"f": "FP32", "i": "INT32", "t": "BYTES"},
    )
    assert cast["f"].dtype == np.float32 and cast["f"].tolist() == [[0.5, 2.0]]  # type: ignore[union-attr]
    assert cast["i"].dtype == np.int32 and cast["i"].tolist() == [[1, 2]]  # type: ignore[union-attr]
    assert cast["t"].dtype == object  # type: ignore[union-attr]
    assert cast["other"] == [1.5]  # not declared: as given
    # float64 to FP32 rounds to the nearest FP32, as Keras does.
    third = to_declared("x", np.array([1 / 3]), "FP32")
    assert third.dtype == np.float32 and third[0] == np.float32(1 / 3)


@pytest.mark.parametrize(
    ("value", "datatype", "words"),
    [
        ([1.0, 1.7], "INT32", "the value 1.7 at [1] would become 1; give INT32 values"),
        ([1, 300], "INT8", "the value 300 at [1] would become 44; give INT8 values"),
        ([1e39], "FP32", "the value 1e+39 at [0] would become inf"),
        ([2**24 + 1], "FP32", "the value 16777217 at [0] would become 16777216.0"),
        ([float("nan")], "INT64", "the value nan at [0]"),
        ([1.5], "BYTES", "the model takes BYTES (text), not float values such as 1.5"),
        ([[1, 2], [3]], "FP32", "nested lists of numbers of one shape"),
    ],
)
def test_a_cast_that_would_change_a_value_is_refused(
    value: object, datatype: str, words: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        cast_inputs({"x": value}, {"x": datatype})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x': " in info.value.message and words in info.value.message


def test_split_rows_cuts_along_the_first_dimension_and_join_restores_it() -> None:
    parts = split_rows({"a": ROWS, "b": ROWS}, 8)
    assert [part["a"].shape[0] for part in parts] == [8, 8, 4]  # type: ignore[union-attr]
    joined = join_outputs([{"y": np.asarray(p["a"])} for p in parts])
    np.testing.assert_array_equal(joined["y"], ROWS)
    assert split_rows({"a": ROWS}, 0) == [{"a": ROWS}]  # not batched: whole
    with pytest.raises(InvalidInputError, match=r"same number of rows.*'a' 20, 'b' 3"):
        split_rows({"a": ROWS, "b": ROWS[:3]}, 8)


# -- against the server ---------------------------------------------------------


@pytest.fixture(scope="module")
def client(protocol_server: RunningServer) -> Client:
    with Client(protocol_server.address, timeout=30) as client:
        yield client  # type: ignore[misc]


def test_lists_and_float64_are_sent_as_the_declared_fp32(client: Client) -> None:
    a, b = ROWS[:2], ROWS[:2].tolist()
    out = client.infer("simple", {"INPUT0": a, "INPUT1": b})
    assert out["OUTPUT0"].dtype == np.float32
    np.testing.assert_array_equal(out["OUTPUT0"], (a.astype(np.float32) * 2))
    ints = client.infer("identity_int32", {"INPUT0": [[1, 2, 3, 4]]})["OUTPUT0"]
    assert ints.dtype == np.int32 and ints.tolist() == [[1, 2, 3, 4]]
    # Told not to, the client sends float64, and the server refuses it.
    with pytest.raises(InvalidInputError, match="has datatype FP64"):
        client.infer("simple", {"INPUT0": a, "INPUT1": a}, cast=False)


def test_a_lossy_cast_is_refused_before_anything_is_sent(client: Client) -> None:
    (before,) = client.statistics("identity_int32")
    with pytest.raises(InvalidInputError, match=r"value 1.5 at \[0, 1\] would become 1"):
        client.infer("identity_int32", {"INPUT0": [[1, 1.5, 2, 3]]})
    (after,) = client.statistics("identity_int32")
    assert after.inference_stats.fail.count == before.inference_stats.fail.count


def test_a_batch_over_max_batch_size_is_split_when_asked(client: Client) -> None:
    x = ROWS.astype(np.float32)
    with pytest.raises(InvalidInputError, match="max_batch_size"):
        client.infer("simple_config", {"INPUT0": x, "INPUT1": x})  # 20 rows, limit 8
    (before,) = client.statistics("simple_config", 2)
    out = client.infer("simple_config", {"INPUT0": x, "INPUT1": x}, split_batches=True)
    np.testing.assert_array_equal(out["OUTPUT0"], 2 * x)
    np.testing.assert_array_equal(out["OUTPUT1"], np.zeros_like(x))
    (after,) = client.statistics("simple_config", 2)
    assert after.inference_count - before.inference_count == 20
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    # A batch that fits goes as one request.
    small = client.infer("simple_config", {"INPUT0": x[:8], "INPUT1": x[:8]}, split_batches=True)
    np.testing.assert_array_equal(small["OUTPUT0"], 2 * x[:8])


def test_the_async_client_casts_and_splits_alike(protocol_server: RunningServer) -> None:
    async def main() -> dict[str, np.ndarray]:
        async with AsyncClient(protocol_server.address, timeout=30) as client:
            with pytest.raises(InvalidInputError, match="would become 1"):
                await client.infer("identity_int32", {"INPUT0": [[1, 1.5, 2, 3]]})
            return await client.infer(
                "simple_config", {"INPUT0": ROWS, "INPUT1": ROWS.tolist()}, split_batches=True
            )

    out = asyncio.run(main())
    np.testing.assert_array_equal(out["OUTPUT0"], 2 * ROWS.astype(np.float32))
