"""SuffixCache (arctic_gen.suffix): drafts, eviction policy, batching and memory, against a brute-force model."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arctic_gen.suffix import SuffixCache, SuffixDraft
from arctic_gen.suffix.reference import RefDraft, RefSuffixTree

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class RefCache:
    """The documented policy, spelled out: FIFO eviction over cached responses by count and by token budget."""

    def __init__(self, depth: int, max_requests: int, max_tokens: int):
        self.depth = depth
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.glob = RefSuffixTree(depth)
        self.local: dict[Hashable, RefSuffixTree] = {}
        self.history: dict[Hashable, list[int]] = {}
        self.seqs: dict[Hashable, int] = {}
        self.next_seq = 0

    def start(self, req: Hashable, prompt: Sequence[int]) -> None:
        tree = RefSuffixTree(self.depth)
        tree.extend(0, prompt)
        self.local[req] = tree
        self.history[req] = list(prompt)
        if self.max_requests == 0:
            return
        if req in self.seqs:
            self.evict(req)
        self.seqs[req] = self.next_seq
        self.next_seq += 1
        while self.max_requests > 0 and len(self.seqs) > self.max_requests:
            self.evict(next(iter(self.seqs)))

    def add(self, req: Hashable, toks: Sequence[int], evict: bool = True) -> None:
        self.local[req].extend(0, toks)
        self.history[req] += list(toks)
        if req in self.seqs:
            self.glob.extend(self.seqs[req], toks)
        if evict:
            self.evict_to_budget()

    def add_batch(self, reqs: Sequence[Hashable], toks: Sequence[Sequence[int]]) -> None:
        # A batched update applies the budget once, after the whole batch.
        for req, t in zip(reqs, toks, strict=True):
            self.add(req, t, evict=False)
        self.evict_to_budget()

    def evict_to_budget(self) -> None:
        while self.seqs and self.glob.num_tokens > self.max_tokens:
            self.evict(next(iter(self.seqs)))

    def evict(self, req: Hashable) -> None:
        seq = self.seqs.pop(req)
        if seq in self.glob.seqs:
            self.glob.remove(seq)

    def speculate(self, req: Hashable, ctx: Sequence[int], k: int, f: float, off: float, p: float) -> RefDraft:
        ctx = list(ctx)[-self.depth:]
        a = self.local[req].speculate(ctx, k, f, off, p)
        b = self.glob.speculate(ctx, k, f, off, p)
        return a if a.score >= b.score else b


REQS = ["r0", "r1", "r2", "r3", "r4"]
toks = st.lists(st.one_of(st.integers(0, 2), st.integers(0, 9)), min_size=1, max_size=10)
spec_args = st.tuples(st.lists(st.integers(0, 3), max_size=12), st.integers(0, 8), st.sampled_from([1.0, 2.0]),
                      st.sampled_from([0.0, 1.0]), st.sampled_from([0.0, 0.1, 0.3]))
cache_op = st.one_of(
    st.tuples(st.just("start"), st.sampled_from(REQS), st.lists(st.integers(0, 3), max_size=15)),
    st.tuples(st.just("add"), st.sampled_from(REQS), toks),
    st.tuples(st.just("stop"), st.sampled_from(REQS)),
    st.tuples(st.just("evict"), st.sampled_from(REQS)),
    st.tuples(st.just("spec"), st.sampled_from(REQS), spec_args),
    # The usual case: the context is the tail of the request's own history (the trees' fast path).
    st.tuples(st.just("spec_tail"), st.sampled_from(REQS), st.integers(0, 12), spec_args),
    st.tuples(st.just("batch_add"), st.lists(st.sampled_from(REQS), min_size=1, max_size=3, unique=True),
              st.lists(toks, min_size=3, max_size=3)),
)


def same(d: SuffixDraft, r: RefDraft) -> bool:
    return (d.token_ids, d.probs, d.score, d.match_len) == (r.token_ids, r.probs, r.score, r.match_len)


@SETTINGS
@given(depth=st.sampled_from([2, 4, 8]), max_requests=st.sampled_from([-1, 0, 1, 2, 3]),
       max_tokens=st.sampled_from([0, 5, 20, 1000]), ops=st.lists(cache_op, min_size=1, max_size=30))
def test_cache_matches_reference(depth: int, max_requests: int, max_tokens: int, ops: list) -> None:
    cache = SuffixCache(depth, max_cached_requests=max_requests, max_cached_tokens=max_tokens)
    ref = RefCache(depth, max_requests, max_tokens)
    for o in ops:
        kind, req = o[0], o[1]
        active = not isinstance(req, list) and req in ref.local
        if kind == "batch_add":
            reqs = [r for r in req if r in ref.local]
            new = o[2][:len(reqs)]
            cache.update_batch(reqs, new)
            ref.add_batch(reqs, new)
        elif kind == "start":
            if active:
                with pytest.raises(ValueError):
                    cache.start_request(req, o[2])
                continue
            cache.start_request(req, np.asarray(o[2], dtype=np.int32))
            ref.start(req, o[2])
        elif kind == "add":
            if not active:
                with pytest.raises(ValueError):
                    cache.add_active_response(req, o[2])
                continue
            cache.add_active_response(req, o[2])
            ref.add(req, o[2])
        elif kind == "stop":
            if not active:
                with pytest.raises(ValueError):
                    cache.stop_request(req)
                continue
            cache.stop_request(req)
            del ref.local[req]
        elif kind == "evict":
            if req not in ref.seqs:
                with pytest.raises(ValueError):
                    cache.evict_cached_response(req)
                continue
            cache.evict_cached_response(req)
            ref.evict(req)
        elif kind == "spec_tail":
            if not active:
                continue
            hist = ref.history[req]
            ctx = hist[max(0, len(hist) - o[2]):] if o[2] else []
            args = (ctx, *o[3][1:])
            assert same(cache.speculate(req, np.asarray(ctx, dtype=np.int32), *args[1:]), ref.speculate(req, *args)), o
            continue
        else:
            if not active:
                with pytest.raises(ValueError):
                    cache.speculate(req, o[2][0])
                continue
            draft = cache.speculate(req, *o[2])
            assert same(draft, ref.speculate(req, *o[2])), o
            continue
        assert cache.check_integrity() == ""
        assert list(cache.cached_requests) == list(ref.seqs)
        assert set(cache.active_requests) == set(ref.local)
        assert cache.cached_tokens == ref.glob.num_tokens <= max_tokens
        if max_requests >= 0:
            assert len(cache.cached_requests) <= max_requests


@SETTINGS
@given(prompts=st.lists(st.lists(st.integers(0, 3), max_size=12), min_size=1, max_size=5),
       steps=st.lists(st.lists(toks, min_size=5, max_size=5), min_size=1, max_size=4),
       ctx_len=st.integers(0, 10), k=st.integers(0, 6))
def test_batched_calls_equal_per_request_calls(prompts: list, steps: list, ctx_len: int, k: int) -> None:
    n = len(prompts)
    reqs = [f"q{i}" for i in range(n)]
    # No eviction here: update_batch applies the budget once per batch (covered by test_cache_matches_reference).
    one, many = SuffixCache(8), SuffixCache(8)
    history = {r: list(p) for r, p in zip(reqs, prompts, strict=True)}
    for r, p in zip(reqs, prompts, strict=True):
        one.start_request(r, p)
        many.start_request(r, p)
    for step in steps:
        new = step[:n]
        for r, t in zip(reqs, new, strict=True):
            one.add_active_response(r, t)
            history[r].extend(t)
        many.update_batch(reqs, [np.asarray(t, dtype=np.int32) if i % 2 else t for i, t in enumerate(new)])
        assert list(one.cached_requests) == list(many.cached_requests)
        assert one.cached_tokens == many.cached_tokens
        contexts = [history[r][-ctx_len:] if ctx_len else [] for r in reqs]
        expected = [one.speculate(r, c, k, 1.0, 0.0, 0.1) for r, c in zip(reqs, contexts, strict=True)]
        batch = many.speculate_batch(reqs, contexts, k, 1.0, 0.0, 0.1)
        assert len(batch) == n
        assert batch.token_ids == [d.token_ids for d in expected]
        assert batch.scores == [d.score for d in expected]
        # The same through a 2-D token table read in place (vLLM's token_ids_cpu layout).
        width = max(len(h) for h in history.values()) + 3
        table = np.full((n + 2, width), -7, dtype=np.int32)
        rows = [n + 1 - i for i in range(n)]
        for r, row in zip(reqs, rows, strict=True):
            table[row, :len(history[r])] = history[r]
        ends = [len(history[r]) for r in reqs]
        rowwise = many.speculate_rows(reqs, table, rows, ends, [k] * n, 1.0, 0.0, 0.1)
        assert rowwise.token_ids == [d.token_ids for d in (one.speculate(r, history[r], k, 1.0, 0.0, 0.1)
                                                          for r in reqs)]
    assert many.check_integrity() == ""


def test_memory_stays_under_token_budget() -> None:
    budget = 4000
    cache = SuffixCache(32, max_cached_requests=-1, max_cached_tokens=budget)
    rng = np.random.default_rng(0)
    template = rng.integers(0, 500, size=400, dtype=np.int32)
    peak = 0
    for i in range(60):
        req = f"req{i}"
        cache.start_request(req, template[:50])
        out = template.copy()
        out[rng.integers(0, 400, size=20)] = rng.integers(0, 500, size=20)  # an edited copy: repetitive traffic
        for j in range(0, 400, 16):
            cache.add_active_response(req, out[j:j + 16])
            assert cache.cached_tokens <= budget
        cache.stop_request(req)
        peak = max(peak, cache.estimate_memory()["global"])
    assert cache.check_integrity() == ""
    assert len(cache.cached_requests) == budget // 400
    # Arenas keep their high-water mark; it is set by the budget, not by the 24K tokens that went through.
    assert peak < budget * 600, peak
    assert cache.estimate_memory()["local"] == 0


def test_fifo_eviction_by_request_count_and_restart() -> None:
    cache = SuffixCache(8, max_cached_requests=2)
    for r in ["a", "b", "c"]:
        cache.start_request(r, [1, 2])
        cache.add_active_response(r, [3, 4])
        cache.stop_request(r)
    assert list(cache.cached_requests) == ["b", "c"]
    cache.start_request("b", [5])  # a restarted request drops its old response and moves to the back
    assert list(cache.cached_requests) == ["c", "b"]
    assert cache.cached_tokens == 2
    cache.add_active_response("b", [6, 7, 8])
    assert cache.speculate("b", [9, 6]).token_ids == [7]
    assert cache.check_integrity() == ""


def test_global_tree_drafts_for_other_requests_and_better_score_wins() -> None:
    cache = SuffixCache(16)
    for r in ["a", "a2"]:
        cache.start_request(r, [0])
        cache.add_active_response(r, [10, 11, 12, 13, 14])
        cache.stop_request(r)
    cache.start_request("b", np.array([99, 10, 11], dtype=np.int32))
    d = cache.speculate("b", [99, 10, 11], max_spec_tokens=3, max_spec_factor=2.0)
    assert d == SuffixDraft([12, 13, 14], [-1, 0, 1], [1.0, 1.0, 1.0], 3.0, 2)
    # Own tree: "10 11" -> 20 once, then the end (p=1/2). Global: a, a2 -> 12, b -> end (p=2/3).
    cache.add_active_response("b", [20, 21, 22, 10, 11])
    d = cache.speculate("b", [22, 10, 11], max_spec_tokens=3, max_spec_factor=2.0)
    assert d.token_ids == [12, 13, 14] and d.match_len == 2 and d.score == pytest.approx(2.0)
    # Without the global tree the own tree's draft is used.
    own = SuffixCache(16, max_cached_requests=0)
    own.start_request("b", [99, 10, 11, 20, 21, 22, 10, 11])
    assert own.speculate("b", [22, 10, 11], max_spec_tokens=3, max_spec_factor=2.0).token_ids == [20, 21, 22]


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        SuffixCache(0)
    with pytest.raises(ValueError, match="max_cached_requests"):
        SuffixCache(max_cached_requests=-2)
    cache = SuffixCache(max_cached_requests=0)
    cache.start_request("x", [1, 2, 1, 2])
    cache.add_active_response("x", [1])
    assert cache.cached_tokens == 0 and list(cache.cached_requests) == []
    assert cache.speculate("x", [2, 1]).token_ids == [2]
    with pytest.raises(ValueError):
        cache.update_batch(["nope"], [[1]])
    with pytest.raises(ValueError):
        cache.speculate_batch(["nope"], [[1]], 4)
    with pytest.raises(TypeError):
        cache.update_batch(["x"], [np.zeros(3, dtype=np.float32)])
    with pytest.raises(TypeError):
        cache.speculate_batch(["x"], [np.zeros((2, 2), dtype=np.int32)], 4)
    assert cache.speculate_batch(["x"], [np.array([2, 1], dtype=np.int32)], 4).token_ids == [[2]]
