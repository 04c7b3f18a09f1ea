"""Closed-loop gRPC load generator for EmbedService: C concurrent callers (optionally over P processes), each
sending its next request as soon as the previous one returns. Token counts come from the server's responses
(the tokenizer's exact counts), never from an estimate."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from dataclasses import dataclass, field

import numpy as np

STAGES = ("tokenize", "queue", "inference", "total")


@dataclass
class LoadResult:
    requests: int = 0
    tokens: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    stage_ns: dict[str, int] = field(default_factory=dict)
    """Sums of the server's per-response stage timings (tokenize, queue, inference, total)."""
    started: float = 0.0
    finished: float = 0.0

    def merge(self, other: LoadResult) -> None:
        self.requests += other.requests
        self.tokens += other.tokens
        for k, v in other.failures.items():
            self.failures[k] = self.failures.get(k, 0) + v
        self.latencies_ms += other.latencies_ms
        for k, v in other.stage_ns.items():
            self.stage_ns[k] = self.stage_ns.get(k, 0) + v
        self.started = min(self.started, other.started) if self.started else other.started
        self.finished = max(self.finished, other.finished)

    def summary(self) -> dict:
        wall = max(self.finished - self.started, 1e-9)
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {"requests": self.requests, "tokens": self.tokens, "failed": sum(self.failures.values()),
                "failures": self.failures, "tokens_per_s": self.tokens / wall, "requests_per_s": self.requests / wall,
                "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "wall_s": wall,
                "server_mean_ms": {k: v / 1e6 / max(self.requests, 1) for k, v in self.stage_ns.items()}}


async def _drive(target: str, requests: list[bytes], concurrency: int, duration_s: float,
                 max_requests: int) -> LoadResult:
    import grpc
    from grpc import aio

    from arctic_protos.arctic.embed.v1 import embed_pb2 as pb

    channel = aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 512 * 2**20),
                                                    ("grpc.max_send_message_length", 512 * 2**20)])
    embed = channel.unary_unary("/arctic.embed.v1.EmbedService/Embed", request_serializer=None,
                                response_deserializer=pb.EmbedResponse.FromString)
    result = LoadResult()
    deadline = 0.0
    sent = 0

    async def caller(worker: int) -> None:
        nonlocal sent
        i = worker
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            payload = requests[i % len(requests)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                response = await embed(payload, timeout=600)
            except grpc.RpcError as exc:
                result.failures[exc.code().name] = result.failures.get(exc.code().name, 0) + 1
                continue
            result.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            result.requests += 1
            result.tokens += response.total_tokens
            t = response.timings
            for name in STAGES:
                result.stage_ns[name] = result.stage_ns.get(name, 0) + getattr(t, name + "_ns")

    await embed(requests[0], timeout=600)  # warm-up, not counted
    result.started = time.perf_counter()
    deadline = result.started + duration_s
    await asyncio.gather(*(caller(w) for w in range(concurrency)))
    result.finished = time.perf_counter()
    await channel.close()
    return result


def _process_main(args: tuple) -> LoadResult:
    try:
        import uvloop

        return uvloop.run(_drive(*args))
    except ImportError:
        return asyncio.run(_drive(*args))


def run_load(target: str, requests: list[bytes], concurrency: int, duration_s: float, processes: int = 1,
             max_requests: int = 10**9) -> dict:
    """Serialized EmbedRequests in `requests` are sent round-robin; returns the summary dict."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (1 if p < concurrency % processes else 0) for p in range(processes)]
    jobs = [(target, requests[p::processes] or requests, c, duration_s, max_requests // processes or 1)
            for p, c in enumerate(shares)]
    if processes == 1:
        parts = [_process_main(jobs[0])]
    else:
        with mp.get_context("spawn").Pool(processes) as pool:
            parts = pool.map(_process_main, jobs)
    total = LoadResult()
    for part in parts:
        total.merge(part)
    return total.summary()
