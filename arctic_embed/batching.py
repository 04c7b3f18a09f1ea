"""The replica's queue: whole requests go in, engine batches bounded by a token budget come out.

A request's sequences may be spread over several batches, taken round robin with the other requests of its
priority (a 2,000-input request does not hold up everyone else for its whole duration); batches are formed from the
highest priority first, then first come first served. Work marked `isolated` runs in batches of its own.
Cancelling drops whatever of a request has not started yet. No transport here.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from arctic_embed.encoding import OutputOptions


@dataclass
class WorkItem:
    """One submitted piece of work: n sequences packed in `ids` with their `lengths`."""

    work_id: int
    ids: np.ndarray
    lengths: np.ndarray
    options: OutputOptions
    priority: int = 0
    isolated: bool = False
    """Run in engine batches of its own (work that was running when a replica died: a possible poison input)."""
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)
    offsets: np.ndarray = field(init=False)
    next_seq: int = 0
    started_ns: int = 0

    def __post_init__(self) -> None:
        self.offsets = np.zeros(self.lengths.size + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])

    @property
    def n(self) -> int:
        return int(self.lengths.size)


@dataclass
class BatchSlice:
    """Sequences [start, end) of one work item inside an engine batch."""

    item: WorkItem
    start: int
    end: int

    @property
    def last(self) -> bool:
        return self.end == self.item.n


class TokenBudgetQueue:
    def __init__(self, max_batch_tokens: int, max_batch_size: int) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self._heap: list[tuple[int, int, WorkItem]] = []
        self._seq = itertools.count()
        self._cancelled: set[int] = set()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: WorkItem) -> None:
        with self._cond:
            heapq.heappush(self._heap, (-item.priority, next(self._seq), item))
            self._cond.notify()

    def cancel(self, work_id: int) -> None:
        with self._cond:
            if any(entry[2].work_id == work_id for entry in self._heap):
                self._cancelled.add(work_id)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def take(self, timeout_s: float | None = None) -> list[BatchSlice]:
        """Block until work is queued, then return the next batch (empty on timeout or close)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._heap or self._closed, timeout_s):
                return []
            batch: list[BatchSlice] = []
            tokens = 0
            seqs = 0
            while self._heap and seqs < self.max_batch_size:
                _, _, item = self._heap[0]
                if item.work_id in self._cancelled:
                    heapq.heappop(self._heap)
                    self._cancelled.discard(item.work_id)
                    continue
                if item.isolated and batch:
                    break  # it runs alone, in the next batch
                start = item.next_seq
                end = start
                while end < item.n and seqs < self.max_batch_size:
                    length = int(item.lengths[end])
                    if tokens + length > self.max_batch_tokens and (tokens or seqs):
                        break
                    tokens += length
                    seqs += 1
                    end += 1
                if end == start:
                    break
                if not item.started_ns:
                    item.started_ns = time.perf_counter_ns()
                item.next_seq = end
                batch.append(BatchSlice(item, start, end))
                if end < item.n:
                    # Round robin: the rest of a large item goes behind what is queued at its priority, so small
                    # requests are not stuck behind all of its batches.
                    heapq.heapreplace(self._heap, (-item.priority, next(self._seq), item))
                    break
                heapq.heappop(self._heap)
                if item.isolated:
                    break
            return batch
