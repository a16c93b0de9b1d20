"""The frames the server and a Python model's process exchange over one socket pair.

A frame is one pickled message (protocol 5) whose numpy arrays travel out of
band: ``<u32 header length><header: u64 payload length, u32 buffer count,
u64 per buffer><payload><buffers...>`` (each buffer 64-byte aligned in the
body), written with one ``sendmsg`` of all the parts and read with one
``recv_into`` of the whole body, which the arrays then view: an array is
copied once into the kernel and once out of it, never through pickle, and a
batch of 64 small requests costs two reads, not 66. Arrays arrive writable.

Why a socket pair and not shared memory, as Triton's stub uses: measured with
benchmarks/python_models.py (2026-12-01, on this 2-core machine while other
jobs kept its load average at 9 to 16, so CPU time of the server process, the
median of 300 batches of 64 one-row requests, round trip minus ``execute``):
200 us at 4 bytes a row, 250 us at 200 bytes, 315 us at 4 KiB (256 KiB each
way), 2.7 ms at 64 KiB (4 MiB each way), 63 ms at 1 MiB (64 MiB each way).
Up to a few MiB per batch (what pre- and post-processing steps pass) the cost
is the framing of 64 requests (their dicts, pickling, the array headers), not
the bytes, and shared memory would save only the copies; it would need a
region manager, growth and cleanup after a crash, where a socket closes by
itself when either side dies (which is also how a crash is noticed). Batches
of tens of MiB would gain from shared memory (about 1 GB/s here through the
socket): that is the case to build it for.

Messages are plain tuples and dicts of str, int, float, bytes and numpy
arrays. The server reads frames with ``restricted=True``: only numpy's own
constructors may be named by a frame, so a model process cannot make the
server run code by what it sends (pickle would otherwise call any function it
names). A frame never grows past :data:`MAX_FRAME_BYTES`.
"""

from __future__ import annotations

import io
import pickle
import socket
import struct
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

# A frame larger than this is refused (a bug or a corrupt stream, not a batch).
MAX_FRAME_BYTES = 1 << 34
_LENGTH = struct.Struct("<I")
# Arrays start at multiples of this in a frame's body (cache lines; any dtype's alignment).
ALIGNMENT = 64
_PADDING = bytes(ALIGNMENT)


# What a restricted reader lets a frame name: numpy arrays, dtypes and scalars.
_ALLOWED = frozenset(
    {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "bytearray"),
        ("builtins", "complex"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a frame may not name {module}.{name}")


class ChannelClosed(Exception):
    """The other side closed the socket (its process exited) or sent a broken frame."""


# Numeric kinds whose arrays travel as (dtype, shape, raw buffer): bool, ints, floats.
_PACKED_KINDS = frozenset("biuf")


def pack(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Tensors by name, in the form a frame carries them cheaply.

    A numeric array becomes ``(dtype, shape, PickleBuffer)``: its bytes go out
    of band and pickling it costs a tuple, where numpy's own pickling took
    about 3 us per array (measured: 64 one-row arrays, 170 us against 25 us).
    Others (BYTES object arrays, bfloat16) are pickled as arrays.
    """
    packed: dict[str, Any] = {}
    for name, array in arrays.items():
        value = np.asarray(array)
        if value.dtype.kind in _PACKED_KINDS and value.dtype.isnative:
            value = np.ascontiguousarray(value)
            packed[name] = (value.dtype.str, value.shape, pickle.PickleBuffer(value))
        else:
            packed[name] = value
    return packed


def unpack(packed: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of :func:`pack`, viewing the frame's buffer (writable, no copy)."""
    arrays: dict[str, np.ndarray] = {}
    for name, value in packed.items():
        if isinstance(value, tuple):
            dtype, shape, buffer = value
            arrays[name] = np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)
        else:
            arrays[name] = value
    return arrays


class Channel:
    """One end of the socket pair: ``send(message)`` and ``receive()``, thread-safe sends."""

    def __init__(self, sock: socket.socket, restricted: bool = False) -> None:
        self._sock = sock
        self._restricted = restricted
        self._send_lock = threading.Lock()

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, message: Any) -> None:
        buffers: list[pickle.PickleBuffer] = []
        payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
        raws = [buffer.raw() for buffer in buffers]
        header = struct.pack(
            f"<QI{len(raws)}Q", len(payload), len(raws), *(raw.nbytes for raw in raws)
        )
        parts: list[bytes | memoryview] = [_LENGTH.pack(len(header)), header, payload]
        offset = len(payload)
        for raw in raws:  # each array starts ALIGNMENT-aligned in the frame's body
            padding = -offset % ALIGNMENT
            if padding:
                parts.append(_PADDING[:padding])
            parts.append(raw)
            offset += padding + raw.nbytes
        with self._send_lock:
            try:
                self._send_all(parts)
            except OSError as exc:
                raise ChannelClosed(f"the other process went away ({exc.strerror})") from None
            finally:
                for raw in raws:  # our views; the PickleBuffers belong to the message
                    raw.release()

    def _send_all(self, parts: list[bytes | memoryview]) -> None:
        total = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
        sent = self._sock.sendmsg(parts)
        if sent == total:
            return
        # A large frame: the kernel took part of it; send the rest piece by piece.
        for part in parts:
            view = memoryview(part).cast("B")
            if sent >= view.nbytes:
                sent -= view.nbytes
                continue
            self._sock.sendall(view[sent:])
            sent = 0

    def _receive_into(self, buffer: memoryview) -> None:
        received = 0
        size = buffer.nbytes
        while received < size:
            try:
                count = self._sock.recv_into(buffer[received:], size - received)
            except OSError as exc:
                raise ChannelClosed(f"the other process went away ({exc.strerror})") from None
            if count == 0:
                raise ChannelClosed("the other process closed its end")
            received += count

    def _receive(self, size: int) -> bytearray:
        data = bytearray(size)
        self._receive_into(memoryview(data))
        return data

    def receive(self) -> Any:
        (header_length,) = _LENGTH.unpack(self._receive(_LENGTH.size))
        header = self._receive(header_length)
        payload_length, count = struct.unpack_from("<QI", header)
        lengths = struct.unpack_from(f"<{count}Q", header, 12)
        if payload_length + sum(lengths) > MAX_FRAME_BYTES:
            raise ChannelClosed("the other process sent a frame larger than any batch")
        # The payload and every array in one read, into one buffer the arrays then view.
        starts = []
        offset = payload_length
        for length in lengths:
            offset += -offset % ALIGNMENT
            starts.append(offset)
            offset += length
        body = self._receive(offset)
        view = memoryview(body)
        payload = view[:payload_length]
        buffers = [
            view[start : start + length] for start, length in zip(starts, lengths, strict=True)
        ]
        try:
            if self._restricted:
                return _RestrictedUnpickler(io.BytesIO(payload), buffers=buffers).load()
            return pickle.loads(payload, buffers=buffers)
        except Exception as exc:  # a class the other side cannot import, a corrupt frame
            raise ChannelClosed(f"a message could not be read: {type(exc).__name__}") from None

    def set_timeout(self, seconds: float | None) -> None:
        """Blocking reads and writes give up (ChannelClosed) after ``seconds``."""
        self._sock.settimeout(seconds)

    def close(self) -> None:
        self._sock.close()
