import asyncio
import socket
import threading

import numpy as np

from arctic_embed.ipc import AsyncFrameStream, Frame, FrameSocket, Kind


def test_frames_round_trip_between_blocking_and_async_sides() -> None:
    parent, child = socket.socketpair()
    ids = np.arange(100_000, dtype=np.int32)
    worker = FrameSocket(child)

    def echo() -> None:
        while (frame := worker.recv()) is not None:
            worker.send(Frame(Kind.RESULT, {"echo": frame.meta}, [bytes(b) for b in reversed(frame.buffers)]))

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()

    async def main() -> None:
        parent.setblocking(False)
        stream = await AsyncFrameStream.from_socket(parent)
        for i in range(3):
            stream.send(Frame(Kind.SUBMIT, {"id": i, "text": "é"}, [ids, b"", b"xyz"]))
        for i in range(3):
            frame = await stream.recv()
            assert frame is not None and frame.kind == Kind.RESULT
            assert frame.meta == {"echo": {"id": i, "text": "é"}}
            assert bytes(frame.buffers[0]) == b"xyz" and bytes(frame.buffers[1]) == b""
            assert np.array_equal(np.frombuffer(frame.buffers[2], np.int32), ids)
        stream.close()

    asyncio.run(main())
    thread.join(5)
    assert not thread.is_alive()
