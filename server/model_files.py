"""The files a model version uses, checked before onnxruntime opens any of them.

Two checks, both run at load time (not at every repository poll):

- ONNX external data (CVE-2024-27318 was a path traversal through it): every
  ``location`` a tensor names must be relative and resolve, symlinks
  followed, to a file inside the model repository. onnxruntime refuses
  locations outside the model's folder too, but its message carries the
  server's absolute paths, and older builds did not check at all.
- An optional ``sha256sums`` file in the version folder (``sha256sum``'s own
  format), which must list the model file and every external data file; each
  listed file must match its digest.

The external data locations are read by walking the protobuf wire format of a
memory-mapped model file: ``onnx.load`` would parse the whole model, inline
weights included, into memory before any check, and onnx's helper that lists
a model's tensors is private and skips sparse initializers; the walk skips
over each tensor's bytes, so it reads only the small headers of a large model.
The same walk gives the graph without its weights
(:func:`graph_bytes_without_weights`), which is how the server reads a graph
for what onnxruntime's metadata lacks (input ranges): a 2 GB model costs the
size of its nodes, never of its weights.
The field numbers come from onnx.proto (checked against the onnx package in
the tests, which also compare the walk with onnx's own reading).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import re
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TypeVar

from onnxserve.layout import CHECKSUMS_FILENAME
from onnxserve.server.errors import ConfigError

# Message kinds of onnx.proto that can hold a tensor, and for each the
# length-delimited fields (by number) that lead to another such message.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _FUNCTION, _TENSOR, _SPARSE = range(7)
CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 25: _FUNCTION},  # graph, functions
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},  # node, initializer, sparse_initializer
    _NODE: {5: _ATTRIBUTE},  # attribute
    # t, g, tensors, graphs, sparse_tensor, sparse_tensors
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},  # node, attribute_proto
    _SPARSE: {1: _TENSOR, 2: _TENSOR},  # values, indices
    _TENSOR: {},
}
TENSOR_NAME = 8  # TensorProto.name
# TensorProto's value fields: float_data, int32_data, string_data, int64_data, raw_data,
# double_data, uint64_data.
TENSOR_DATA_FIELDS = frozenset({4, 5, 6, 7, 9, 10, 11})
TENSOR_EXTERNAL_DATA = 13  # TensorProto.external_data (StringStringEntryProto)
ENTRY_KEY, ENTRY_VALUE = 1, 2  # StringStringEntryProto.key, .value
_LENGTH_DELIMITED, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5
_DIGEST_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


T = TypeVar("T")


class _Malformed(Exception):
    pass


def _varint(buffer: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(buffer) or shift > 63:
            raise _Malformed
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def _all_fields(
    buffer: memoryview, start: int, end: int
) -> Iterator[tuple[int, int, int, int, int]]:
    """(key, field start, value start, value end) of every field of one message, in order."""
    position = start
    while position < end:
        field_start = position
        key, position = _varint(buffer, position)
        wire = key & 7
        value_start = position
        if wire == _VARINT:
            _, position = _varint(buffer, position)
        elif wire == _FIXED64:
            position += 8
        elif wire == _FIXED32:
            position += 4
        elif wire == _LENGTH_DELIMITED:
            length, value_start = _varint(buffer, position)
            position = value_start + length
        else:  # groups: not used by onnx.proto
            raise _Malformed
        if position > end:
            raise _Malformed
        yield key, field_start, value_start, position


def _fields(buffer: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of one message."""
    for key, _, value_start, value_end in _all_fields(buffer, start, end):
        if key & 7 == _LENGTH_DELIMITED:
            yield key >> 3, value_start, value_end


def _text(buffer: memoryview, start: int, end: int) -> str:
    return bytes(buffer[start:end]).decode("utf-8", errors="replace")


def _mapped(model_file: Path, read: Callable[[memoryview], T], empty: T) -> T:
    """``read`` on a read-only memory map of the file; ``empty`` for an empty or malformed one."""
    with open(model_file, "rb") as handle:
        try:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return empty
    with mapped:
        buffer = memoryview(mapped)
        try:
            return read(buffer)
        except _Malformed:
            return empty
        finally:
            buffer.release()


