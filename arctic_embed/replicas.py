"""Replica processes seen from the gateway: placement on devices, routing, health, restart and retry.

Routing sends each piece of work to the ready replica with the fewest outstanding tokens. A replica that dies
(EOF on its socket, process exit, or no answer to pings) is restarted with backoff; the work it held is sent again
to another replica, so a client sees no failure. Work with no ready replica waits (parked) until one is back.

Retry budget: a replica reports the work ids of each engine batch before running it (STARTED). When it dies, only
the work of the batch it started last is charged an attempt (and runs alone from then on); work that merely waited
in its queue is re-sent for free. Work charged more than `max_retries` times fails alone (INVALID_ARGUMENT: its
input keeps killing the model), work whose batches keep failing on the engine fails with a bare INTERNAL. A replica
whose engine fails `replica_max_consecutive_failures` batches in a row leaves routing ("failed": visible in Info,
GetReplicaInfo, health and metrics) and is restarted with backoff.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from arctic_embed import metrics
from arctic_embed.config import ServerConfig
from arctic_embed.encoding import OutputOptions
from arctic_embed.errors import EngineFailed, InvalidInput, StartupError, Unavailable
from arctic_embed.ipc import AsyncFrameStream, Frame, Kind
from arctic_embed.workers import WorkerProcess, spawn_worker

log = logging.getLogger(__name__)
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_CAPACITY = "0"
"""CPU replicas: oneDNN's primitive cache off unless the operator sets the variable (flat memory, see the soak)."""


@dataclass
class ReplicaResult:
    data: memoryview
    scales: memoryview | None
    queue_ns: int
    inference_ns: int


@dataclass
class _Work:
    work_id: int
    frame: Frame
    tokens: int
    future: asyncio.Future
    attempts: int = 0
    replica: ReplicaHandle | None = None
    tried: set[int] = field(default_factory=set)
    """Replicas whose engine failed on this work (a retry prefers another one)."""


@dataclass
class ReplicaHandle:
    index: int
    device: str
    state: str = "starting"  # starting | ready | dead | failed (keeps failing: out of routing, restarting)
    proc: WorkerProcess | None = None
    stream: AsyncFrameStream | None = None
    info: dict = field(default_factory=dict)
    outstanding_tokens: int = 0
    inflight: dict[int, _Work] = field(default_factory=dict)
    last_seen: float = 0.0
    restarts: int = 0
    started_at: float = 0.0
    ready_at: float = 0.0
    reader: asyncio.Task | None = None
    running: set[int] = field(default_factory=set)
    """Work ids of the engine batch the replica said it started last (and has not answered yet)."""
    consecutive_failures: int = 0
    last_error: str = ""

    @property
    def pid(self) -> int | None:
        return self.proc.process.pid if self.proc else None


