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
import os
import time
from dataclasses import dataclass, field

import numpy as np

from arctic_embed import metrics
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
# Requests past this many characters are tokenized in chunks of about this size (fairness, fast cancel).
CHUNK_CHARS = 200_000
FAULT_EXIT_ENV = "ARCTIC_EMBED_FAULT_TOKENIZER_EXIT_ON"
"""Fault injection for crash-safety tests: a worker exits when a text contains this string (unset in production)."""


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


class WorkerDied(Exception):
    """The worker holding this piece of work died. `charged`: it was the piece the worker was running."""

    def __init__(self, charged: bool) -> None:
        super().__init__("tokenizer worker died")
        self.charged = charged


@dataclass
class _Worker:
    index: int
    proc: WorkerProcess
    stream: AsyncFrameStream
    pending: dict[int, asyncio.Future] = field(default_factory=dict)
    """Unanswered frames in the order they were sent: the worker answers in order, so the first is the one running."""
    reader: asyncio.Task | None = None
    alive: bool = True


class TokenizerPool:
    """K tokenizer processes; `tokenize` is safe to call from many coroutines at once.

    Crash safety: a worker that dies is taken out of routing at once and restarted with backoff; the work it held
    is sent to another worker. Only the piece it was running when it died is charged a retry: after `max_retries`
    such deaths that request fails alone with INVALID_ARGUMENT (a poison input), everything else goes on.
    Fairness and cancellation: requests over CHUNK_CHARS characters are cut into chunks of about that size and at
    most one chunk per worker is outstanding, so small requests get in between and a cancelled request stops
    after the chunks already running (tens of milliseconds)."""

    def __init__(self, model_path: str, max_tokens: int, lower_case: bool, workers: int, max_retries: int = 2,
                 backoff_max_s: float = 30.0, start_timeout_s: float = 60.0) -> None:
        self._config = {"model_path": model_path, "max_tokens": max_tokens, "lower_case": lower_case}
        self._n = max(1, workers)
        self._slots: list[_Worker | None] = []
        self._ids = itertools.count(1)
        self._closing = False
        self._inline = TextTokenizer(model_path, max_tokens, lower_case)
        self._max_retries = max_retries
        self._backoff_max_s = backoff_max_s
        self._start_timeout_s = start_timeout_s
        self._available = asyncio.Event()
        self._background: set[asyncio.Task] = set()
        self.restarts = 0

    @property
    def size(self) -> int:
        return self._n

    @property
    def n_alive(self) -> int:
        return sum(w is not None and w.alive for w in self._slots)

    async def start(self) -> None:
        self._slots = list(await asyncio.gather(*(self._start_worker(i) for i in range(self._n))))
        self._available.set()
        metrics.TOKENIZER_WORKERS_ALIVE.set(self.n_alive)

    async def _start_worker(self, index: int) -> _Worker:
        proc = spawn_worker("arctic_embed.tokenizer_pool", self._config, env={"TOKENIZERS_PARALLELISM": "false"})
        try:
            stream = await AsyncFrameStream.from_socket(proc.sock)
            frame = await asyncio.wait_for(stream.recv(), self._start_timeout_s)
        except (asyncio.TimeoutError, OSError):
            frame = None
        if frame is None or frame.kind != Kind.READY:
            proc.kill()
            raise RuntimeError(f"tokenizer worker {index} did not start")
        worker = _Worker(index, proc, stream)
        worker.reader = asyncio.create_task(self._read_loop(worker))
        return worker

    # ------------------------------------------------------------------------------------------- requests
    async def tokenize(self, texts: list[str], options: TokenizeOptions) -> TokenBatch:
        if not texts:
            return TokenBatch.from_arrays([])
        chars = sum(len(t) for t in texts)
        if len(texts) <= INLINE_MAX_TEXTS and chars <= INLINE_MAX_CHARS:
            return self._encode_inline(texts, options)
        if chars > CHUNK_CHARS:
            return await self._tokenize_chunked(texts, options)
        # Split across idle workers only: under load every worker is busy anyway, and one message per request
        # costs the gateway half as much as two.
        idle = sum(w is not None and w.alive and not w.pending for w in self._slots)
        parts = max(1, min(idle, len(texts) // MIN_TEXTS_PER_SPLIT))
        if parts == 1:
            return await self._tokenize_one(texts, options)
        step = -(-len(texts) // parts)
        chunks = [texts[i:i + step] for i in range(0, len(texts), step)]
        return _concat(await asyncio.gather(*(self._tokenize_one(c, options) for c in chunks)))

    def _encode_inline(self, texts: list[str], options: TokenizeOptions) -> TokenBatch:
        try:
            return self._inline.encode(texts, options)
        except InvalidInput:
            raise
        except BaseException as exc:  # a Rust panic surfaces as PanicException (a BaseException)
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
            raise InvalidInput("an input could not be tokenized") from exc

    async def _tokenize_chunked(self, texts: list[str], options: TokenizeOptions) -> TokenBatch:
        chunks: list[list[str]] = [[]]
        size = 0
        for text in texts:
            if size and size + len(text) > CHUNK_CHARS:
                chunks.append([])
                size = 0
            chunks[-1].append(text)
            size += len(text)
        at_once = asyncio.Semaphore(self._n)

        async def one(chunk: list[str]) -> TokenBatch:
            async with at_once:
                return await self._tokenize_one(chunk, options)

        tasks = [asyncio.create_task(one(c)) for c in chunks]
        try:
            return _concat(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    async def _tokenize_one(self, texts: list[str], options: TokenizeOptions) -> TokenBatch:
        blob, lengths = pack_texts(texts)
        meta = {"prefix": options.prefix, "truncate": options.truncate, "left": options.truncate_left}
        charged = 0
        while True:
            worker = await self._pick()
            msg_id = next(self._ids)
            future: asyncio.Future = asyncio.get_running_loop().create_future()
            worker.pending[msg_id] = future
            try:
                worker.stream.send(Frame(Kind.SUBMIT, {"id": msg_id, **meta}, [blob, lengths]))
                return await future
            except WorkerDied as died:
                if died.charged:
                    charged += 1
                    if charged > self._max_retries:
                        raise InvalidInput(f"an input of this request stopped the tokenizer {charged} times; "
                                           "it is not tried again") from None
            except (RuntimeError, ConnectionError):  # the transport closed under us: the worker is gone
                worker.pending.pop(msg_id, None)
                self._on_dead(worker)
            finally:
                worker.pending.pop(msg_id, None)

    async def _pick(self) -> _Worker:
        while True:
            live = [w for w in self._slots if w is not None and w.alive]
            if live:
                return min(live, key=lambda w: len(w.pending))
            if self._closing:
                raise Unavailable("server is shutting down")
            self._available.clear()
            try:
                await asyncio.wait_for(self._available.wait(), self._start_timeout_s)
            except asyncio.TimeoutError:
                raise Unavailable("no tokenizer worker is running; retry later") from None

    # ------------------------------------------------------------------------------------------- workers
    async def _read_loop(self, worker: _Worker) -> None:
        while True:
            frame = await worker.stream.recv()
            if frame is None:
                break
            future = worker.pending.pop(frame.meta.get("id", -1), None)
            if future is None or future.done():
                continue
            if frame.kind == Kind.RESULT:
                ids = np.frombuffer(frame.buffers[0], dtype=np.int32)
                lengths = np.frombuffer(frame.buffers[1], dtype=np.int32)
                future.set_result(TokenBatch(ids, lengths))
            elif frame.meta.get("type") == "InvalidInput":
                future.set_exception(InvalidInput(frame.meta.get("message", "an input could not be tokenized")))
            else:
                log.error("tokenizer worker %d: %s", worker.index, frame.meta.get("message"))
                future.set_exception(InvalidInput("an input could not be tokenized"))
        self._on_dead(worker)

    def _on_dead(self, worker: _Worker) -> None:
        """Take a dead worker out of routing (once), fail its pending pieces over, and restart its slot."""
        if not worker.alive or self._closing:
            return
        worker.alive = False
        log.error("tokenizer worker %d died (exit %s); %d pieces of work go to other workers", worker.index,
                  worker.proc.process.poll(), len(worker.pending))
        worker.proc.kill()
        worker.stream.close()
        for position, future in enumerate(list(worker.pending.values())):
            if not future.done():
                future.set_exception(WorkerDied(charged=position == 0))
        worker.pending.clear()
        metrics.TOKENIZER_WORKERS_ALIVE.set(self.n_alive)
        metrics.TOKENIZER_RESTARTS.inc()
        task = asyncio.create_task(self._restart(worker.index))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _restart(self, index: int) -> None:
        delay = 0.25
        while not self._closing:
            self.restarts += 1
            try:
                fresh = await self._start_worker(index)
            except Exception as exc:  # noqa: BLE001 - keep trying with backoff; the failure shows in metrics
                log.error("tokenizer worker %d could not restart (%s); next try in %.1fs", index, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max_s)
                continue
            if self._closing:
                fresh.proc.kill()
                return
            self._slots[index] = fresh
            self._available.set()
            metrics.TOKENIZER_WORKERS_ALIVE.set(self.n_alive)
            return

    async def close(self) -> None:
        self._closing = True
        self._available.set()
        for task in list(self._background):
            task.cancel()
        for worker in self._slots:
            if worker is None:
                continue
            if worker.reader:
                worker.reader.cancel()
            worker.stream.close()
            worker.proc.kill()


def _concat(batches: list[TokenBatch]) -> TokenBatch:
    if len(batches) == 1:
        return batches[0]
    return TokenBatch(np.concatenate([b.ids for b in batches]), np.concatenate([b.lengths for b in batches]))


def _serve(sock: FrameSocket, config: dict, exit_on: str = "") -> None:
    tokenizer = TextTokenizer(config["model_path"], config["max_tokens"], config["lower_case"])
    sock.send(Frame(Kind.READY, {"vocab_size": tokenizer.vocab_size}))
    while (frame := sock.recv()) is not None:
        if frame.kind == Kind.SHUTDOWN:
            break
        meta = frame.meta
        try:
            texts = unpack_texts(frame.buffers[0], np.frombuffer(frame.buffers[1], dtype=np.int32))
            if exit_on and any(exit_on in t for t in texts):
                os._exit(3)  # fault injection (tests, load_tests/reliability): a poison input
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
        _serve(sock, json.loads(args.config), os.environ.get(FAULT_EXIT_ENV, ""))
    finally:
        log.debug("tokenizer worker exits after %.1fs", time.perf_counter() - started)
        sock.close()


if __name__ == "__main__":
    main()
