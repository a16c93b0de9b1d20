"""BYTES inputs as the text arrays onnxruntime takes, without a Python object per element.

onnxruntime reads an ONNX string tensor from a numpy array of ``str``
objects or from a fixed-width unicode array (dtype ``<U n``); the latter is
one buffer, which numpy can build from the request's bytes in bulk. So a raw
BYTES input is decoded as:

1. the frames (:func:`onnxserve.protocol.codec.bytes_tensor_frames`): each
   element's start and length, as two int64 arrays;
2. the elements' bytes gathered into one buffer, checked as UTF-8 in one
   ``bytes.decode`` (each element must be text, as ONNX strings are: the
   whole buffer decodes, and no element starts inside another's character);
3. the code points (UTF-32) scattered into a ``(count, longest)`` array, seen
   as ``<U longest``.

Step 3 is taken when that array stays within :data:`MAX_WIDENING` times the
request's own bytes (and no element holds a NUL, which fixed-width strings
cannot keep at their end); otherwise (one long element among many short
ones) the elements become ``str`` objects, sliced from the one decoded text.

Measured on the 2-core machine (busy): 16M empty elements (64 MiB) took 19 s
and 4.4 GiB on the event loop before, one object per element; as a ``<U1``
array they take a fraction of a second and 64 MiB. The service runs large
BYTES decodes on a thread besides (``onnxserve.server.service``), so that
health probes keep answering while the general framing loop runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxserve.protocol import codec
from onnxserve.server.errors import InvalidInput

#: The fixed-width array may take at most this many times the request's bytes.
MAX_WIDENING = 4
_CONTINUATION_MASK = 0xC0
_CONTINUATION = 0x80


def raw_text_tensor(
    raw: bytes | memoryview, shape: Sequence[int], count: int, name: str
) -> np.ndarray:
    """A raw BYTES input as text of ``shape``: ``<U n`` where compact, else ``str`` objects."""
    try:
        starts, lengths = codec.bytes_tensor_frames(raw, count)
    except codec.CodecError as exc:
        raise InvalidInput(f"input '{name}': {exc}") from None
    buffer = np.frombuffer(raw, dtype=np.uint8)
    if count and bool((lengths == lengths[0]).all()):
        # One length for all: the elements are columns of a (count, 4 + length) view.
        rows = buffer.reshape(count, -1)[:, 4:]
        if not rows.size:
            return np.zeros(tuple(shape), dtype="<U1")
        if int(rows.max()) < 0x80 and bool((rows[:, -1] != 0).all()):
            return rows.astype(np.uint32).view(f"<U{rows.shape[1]}").reshape(tuple(shape))
    # Every byte that is not a length prefix, in order: the elements, end to end.
    payload = np.ones(len(buffer), dtype=bool)
    for k in range(1, 5):
        payload[starts - k] = False
    data = buffer[payload]
    del payload
    # Where each element starts in ``data``: its start less the prefixes up to it.
    data_starts = starts - 4 * np.arange(1, len(starts) + 1, dtype=np.int64)
    del starts
    ascii_only = not data.size or int(data.max()) < 0x80
    text = "" if ascii_only else _checked_text(data, data_starts, lengths, name)
    if ascii_only:
        char_starts, char_lengths = data_starts, lengths
    else:
        # A character starts at every byte that is not a continuation byte.
        first_bytes = (data & _CONTINUATION_MASK) != _CONTINUATION
        before = np.concatenate(([0], np.cumsum(first_bytes, dtype=np.int64)))
        char_starts = before[data_starts]
        char_lengths = before[data_starts + lengths] - char_starts
        del before
    width = max(1, int(char_lengths.max()) if count else 1)
    compact = count * width * 4 <= MAX_WIDENING * max(len(raw), 64)
    if compact and not bool((data == 0).any()):
        codes = data if ascii_only else np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        cells = np.zeros((count, width), dtype=np.uint32)
        cells[np.arange(width) < char_lengths[:, None]] = codes
        return cells.view(f"<U{width}").reshape(tuple(shape))
    if ascii_only:
        text = data.tobytes().decode("ascii")
    flat = np.empty(count, dtype=object)
    flat[:] = [
        text[start : start + length]
        for start, length in zip(char_starts.tolist(), char_lengths.tolist(), strict=True)
    ]
    return flat.reshape(tuple(shape))


def _checked_text(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, name: str) -> str:
    """The elements' bytes as one str; InvalidInput naming the first element that is not text."""
    try:
        text = data.tobytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = int(np.searchsorted(starts, exc.start, side="right")) - 1
        raise _not_text(name, max(bad, 0)) from None
    nonempty = lengths > 0
    inside = (data[starts[nonempty]] & _CONTINUATION_MASK) == _CONTINUATION
    if bool(inside.any()):
        # An element starts inside a character: the one before it ends mid-character.
        split = int(starts[nonempty][int(np.argmax(inside))])
        raise _not_text(name, int(np.searchsorted(starts, split - 1, side="right")) - 1)
    return text


def _not_text(name: str, index: int) -> InvalidInput:
    return InvalidInput(
        f"input '{name}' element {index} is not valid UTF-8; ONNX string tensors hold UTF-8 text"
    )
