"""A pool of tokenizer processes (gateway side) and the worker's main loop.

The gateway sends texts as one UTF-8 blob plus an int32 array of byte lengths; a worker answers with the token ids
of all texts as one int32 blob plus their lengths. Large requests are split across workers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from arctic_embed.errors import InvalidInput, Unavailable
from arctic_embed.ipc import AsyncFrameStream, Frame, FrameSocket, Kind
from arctic_embed.tokenization import TextTokenizer, TokenBatch, TokenizeOptions
from arctic_embed.workers import WorkerProcess, spawn_worker, worker_socket

log = logging.getLogger(__name__)
MIN_TEXTS_PER_SPLIT = 32
# Tiny requests are tokenized in the gateway itself: a round trip to a worker costs the gateway about as much CPU
# as tokenizing a few short texts, and adds latency.
INLINE_MAX_TEXTS = 4
INLINE_MAX_CHARS = 2048


def pack_texts(texts: list[str]) -> tuple[bytes, np.ndarray]:
    encoded = [t.encode("utf-8", "replace") for t in texts]
    return b"".join(encoded), np.fromiter((len(b) for b in encoded), dtype=np.int32, count=len(encoded))


def unpack_texts(blob: memoryview, lengths: np.ndarray) -> list[str]:
    data = bytes(blob)
    out: list[str] = []
    start = 0
    for n in lengths.tolist():
        out.append(data[start:start + n].decode("utf-8"))
        start += n
    return out


@dataclass
class _Worker:
    index: int
    proc: WorkerProcess
    stream: AsyncFrameStream
    pending: dict[int, tuple[asyncio.Future, Frame]] = field(default_factory=dict)
    reader: asyncio.Task | None = None


class TokenizerPool:
    """K tokenizer processes; `tokenize` is safe to call from many coroutines at once."""

    def __init__(self, model_path: str, max_tokens: int, lower_case: bool, workers: int) -> None:
        self._config = {"model_path": model_path, "max_tokens": max_tokens, "lower_case": lower_case}
        self._n = max(1, workers)
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        self._closing = False
        self._inline = TextTokenizer(model_path, max_tokens, lower_case)

    @property
    def size(self) -> int:
        return self._n

    async def start(self, timeout_s: float = 60.0) -> None:
        self._workers = await asyncio.gather(*(self._start_worker(i, timeout_s) for i in range(self._n)))

    async def _start_worker(self, index: int, timeout_s: float) -> _Worker:
        proc = spawn_worker("arctic_embed.tokenizer_pool", self._config, env={"TOKENIZERS_PARALLELISM": "false"})
        stream = await AsyncFrameStream.from_socket(proc.sock)
        frame = await asyncio.wait_for(stream.recv(), timeout_s)
        if frame is None or frame.kind != Kind.READY:
            proc.kill()
            raise RuntimeError(f"tokenizer worker {index} failed to start")
        worker = _Worker(index, proc, stream)
        worker.reader = asyncio.create_task(self._read_loop(worker))
        return worker

    async def tokenize(self, texts: list[str], options: TokenizeOptions) -> TokenBatch:
        if not texts:
            return TokenBatch.from_arrays([])
        if len(texts) <= INLINE_MAX_TEXTS and sum(len(t) for t in texts) <= INLINE_MAX_CHARS:
            return self._inline.encode(texts, options)
        # Split across idle workers only: under load every worker is busy anyway, and one message per request
        # costs the gateway half as much as two.
        idle = sum(not w.pending for w in self._workers)
        parts = max(1, min(idle, len(texts) // MIN_TEXTS_PER_SPLIT))
        if parts == 1:
            return await self._tokenize_one(texts, options)
        step = -(-len(texts) // parts)
        chunks = [texts[i:i + step] for i in range(0, len(texts), step)]
        batches = await asyncio.gather(*(self._tokenize_one(c, options) for c in chunks))
        return TokenBatch(np.concatenate([b.ids for b in batches]), np.concatenate([b.lengths for b in batches]))

    async def _tokenize_one(self, texts: list[str], options: TokenizeOptions) -> TokenBatch:
        blob, lengths = pack_texts(texts)
        msg_id = next(self._ids)
        frame = Frame(Kind.SUBMIT, {"id": msg_id, "prefix": options.prefix, "truncate": options.truncate,
                                    "left": options.truncate_left}, [blob, lengths])
        worker = min(self._workers, key=lambda w: len(w.pending))
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        worker.pending[msg_id] = (future, frame)
        worker.stream.send(frame)
        try:
            return await future
        finally:
            worker.pending.pop(msg_id, None)

    async def _read_loop(self, worker: _Worker) -> None:
        while True:
            frame = await worker.stream.recv()
            if frame is None:
                break
            entry = worker.pending.pop(frame.meta.get("id", -1), None)
            if entry is None or entry[0].done():
                continue
            if frame.kind == Kind.RESULT:
                ids = np.frombuffer(frame.buffers[0], dtype=np.int32)
                lengths = np.frombuffer(frame.buffers[1], dtype=np.int32)
                entry[0].set_result(TokenBatch(ids, lengths))
            else:
                error = InvalidInput if frame.meta.get("type") == "InvalidInput" else RuntimeError
                entry[0].set_exception(error(frame.meta.get("message", "tokenization failed")))
        if not self._closing:
            await self._replace(worker)

    async def _replace(self, dead: _Worker) -> None:
        """A worker died: start a new one in its place and hand it the dead one's pending work."""
        log.error("tokenizer worker %d died (exit %s); restarting", dead.index, dead.proc.process.poll())
        dead.proc.kill()
        try:
            fresh = await self._start_worker(dead.index, 60.0)
        except Exception as exc:  # noqa: BLE001 - report to every waiter
            for future, _ in dead.pending.values():
                if not future.done():
                    future.set_exception(Unavailable(f"tokenizer worker could not restart: {exc}"))
            return
        self._workers[dead.index] = fresh
        for msg_id, (future, frame) in dead.pending.items():
            fresh.pending[msg_id] = (future, frame)
            fresh.stream.send(frame)

    async def close(self) -> None:
        self._closing = True
        for worker in self._workers:
            if worker.reader:
                worker.reader.cancel()
            worker.stream.close()
            worker.proc.kill()


def _serve(sock: FrameSocket, config: dict) -> None:
    tokenizer = TextTokenizer(config["model_path"], config["max_tokens"], config["lower_case"])
    sock.send(Frame(Kind.READY, {"vocab_size": tokenizer.vocab_size}))
    while (frame := sock.recv()) is not None:
        if frame.kind == Kind.SHUTDOWN:
            break
        meta = frame.meta
        try:
            texts = unpack_texts(frame.buffers[0], np.frombuffer(frame.buffers[1], dtype=np.int32))
            options = TokenizeOptions(meta["prefix"], meta["truncate"], meta["left"])
            batch = tokenizer.encode(texts, options)
            sock.send(Frame(Kind.RESULT, {"id": meta["id"]}, [batch.ids, batch.lengths]))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the request, the worker lives on
            sock.send(Frame(Kind.ERROR, {"id": meta["id"], "type": type(exc).__name__, "message": str(exc)}))


def main() -> None:
    parser = argparse.ArgumentParser(description="tokenizer worker (started by the gateway)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    sock = FrameSocket(worker_socket(args.fd))
    started = time.perf_counter()
    try:
        _serve(sock, json.loads(args.config))
    finally:
        log.debug("tokenizer worker exits after %.1fs", time.perf_counter() - started)
        sock.close()


if __name__ == "__main__":
    main()
