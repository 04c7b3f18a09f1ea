"""500 concurrent requests of 1–64 inputs, all correct; then 500 of 1–16 inputs (the same concurrency, a quarter of
the work: the burst still outlasts the kill and the replica's restart) while a replica is SIGKILLed: 0 failures."""

import asyncio
import json
import os
import random
import signal
import time

import grpc
import numpy as np
import pytest

from arctic_embed.client import AsyncEmbedClient
from arctic_embed.testing import varied_texts
from arctic_protos.arctic_inference import inference_pb2, inference_pb2_grpc

N_REQUESTS = 500


@pytest.fixture(scope="module")
def pool(st_model) -> tuple[list[str], np.ndarray]:
    texts = [t[:60] for t in varied_texts(300, seed=7)]  # ~5-15 tokens: the CPU does ~10K tok/s
    return texts, st_model.encode(texts, normalize_embeddings=True, batch_size=64)


def _replicas(target: str) -> list[dict]:
    with grpc.insecure_channel(target) as channel:
        info = inference_pb2_grpc.InferenceServiceStub(channel).GetReplicaInfo(inference_pb2.ReplicaInfoRequest())
    return [{"ready": r.ready, **json.loads(r.parallel_config)} for r in info.replica_infos]


async def _burst(target: str, texts: list[str], reference: np.ndarray, on_start=None,
                 max_inputs: int = 64) -> list[str]:
    rng = random.Random(11)
    plans = [rng.sample(range(len(texts)), rng.randint(1, max_inputs)) for _ in range(N_REQUESTS)]
    failures: list[str] = []
    async with AsyncEmbedClient(target, timeout_s=300) as client:
        async def one(plan: list[int]) -> None:
            try:
                out = await client.embed_detailed([texts[i] for i in plan])
            except grpc.RpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")
                return
            cos = (out.vectors * reference[plan]).sum(axis=1)
            if out.vectors.shape != (len(plan), 384) or cos.min() < 0.9999:
                failures.append(f"wrong vectors: min cos {cos.min()}")

        tasks = [asyncio.create_task(one(p)) for p in plans]
        if on_start is not None:
            await on_start()
        await asyncio.gather(*tasks)
    return failures


def test_500_concurrent_requests_are_all_correct(embed_server, pool) -> None:
    assert asyncio.run(_burst(embed_server.target, *pool)) == []


def test_sigkill_of_a_replica_loses_no_request_and_it_comes_back(embed_server, pool) -> None:
    victim = _replicas(embed_server.target)[0]
    back_after: list[float] = []

    async def kill_then_watch() -> None:
        await asyncio.sleep(1.0)
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < 60:
            now = await asyncio.to_thread(_replicas, embed_server.target)
            if now[0]["ready"] and now[0]["pid"] != victim["pid"]:
                back_after.append(time.monotonic() - killed_at)
                return
            await asyncio.sleep(0.1)

    watcher: list[asyncio.Task] = []

    async def start_watcher() -> None:
        watcher.append(asyncio.create_task(kill_then_watch()))

    async def run() -> list[str]:
        failures = await _burst(embed_server.target, *pool, on_start=start_watcher, max_inputs=16)
        await watcher[0]
        return failures

    assert asyncio.run(run()) == []
    # Back within its startup time (a CPU replica starts in about a second; generous for a loaded CI box).
    assert back_after and back_after[0] < 30, back_after
    replica = _replicas(embed_server.target)[0]
    assert replica["restarts"] == victim["restarts"] + 1 and replica["ready"]
