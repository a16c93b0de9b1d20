"""The repository layout facts shared by server, converter and bench."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxserve.layout import (
    format_input_range,
    input_range_key,
    is_valid_model_name,
    parse_input_range,
    version_folders,
)


@pytest.mark.parametrize("name", ["sentiment", "a", "m-1.v2_x", "9lives", "x" * 128])
def test_valid_model_names(name: str) -> None:
    assert is_valid_model_name(name)


@pytest.mark.parametrize("name", ["", ".hidden", "_private", "a/b", "..", "x" * 129, "sp ace"])
def test_invalid_model_names(name: str) -> None:
    assert not is_valid_model_name(name)


def test_version_folders_are_positive_integer_folders(tmp_path: Path) -> None:
    for name in ("1", "2", "10", "0", "-3", "v4", "007"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a version")
    found = version_folders(tmp_path)
    assert sorted(found) == [1, 2, 7, 10]
    assert found[10] == tmp_path / "10"
    assert version_folders(tmp_path / "missing") == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0,999", (0, 999)), ("0,", (0, None)), (",5", (None, 5)), ("-3, 3", (-3, 3))],
)
def test_input_range_round_trip(text: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_input_range(text) == expected
    assert parse_input_range(format_input_range(*expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0..999", "expected '<min>,<max>'"),
        ("1,2,3", "expected '<min>,<max>'"),
        ("a,b", "expected '<min>,<max>'"),
        (",", "at least one bound"),
        ("9,1", "minimum 9 is above its maximum 1"),
    ],
)
def test_bad_input_ranges_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_input_range(text)


def test_input_range_key_names_the_input() -> None:
    assert input_range_key("tokens") == "onnxserve.input_range.tokens"
