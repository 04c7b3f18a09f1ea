"""A replica process: one engine on one device, fed by the gateway over a frame socket.

A reader thread takes SUBMIT / CANCEL / PING frames off the socket; the main thread forms token-budget batches,
runs the engine, encodes the outputs and sends one RESULT per work item when its last sequence is done.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from arctic_embed.batching import BatchSlice, TokenBudgetQueue, WorkItem
from arctic_embed.config import ReplicaConfig
from arctic_embed.encoding import EncodedBatch, OutputOptions, PendingBatch, encode_batch_async
from arctic_embed.engines import Engine, create_engine
from arctic_embed.ipc import Frame, FrameSocket, Kind
from arctic_embed.model_files import read_model_spec
from arctic_embed.workers import worker_socket

log = logging.getLogger("arctic_embed.replica")
PIPELINE_DEPTH = 2
FAULT_EXIT_ENV = "ARCTIC_EMBED_FAULT_REPLICA_EXIT_ON_ID"
"""Fault injection for crash-safety tests: the process exits when a batch holds this token id (unset normally)."""


@dataclass
class _Pending:
    """Output of a work item collected across the batches it was spread over."""

    item: WorkItem
    parts: list[memoryview] = field(default_factory=list)
    scales: list[memoryview] = field(default_factory=list)
    inference_ns: int = 0
    batches: list[tuple[int, int]] = field(default_factory=list)
    """(sequences, tokens) of the engine batches this item opened (for the gateway's batch-size metrics)."""


class Replica:
    def __init__(self, sock: FrameSocket, config: ReplicaConfig, engine: Engine, fault_exit_id: int = -1) -> None:
        self._fault_exit_id = fault_exit_id
        self._sock = sock
        self._config = config
        self._engine = engine
        self._queue = TokenBudgetQueue(config.max_batch_tokens, config.max_batch_size)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # ----------------------------------------------------------------------------------------------- inbound
    def read_loop(self) -> None:
        try:
            while (frame := self._sock.recv()) is not None:
                if frame.kind == Kind.SUBMIT:
                    self._submit(frame)
                elif frame.kind == Kind.CANCEL:
                    with self._lock:
                        self._pending.pop(frame.meta["id"], None)
                    self._queue.cancel(frame.meta["id"])
                elif frame.kind == Kind.PING:
                    self._sock.send(Frame(Kind.PONG, {"id": frame.meta.get("id"), "queued": len(self._queue)}))
                elif frame.kind == Kind.SHUTDOWN:
                    break
        finally:
            self._stopping.set()
            self._queue.close()

    def _submit(self, frame: Frame) -> None:
        meta = frame.meta
        options = OutputOptions(bool(meta["normalize"]), int(meta["dimensions"]), str(meta["dtype"]))
        item = WorkItem(
            work_id=int(meta["id"]),
            ids=np.frombuffer(frame.buffers[0], dtype=np.int32),
            lengths=np.frombuffer(frame.buffers[1], dtype=np.int32),
            options=options,
            priority=int(meta.get("priority", 0)),
            isolated=bool(meta.get("isolate", False)),
        )
        with self._lock:
            self._pending[item.work_id] = _Pending(item)
        self._queue.put(item)

    # ----------------------------------------------------------------------------------------------- batches
    def run(self) -> None:
        """Launch batches back to back; a completion thread waits for each one's host copy and replies.

        On a GPU this keeps the device fed: batch N+1 is packed, copied and launched while batch N still runs.
        The completion queue is bounded, so at most PIPELINE_DEPTH batches are in flight."""
        launched: queue.Queue[tuple[list[BatchSlice], PendingBatch, int] | None] = queue.Queue(PIPELINE_DEPTH)
        completer = threading.Thread(target=self._complete_loop, args=(launched,), name="replica-complete",
                                     daemon=True)
        completer.start()
        while not self._stopping.is_set():
            batch = self._queue.take(timeout_s=0.5)
            if batch:
                self._launch(batch, launched)
        launched.put(None)
        completer.join(30)

    def _launch(self, batch: list[BatchSlice], launched: queue.Queue) -> None:
        started = time.perf_counter_ns()
        # Tell the gateway what is about to run: if this process dies now, only this work is charged a retry.
        self._sock.send(Frame(Kind.STARTED, {"ids": [s.item.work_id for s in batch]}))
        if self._fault_exit_id >= 0 and any((s.item.ids == self._fault_exit_id).any() for s in batch):
            os._exit(3)  # fault injection (tests, load_tests/reliability): an input that kills the process
        ids = np.concatenate([s.item.ids[s.item.offsets[s.start]:s.item.offsets[s.end]] for s in batch])
        lengths = np.concatenate([s.item.lengths[s.start:s.end] for s in batch])
        groups = []
        row = 0
        for s in batch:
            groups.append((row, row + s.end - s.start, s.item.options))
            row += s.end - s.start
        try:
            pending = encode_batch_async(self._engine.embed(ids, lengths), groups)
        except Exception as exc:  # the batch fails, the replica lives on
            log.exception("engine failed on a batch of %d sequences", lengths.size)
            self._fail_batch(batch, exc)
            return
        launched.put((batch, pending, started))

    def _complete_loop(self, launched: queue.Queue) -> None:
        while (entry := launched.get()) is not None:
            batch, pending, started = entry
            try:
                encoded = pending.result()
            except Exception as exc:
                log.exception("batch failed on the device")
                self._fail_batch(batch, exc)
                continue
            self._collect(batch, encoded, time.perf_counter_ns() - started)

    def _fail_batch(self, batch: list[BatchSlice], exc: BaseException) -> None:
        for s in batch:
            self._fail(s.item.work_id, exc)

    def _collect(self, batch: list[BatchSlice], encoded: EncodedBatch, elapsed_ns: int) -> None:
        batch_sequences = sum(s.end - s.start for s in batch)
        batch_tokens = sum(int(s.item.offsets[s.end] - s.item.offsets[s.start]) for s in batch)
        for g, s in enumerate(batch):
            with self._lock:
                pending = self._pending.get(s.item.work_id)
            if pending is None:  # cancelled meanwhile
                continue
            pending.parts.append(encoded.data[encoded.group_offsets[g]:encoded.group_offsets[g + 1]])
            if encoded.scales[g] is not None:
                pending.scales.append(encoded.scales[g])
            pending.inference_ns += elapsed_ns
            if g == 0:  # each engine batch is reported once, by its first item
                pending.batches.append((batch_sequences, batch_tokens))
            if s.last:
                with self._lock:
                    self._pending.pop(s.item.work_id, None)
                self._send_result(pending)

    def _send_result(self, pending: _Pending) -> None:
        item = pending.item
        data = pending.parts[0] if len(pending.parts) == 1 else b"".join(pending.parts)
        buffers = [data]
        if pending.scales:
            buffers.append(pending.scales[0] if len(pending.scales) == 1 else b"".join(pending.scales))
        meta = {"id": item.work_id, "queue_ns": item.started_ns - item.enqueued_ns,
                "inference_ns": pending.inference_ns, "batches": pending.batches}
        self._sock.send(Frame(Kind.RESULT, meta, buffers))

    def _fail(self, work_id: int, exc: BaseException) -> None:
        with self._lock:
            self._pending.pop(work_id, None)
        self._queue.cancel(work_id)
        self._sock.send(Frame(Kind.ERROR, {"id": work_id, "type": type(exc).__name__, "message": str(exc)}))


def _device_for_process(device: str) -> str:
    """The gateway pins a replica to one GPU via CUDA_VISIBLE_DEVICES: inside, it is always cuda:0."""
    return "cuda" if device.startswith("cuda") else device


def main() -> None:
    parser = argparse.ArgumentParser(description="embedding replica (started by the gateway)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    from arctic_embed.logs import configure as configure_logging

    configure_logging(os.environ.get("ARCTIC_EMBED_LOG_LEVEL", "INFO"), role="replica")  # ARCTIC_LOG_FORMAT
    sock = FrameSocket(worker_socket(args.fd))
    config = ReplicaConfig(**json.loads(args.config))
    try:
        spec = read_model_spec(config.model_path)
        engine = create_engine(config.engine, config.vllm_kv_cache_bytes, spec=spec)
        engine.load(spec, _device_for_process(config.device), config.dtype, config.torch_threads)
        # Warm up: the first batch pays for lazy initialisation (allocator, kernels, graphs).
        engine.embed(np.zeros(8, dtype=np.int32), np.array([8], dtype=np.int32))
    except Exception as exc:  # the gateway reports it in one line; the traceback is for --log-level DEBUG
        log.debug("replica failed to start", exc_info=True)
        first_line = (str(exc).strip().splitlines() or [""])[0]
        sock.send(Frame(Kind.ERROR, {"id": 0, "type": type(exc).__name__, "message": f"{type(exc).__name__}: "
                                     f"{first_line}"[:500]}))
        raise SystemExit(1) from None
    info = engine.info()
    sock.send(Frame(Kind.READY, {"engine": info.engine, "model_dtype": info.model_dtype, "device": info.device,
                                 "dim": info.dim, "pid": os.getpid()}))
    replica = Replica(sock, config, engine, int(os.environ.get(FAULT_EXIT_ENV, "-1")))
    reader = threading.Thread(target=replica.read_loop, name="replica-reader", daemon=True)
    reader.start()
    replica.run()


if __name__ == "__main__":
    main()