def external_data_locations(model_file: Path) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor that keeps its data in another file.

    A file that is not a well-formed protobuf is left to onnxruntime to refuse.
    """
    return _mapped(model_file, _walk, [])


def graph_bytes_without_weights(model_file: Path) -> bytes:
    """The model file's bytes with every tensor's data left out: a valid ModelProto.

    What the server reads a graph through (input ranges): the nodes, the
    inputs and outputs, and each initializer's name, type and dims, but none of
    its values, so a model of any size costs the size of its graph. The file
    is memory-mapped and walked; the weights' pages are skipped, never read.
    ``b""`` for a file that is not a well-formed protobuf.
    """
    return _mapped(model_file, lambda buffer: _strip(buffer, _MODEL, 0, len(buffer)), b"")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _strip(buffer: memoryview, kind: int, start: int, end: int) -> bytes:
    out = bytearray()
    children = CHILDREN[kind]
    for key, field_start, value_start, value_end in _all_fields(buffer, start, end):
        number = key >> 3
        if kind == _TENSOR and number in TENSOR_DATA_FIELDS:
            continue
        if key & 7 == _LENGTH_DELIMITED and number in children:
            inner = _strip(buffer, children[number], value_start, value_end)
            out += _encode_varint(key) + _encode_varint(len(inner)) + inner
        else:
            out += buffer[field_start:value_end]
    return bytes(out)


def _walk(buffer: memoryview) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    stack = [(_MODEL, 0, len(buffer))]
    while stack:
        kind, start, end = stack.pop()
        children = CHILDREN[kind]
        name, location = "", None
        for number, field_start, field_end in _fields(buffer, start, end):
            if kind == _TENSOR and number == TENSOR_NAME:
                name = _text(buffer, field_start, field_end)
            elif kind == _TENSOR and number == TENSOR_EXTERNAL_DATA:
                entry = {n: (s, e) for n, s, e in _fields(buffer, field_start, field_end)}
                if ENTRY_KEY in entry and _text(buffer, *entry[ENTRY_KEY]) == "location":
                    location = _text(buffer, *entry.get(ENTRY_VALUE, (0, 0)))
            elif number in children:
                stack.append((children[number], field_start, field_end))
        if location is not None:
            found.append((name, location))
    return found


def _is_absolute(location: str) -> bool:
    return PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute()


def resolve_inside(path: Path, root: Path) -> Path | None:
    """``path`` resolved (symlinks followed) if it exists inside ``root``, else None."""
    try:
        resolved = path.resolve(strict=True)
        resolved.relative_to(root)
    except (ValueError, OSError):
        return None
    return resolved


def check_external_data(model_file: Path, root: Path, where: str) -> list[Path]:
    """The external data files of ``model_file``, each proven inside ``root``.

    Raises ConfigError naming the tensor and its location as the model wrote
    it (never the server's paths). ``where`` names the model version.
    """
    files: list[Path] = []
    for tensor, location in external_data_locations(model_file):
        if _is_absolute(location):
            raise ConfigError(
                f"{where}: tensor '{tensor}' names an absolute external data location; "
                "locations must be relative to the model file and stay inside the repository"
            )
        candidate = model_file.parent / location
        resolved = resolve_inside(candidate, root)
        if resolved is None:
            if (
                candidate.exists()
                or candidate.is_symlink()
                or ".." in PurePosixPath(location).parts
            ):
                raise ConfigError(
                    f"{where}: tensor '{tensor}' keeps its data outside the model repository "
                    f"(external data location '{location}'); refused"
                )
            raise ConfigError(
                f"{where}: tensor '{tensor}' keeps its data in '{location}', which is missing"
            )
        if not resolved.is_file():
            raise ConfigError(f"{where}: external data location '{location}' is not a file")
        files.append(resolved)
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_checksums(version_folder: Path, used: list[Path], root: Path, where: str) -> bool:
    """Verify the version folder's ``sha256sums`` if it has one; whether it had one.

    ``used``: the resolved files the model reads (model file, external data),
    each of which the list must name.
    """
    listing = version_folder / CHECKSUMS_FILENAME
    if not listing.exists():
        return False
    if resolve_inside(listing, root) is None:
        raise ConfigError(f"{where}: {CHECKSUMS_FILENAME} leads outside the repository")
    expected: dict[Path, str] = {}
    for number, line in enumerate(listing.read_text(errors="replace").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _DIGEST_LINE.match(line.strip())
        if match is None:
            raise ConfigError(
                f"{where}: {CHECKSUMS_FILENAME} line {number} is not '<sha256 hex>  <file>'"
            )
        digest, name = match.groups()
        resolved = resolve_inside(version_folder / name, root)
        if resolved is None:
            raise ConfigError(
                f"{where}: {CHECKSUMS_FILENAME} lists '{name}', which is missing or outside "
                "the repository"
            )
        expected[resolved] = digest.lower()
    for path in used:
        if path not in expected:
            raise ConfigError(
                f"{where}: {CHECKSUMS_FILENAME} does not list '{path.name}', which the model uses"
            )
    for path, digest in expected.items():
        if _sha256(path) != digest:
            raise ConfigError(
                f"{where}: '{path.name}' does not match its digest in {CHECKSUMS_FILENAME}; "
                "refusing to load it"
            )
    return True


def model_files_bytes(model_file: Path) -> int:
    """The size of the model file and of every external data file it names (each once)."""
    total = model_file.stat().st_size
    for location in {location for _, location in external_data_locations(model_file)}:
        # A missing file: check_external_data refuses it before onnxruntime opens the model.
        with contextlib.suppress(OSError):
            total += (model_file.parent / location).stat().st_size
    return total


def check_model_files(model_file: Path, root: Path, where: str) -> None:
    """Every check above, for one version's model file; raises ConfigError."""
    resolved = resolve_inside(model_file, root)
    if resolved is None:
        raise ConfigError(f"{where} leads outside the repository")
    used = [resolved, *check_external_data(model_file, root, where)]
    check_checksums(model_file.parent, used, root, where)


MODEL_OPSET_IMPORT = 8  # ModelProto.opset_import (OperatorSetIdProto)
OPSET_DOMAIN = 1  # OperatorSetIdProto.domain


def opset_domains(model_file: Path) -> set[str]:
    """The operator domains a model file imports ('' is ONNX's own), read from the
    top-level ``opset_import`` fields only: the graph's bytes are skipped, not parsed.
    An unreadable file gives none (onnxruntime refuses it with its own message)."""
    try:
        with open(model_file, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return set()
    with mapped:
        buffer = memoryview(mapped)
        try:
            domains: set[str] = set()
            for number, start, end in _fields(buffer, 0, len(buffer)):
                if number != MODEL_OPSET_IMPORT:
                    continue
                domain = ""
                for inner, s, e in _fields(buffer, start, end):
                    if inner == OPSET_DOMAIN:
                        domain = _text(buffer, s, e)
                domains.add(domain)
            return domains
        except _Malformed:
            return set()
        finally:
            buffer.release()