class ReplicaManager:
    def __init__(self, config: ServerConfig, model_path: str) -> None:
        self._config = config
        self._model_path = model_path
        devices = config.resolved_devices()
        self.replicas = [ReplicaHandle(i, device) for i, device in
                         enumerate(d for d in devices for _ in range(config.replicas_per_device))]
        self._ids = itertools.count(1)
        self._parked: list[_Work] = []
        self._closing = False
        self._monitor: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()

    # ------------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        results = await asyncio.gather(*(self._start(r) for r in self.replicas), return_exceptions=True)
        if not any(r.state == "ready" for r in self.replicas):
            for replica in self.replicas:
                if replica.proc:
                    replica.proc.kill()
            first = next((r for r in results if isinstance(r, BaseException)), None)
            reason = str(first).strip().splitlines()[-1] if first is not None and str(first).strip() else "unknown"
            raise StartupError(f"the model could not be loaded by any replica: {reason}")
        for replica, result in zip(self.replicas, results, strict=True):
            if isinstance(result, BaseException):
                log.error("replica %d failed to start: %s; will retry", replica.index, result)
                self._spawn_task(self._restart(replica))
        self._monitor = asyncio.create_task(self._monitor_loop())

    def _replica_config(self, replica: ReplicaHandle) -> tuple[dict, dict[str, str]]:
        cfg = self._config.replica
        threads = cfg.torch_threads
        env: dict[str, str] = {}
        if replica.device.startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = replica.device.split(":", 1)[1] if ":" in replica.device else "0"
        else:
            # oneDNN caches a primitive per input shape (1,024 by default); varied request lengths make every
            # batch a new shape, and the replica's RSS grew without bound (311 MiB -> 2 GiB in 10 minutes).
            env[ONEDNN_CACHE_ENV] = os.environ.get(ONEDNN_CACHE_ENV, ONEDNN_CACHE_CAPACITY)
        if not replica.device.startswith("cuda") and threads <= 0:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            threads = max(1, cpus // max(1, len(self.replicas)))
        payload = {**cfg.__dict__, "model_path": self._model_path, "device": replica.device,
                   "torch_threads": threads}
        return payload, env

    async def _start(self, replica: ReplicaHandle) -> None:
        replica.state = "starting"
        replica.started_at = time.monotonic()
        payload, env = self._replica_config(replica)
        replica.proc = spawn_worker("arctic_embed.replica", payload, env)
        replica.stream = await AsyncFrameStream.from_socket(replica.proc.sock)
        try:
            frame = await asyncio.wait_for(replica.stream.recv(), self._config.replica_startup_timeout_s)
        except asyncio.TimeoutError:
            frame = None
        if frame is None or frame.kind != Kind.READY:
            replica.proc.kill()
            replica.state = "dead"
            message = frame.meta.get("message") if frame is not None else "no READY before the startup timeout"
            replica.last_error = f"start failed: {message}"
            raise RuntimeError(f"replica {replica.index} on {replica.device}: {message}")
        replica.info = frame.meta
        replica.state = "ready"
        replica.consecutive_failures = 0
        replica.running.clear()
        replica.last_seen = replica.ready_at = time.monotonic()
        replica.reader = asyncio.create_task(self._read_loop(replica, replica.proc))
        self._update_gauges()
        log.info("replica %d ready on %s (pid %s) in %.1fs", replica.index, replica.device, replica.pid,
                 replica.ready_at - replica.started_at)
        self._unpark()

    async def close(self) -> None:
        self._closing = True
        if self._monitor:
            self._monitor.cancel()
        for task in list(self._background):
            task.cancel()
        for replica in self.replicas:
            if replica.stream and replica.state == "ready":
                replica.stream.send(Frame(Kind.SHUTDOWN))
        await asyncio.sleep(0.05)
        for replica in self.replicas:
            if replica.reader:
                replica.reader.cancel()
            if replica.proc:
                replica.proc.kill()
        for work in self._parked:
            if not work.future.done():
                work.future.set_exception(Unavailable("server is shutting down"))

    # ------------------------------------------------------------------------------------------- state
    @property
    def n_ready(self) -> int:
        return sum(r.state == "ready" for r in self.replicas)

    @property
    def n_failed(self) -> int:
        return sum(r.state == "failed" for r in self.replicas)

    def _update_gauges(self) -> None:
        metrics.REPLICAS_READY.set(self.n_ready)
        metrics.REPLICAS_FAILED.set(self.n_failed)

    @property
    def outstanding_tokens(self) -> int:
        return sum(r.outstanding_tokens for r in self.replicas) + sum(w.tokens for w in self._parked)

    def _spawn_task(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------------------------------- work
    async def submit(self, ids: np.ndarray, lengths: np.ndarray, options: OutputOptions,
                     priority: int = 0) -> ReplicaResult:
        work_id = next(self._ids)
        meta = {"id": work_id, "normalize": options.normalize, "dimensions": options.dimensions,
                "dtype": options.dtype, "priority": priority}
        frame = Frame(Kind.SUBMIT, meta, [np.ascontiguousarray(ids, np.int32), np.ascontiguousarray(lengths, np.int32)])
        work = _Work(work_id, frame, int(ids.size), asyncio.get_running_loop().create_future())
        self._dispatch(work)
        try:
            return await work.future
        except asyncio.CancelledError:
            self._cancel(work)
            raise

    def _dispatch(self, work: _Work) -> None:
        ready = [r for r in self.replicas if r.state == "ready"]
        if not ready:
            if self._closing:  # nothing will come back up: close() already failed the parked work
                work.future.set_exception(Unavailable("server is shutting down"))
                return
            self._parked.append(work)
            self._spawn_task(self._expire_parked(work))
            return
        fresh = [r for r in ready if r.index not in work.tried] or ready
        replica = min(fresh, key=lambda r: r.outstanding_tokens)
        work.replica = replica
        replica.inflight[work.work_id] = work
        replica.outstanding_tokens += work.tokens
        assert replica.stream is not None
        replica.stream.send(work.frame)

    async def _expire_parked(self, work: _Work) -> None:
        await asyncio.sleep(self._config.replica_startup_timeout_s)
        if work in self._parked:
            self._parked.remove(work)
            if not work.future.done():
                work.future.set_exception(Unavailable("no healthy replica came up in time"))

    def _unpark(self) -> None:
        parked, self._parked = self._parked, []
        for work in parked:
            if not work.future.done():
                self._dispatch(work)

    def _release(self, work: _Work) -> None:
        replica = work.replica
        if replica is not None and replica.inflight.pop(work.work_id, None) is not None:
            replica.outstanding_tokens -= work.tokens
            replica.running.discard(work.work_id)
        work.replica = None

    def _cancel(self, work: _Work) -> None:
        replica = work.replica
        self._release(work)
        if work in self._parked:
            self._parked.remove(work)
        if replica is not None and replica.state == "ready" and replica.stream is not None:
            replica.stream.send(Frame(Kind.CANCEL, {"id": work.work_id}))

    # ------------------------------------------------------------------------------------------- replica I/O
    async def _read_loop(self, replica: ReplicaHandle, proc: WorkerProcess | None) -> None:
        stream = replica.stream
        assert stream is not None
        while True:
            frame = await stream.recv()
            if frame is None:
                break
            replica.last_seen = time.monotonic()
            if frame.kind == Kind.PONG:
                continue
            if frame.kind == Kind.STARTED:
                # Only the batch started last is blamed for a crash: an earlier one that is still being answered
                # finished its engine work (the completion thread was about to reply when the process died).
                replica.running = {i for i in frame.meta["ids"] if i in replica.inflight}
                continue
            work = replica.inflight.get(frame.meta.get("id", -1))
            if work is None:
                continue
            self._release(work)
            if work.future.done():
                continue
            if frame.kind == Kind.RESULT:
                replica.consecutive_failures = 0
                for sequences, tokens in frame.meta["batches"]:
                    metrics.ENGINE_BATCH_SEQUENCES.observe(sequences)
                    metrics.ENGINE_BATCH_TOKENS.observe(tokens)
                scales = frame.buffers[1] if len(frame.buffers) > 1 else None
                work.future.set_result(ReplicaResult(frame.buffers[0], scales, int(frame.meta["queue_ns"]),
                                                     int(frame.meta["inference_ns"])))
            else:
                self._engine_failed(replica, work, str(frame.meta.get("message", "")))
        if not self._closing and replica.proc is proc:  # a stale reader never touches the next incarnation
            self._on_dead(replica)

    def _engine_failed(self, replica: ReplicaHandle, work: _Work, message: str) -> None:
        """The engine failed a batch holding this work: retry it elsewhere (bounded); a replica that fails batch
        after batch leaves routing and is restarted."""
        metrics.REPLICA_BATCH_FAILURES.inc()
        replica.consecutive_failures += 1
        replica.last_error = f"engine failed: {message}"[:300]
        log.error("replica %d: engine failed on work %d (%s)", replica.index, work.work_id, message)
        work.attempts += 1
        work.tried.add(replica.index)
        if work.attempts > self._config.max_retries:
            work.future.set_exception(EngineFailed("the model failed on this request; the server log has details"))
        else:
            self._dispatch(work)
        if replica.consecutive_failures >= self._config.replica_max_consecutive_failures and \
                replica.state == "ready":
            log.error("replica %d failed %d batches in a row: out of routing, restarting", replica.index,
                      replica.consecutive_failures)
            self._on_dead(replica, failed=True)

    def _on_dead(self, replica: ReplicaHandle, failed: bool = False) -> None:
        if replica.state in ("dead", "failed", "starting"):
            return
        exit_code = replica.proc.process.poll() if replica.proc else None
        log.error("replica %d died (exit %s); %d in-flight items go to other replicas; restarting",
                  replica.index, exit_code, len(replica.inflight))
        metrics.REPLICA_RESTARTS.inc()
        replica.state = "failed" if failed else "dead"
        if not failed:
            replica.last_error = f"process exited ({exit_code})"
        self._update_gauges()
        if replica.proc:
            replica.proc.kill()
        orphans = list(replica.inflight.values())
        running = set(replica.running)
        replica.inflight.clear()
        replica.running.clear()
        replica.outstanding_tokens = 0
        for work in orphans:
            work.replica = None
            if work.future.done():
                continue
            if work.work_id in running:  # it was on the engine when the process died: from now on it runs alone
                work.attempts += 1
                work.frame.meta["isolate"] = True
            if work.attempts > self._config.max_retries:
                work.future.set_exception(InvalidInput(
                    f"this request stopped the model process {work.attempts} times; it is not tried again"))
            else:
                self._dispatch(work)
        self._spawn_task(self._restart(replica, failed))

    async def _restart(self, replica: ReplicaHandle, failed: bool = False) -> None:
        """Restart with backoff (0.5 s doubling up to `restart_backoff_max_s`); a replica that left routing for
        failing keeps the `failed` state while it waits. Restarts never stop: the failure shows in health/metrics."""
        delay = 0.5
        if failed:
            await asyncio.sleep(delay)
        while not self._closing:
            replica.restarts += 1
            try:
                await self._start(replica)
                return
            except Exception as exc:  # noqa: BLE001 - keep trying with backoff
                replica.state = "failed"
                self._update_gauges()
                log.error("replica %d restart failed: %s; next try in %.1fs", replica.index, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._config.restart_backoff_max_s)

    async def _monitor_loop(self) -> None:
        interval = self._config.health_check_interval_s
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for replica in self.replicas:
                if replica.state != "ready" or replica.stream is None:
                    continue
                if replica.proc and replica.proc.process.poll() is not None:
                    self._on_dead(replica)
                elif now - replica.last_seen > self._config.health_check_timeout_s:
                    log.error("replica %d answered no ping for %.0fs: killing it", replica.index,
                              now - replica.last_seen)
                    if replica.proc:
                        replica.proc.process.kill()
                else:
                    replica.stream.send(Frame(Kind.PING, {"id": 0}))
