"""ReplicaManager's failure bookkeeping without processes (fake streams): a replica whose engine fails batch after
batch leaves routing and shows as failed, its work is retried on another replica within the budget, and a crash
blames only the batch the replica started last."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from arctic_embed.config import ServerConfig
from arctic_embed.errors import EngineFailed, InvalidInput
from arctic_embed.ipc import Frame, Kind
from arctic_embed.replicas import ReplicaManager, _Work


class FakeStream:
    def __init__(self) -> None:
        self.sent: list[Frame] = []

    def send(self, frame: Frame) -> None:
        self.sent.append(frame)


def _manager() -> ReplicaManager:
    config = ServerConfig(devices=["cpu"], replicas_per_device=2, max_retries=2, replica_max_consecutive_failures=3)
    manager = ReplicaManager(config, "unused")
    for replica in manager.replicas:
        replica.state = "ready"
        replica.stream = FakeStream()  # type: ignore[assignment]

    async def never_starts(replica) -> None:
        raise RuntimeError("model gone")

    manager._start = never_starts  # type: ignore[method-assign]
    return manager


def _work(work_id: int) -> _Work:
    frame = Frame(Kind.SUBMIT, {"id": work_id}, [np.array([101, 7, 102], np.int32), np.array([3], np.int32)])
    return _Work(work_id, frame, 3, asyncio.get_running_loop().create_future())


def test_a_replica_failing_every_batch_leaves_routing_and_its_work_moves() -> None:
    async def run() -> None:
        manager = _manager()
        bad, good = manager.replicas
        works = [_work(i) for i in range(3)]
        for work in works:
            work.replica = bad
            bad.inflight[work.work_id] = work
            bad.outstanding_tokens += work.tokens
        for work in works:
            manager._release(work)
            manager._engine_failed(bad, work, "CUDA error: an illegal memory access")
        assert bad.state == "failed" and manager.n_ready == 1 and manager.n_failed == 1
        assert all(w.replica is good for w in works)  # retried on the other replica
        assert [f.meta["id"] for f in good.stream.sent] == [0, 1, 2]
        new = _work(9)
        manager._dispatch(new)
        assert new.replica is good  # routing skips the failed replica
        await manager.close()

    asyncio.run(run())


def test_work_failing_on_every_try_ends_with_a_bare_internal_error() -> None:
    async def run() -> None:
        manager = _manager()
        manager._config.replica_max_consecutive_failures = 100
        work = _work(1)
        manager._dispatch(work)
        for _ in range(3):
            replica = work.replica
            manager._release(work)
            manager._engine_failed(replica, work, "secret /path detail")
        with pytest.raises(EngineFailed) as err:
            await work.future
        assert "/path" not in str(err.value)
        await manager.close()

    asyncio.run(run())


def test_a_crash_blames_only_the_batch_started_last() -> None:
    async def run() -> None:
        manager = _manager()
        victim = manager.replicas[0]
        manager.replicas[1].state = "dead"  # everything goes to the victim
        works = [_work(i) for i in range(4)]
        for work in works:
            manager._dispatch(work)
        victim.running = {2}  # as set by its last STARTED frame
        manager.replicas[1].state = "ready"
        manager._on_dead(victim)
        assert [w.attempts for w in works] == [0, 0, 1, 0]
        assert works[2].frame.meta.get("isolate") is True and "isolate" not in works[0].frame.meta
        for _ in range(2):  # the same work dies with its replica twice more: it fails alone
            for replica in manager.replicas:
                replica.state = "ready"
            victim = works[2].replica
            victim.running = {2}
            manager._on_dead(victim)
        with pytest.raises(InvalidInput):
            await works[2].future
        assert not any(w.future.done() for w in works if w.work_id != 2)
        await manager.close()

    asyncio.run(run())
