"""Framed messages between the gateway and its worker processes (tokenizers, replicas) over a stream socket.

A frame is a kind byte, a small JSON header and any number of raw byte buffers (token ids as int32, embeddings as
their output dtype). Buffers travel as they are: nothing on the path turns ids or floats into Python objects.

Wire layout (little-endian): u64 body_len | u8 kind | u32 meta_len | u32 n_buffers | u64 buffer_len * n_buffers |
meta JSON | buffers.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

_PREFIX = struct.Struct("<Q")
_HEAD = struct.Struct("<BII")
Buffer = bytes | bytearray | memoryview


class Kind(IntEnum):
    READY = 1
    SUBMIT = 2
    RESULT = 3
    ERROR = 4
    CANCEL = 5
    PING = 6
    PONG = 7
    SHUTDOWN = 8
    STARTED = 9
    """Replica → gateway: the work ids of the engine batch it is about to run (crash blame, see replicas.py)."""


@dataclass
class Frame:
    kind: Kind
    meta: dict[str, Any] = field(default_factory=dict)
    buffers: list[Buffer] = field(default_factory=list)


def _encode(frame: Frame) -> list[Buffer]:
    meta = json.dumps(frame.meta, separators=(",", ":")).encode()
    lengths = [memoryview(b).nbytes for b in frame.buffers]
    head = _HEAD.pack(int(frame.kind), len(meta), len(lengths)) + struct.pack(f"<{len(lengths)}Q", *lengths)
    body_len = len(head) + len(meta) + sum(lengths)
    return [_PREFIX.pack(body_len), head, meta, *frame.buffers]


def _decode(body: memoryview) -> Frame:
    kind, meta_len, n_buffers = _HEAD.unpack_from(body, 0)
    offset = _HEAD.size
    lengths = struct.unpack_from(f"<{n_buffers}Q", body, offset)
    offset += 8 * n_buffers
    meta = json.loads(bytes(body[offset:offset + meta_len]))
    offset += meta_len
    buffers: list[Buffer] = []
    for length in lengths:
        buffers.append(body[offset:offset + length])
        offset += length
    return Frame(Kind(kind), meta, buffers)


class FrameSocket:
    """Blocking side (inside worker processes). `send` may be called from several threads."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()

    def send(self, frame: Frame) -> None:
        parts = _encode(frame)
        with self._send_lock:
            for part in parts:
                self._sock.sendall(part)

    def recv(self) -> Frame | None:
        """The next frame, or None when the peer closed the connection."""
        prefix = self._recv_exactly(_PREFIX.size)
        if prefix is None:
            return None
        (body_len,) = _PREFIX.unpack(prefix)
        body = self._recv_exactly(body_len)
        if body is None:
            return None
        return _decode(memoryview(body))

    def _recv_exactly(self, n: int) -> bytearray | None:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._sock.recv_into(view[got:], n - got)
            if k == 0:
                return None
            got += k
        return buf

    def close(self) -> None:
        self._sock.close()


class AsyncFrameStream:
    """asyncio side (inside the gateway)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def from_socket(cls, sock: socket.socket) -> AsyncFrameStream:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=2**20)
        return cls(reader, writer)

    def send(self, frame: Frame) -> None:
        """Queue a frame for sending (never blocks; the transport buffers)."""
        self._writer.writelines(_encode(frame))

    async def drain(self) -> None:
        await self._writer.drain()

    async def recv(self) -> Frame | None:
        try:
            prefix = await self._reader.readexactly(_PREFIX.size)
            (body_len,) = _PREFIX.unpack(prefix)
            body = await self._reader.readexactly(body_len)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return _decode(memoryview(body))

    def close(self) -> None:
        self._writer.close()
