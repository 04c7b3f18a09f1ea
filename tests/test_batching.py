import numpy as np

from arctic_embed.batching import TokenBudgetQueue, WorkItem
from arctic_embed.encoding import OutputOptions


def _item(work_id: int, lengths: list[int], priority: int = 0) -> WorkItem:
    lens = np.array(lengths, dtype=np.int32)
    return WorkItem(work_id, np.arange(lens.sum(), dtype=np.int32), lens, OutputOptions(), priority)


def test_batches_respect_the_token_budget_split_large_items_and_let_small_ones_in_early() -> None:
    queue = TokenBudgetQueue(max_batch_tokens=100, max_batch_size=100)
    queue.put(_item(1, [40] * 5))
    queue.put(_item(2, [10]))
    sizes = []
    while batch := queue.take(timeout_s=0):
        assert sum(int(s.item.lengths[s.start:s.end].sum()) for s in batch) <= 100
        sizes.append([(s.item.work_id, s.start, s.end, s.last) for s in batch])
    # Round robin: the small request rides in the second batch instead of waiting for the large one to finish.
    assert sizes == [[(1, 0, 2, False)], [(2, 0, 1, True), (1, 2, 4, False)], [(1, 4, 5, True)]]


def test_an_input_over_the_budget_still_runs_alone() -> None:
    queue = TokenBudgetQueue(max_batch_tokens=10, max_batch_size=8)
    queue.put(_item(1, [50, 3]))
    assert [(s.start, s.end) for s in queue.take(timeout_s=0)] == [(0, 1)]
    assert [(s.start, s.end) for s in queue.take(timeout_s=0)] == [(1, 2)]


def test_priority_first_then_arrival_order_and_batch_size_cap() -> None:
    queue = TokenBudgetQueue(max_batch_tokens=1000, max_batch_size=3)
    queue.put(_item(1, [1, 1]))
    queue.put(_item(2, [1, 1], priority=5))
    batch = queue.take(timeout_s=0)
    assert [(s.item.work_id, s.start, s.end) for s in batch] == [(2, 0, 2), (1, 0, 1)]


def test_cancelled_items_are_dropped_before_they_start() -> None:
    queue = TokenBudgetQueue(max_batch_tokens=1000, max_batch_size=10)
    queue.put(_item(1, [5]))
    queue.put(_item(2, [5]))
    queue.cancel(1)
    assert [s.item.work_id for s in queue.take(timeout_s=0)] == [2]
    assert queue.take(timeout_s=0) == []
