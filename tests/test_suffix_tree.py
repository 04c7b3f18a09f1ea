"""Native suffix tree (arctic_gen._suffix_tree) against the brute-force reference (arctic_gen.suffix.reference)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arctic_gen._suffix_tree import SuffixTree
from arctic_gen.suffix.reference import RefSuffixTree

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Mostly tiny alphabets (many repeats and ties); sometimes up to 10 tokens so nodes get more than 4 children.
tokens_small = st.lists(st.one_of(st.integers(0, 2), st.integers(0, 9)), min_size=1, max_size=12)
query = st.tuples(
    st.lists(st.one_of(st.integers(0, 2), st.integers(0, 9)), min_size=0, max_size=10),  # context
    st.integers(0, 10),  # max_spec_tokens
    st.sampled_from([0.5, 1.0, 1.5, 3.0]),  # max_spec_factor
    st.sampled_from([0.0, 1.0, 2.5]),  # max_spec_offset
    st.sampled_from([0.0, 0.1, 0.25, 0.5]),  # min_token_prob
)
op = st.one_of(
    st.tuples(st.just("extend"), st.integers(0, 4), tokens_small),
    st.tuples(st.just("remove"), st.integers(0, 4)),
    st.tuples(st.just("query"), query),
)


def assert_same_draft(tree: SuffixTree, ref: RefSuffixTree, q: tuple) -> None:
    ctx, k, f, off, p = q
    ids, parents, probs, score, match_len = tree.speculate_list(ctx, k, f, off, p)
    expected = ref.speculate(ctx, k, f, off, p)
    assert (ids, probs, score, match_len) == (expected.token_ids, expected.probs, expected.score,
                                              expected.match_len), q
    assert parents == list(range(-1, len(ids) - 1))
    arr = tree.speculate_ndarray(np.asarray(ctx, dtype=np.int32), k, f, off, p)
    assert arr == (ids, parents, probs, score, match_len)


@SETTINGS
@given(depth=st.sampled_from([1, 2, 3, 5, 8]), ops=st.lists(op, min_size=1, max_size=25))
def test_matches_reference_under_appends_and_removes(depth: int, ops: list) -> None:
    tree = SuffixTree(depth)
    ref = RefSuffixTree(depth)
    for o in ops:
        if o[0] == "extend":
            _, seq_id, toks = o
            tree.extend_list(seq_id, toks)
            ref.extend(seq_id, toks)
        elif o[0] == "remove":
            if o[1] not in ref.seqs:
                with pytest.raises(IndexError):
                    tree.remove(o[1])
                continue
            tree.remove(o[1])
            ref.remove(o[1])
        else:
            assert_same_draft(tree, ref, o[1])
            continue
        assert tree.check_integrity() == ""
        assert tree.num_tokens == ref.num_tokens
        assert tree.num_seqs == len(ref.seqs)
    # Every window-sized suffix of every query ends in the same draft.
    for seq in list(ref.seqs.values())[:2]:
        for end in range(len(seq) + 1):
            assert_same_draft(tree, ref, (seq[max(0, end - depth):end], 4, 1.0, 1.0, 0.1))


@SETTINGS
@given(depth=st.integers(1, 6), seqs=st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=15), min_size=1,
                                              max_size=4))
def test_reference_counts_are_substring_counts(depth: int, seqs: list[list[int]]) -> None:
    # The reference itself: a node's count is the number of occurrences of its path.
    ref = RefSuffixTree(depth)
    for i, s in enumerate(seqs):
        ref.extend(i, s)
    stack = [((), ref.root)]
    while stack:
        path, node = stack.pop()
        if path:
            assert node.count == ref.substring_count(path)
        assert [c.count for c in node.order] == sorted((c.count for c in node.order), reverse=True)
        stack.extend((path + (t,), c) for t, c in node.children.items())


@SETTINGS
@given(ops=st.lists(st.tuples(st.integers(0, 2), st.lists(st.sampled_from([7, 2**31 - 1, 123456, 0]), min_size=1,
                                                                   max_size=20)), min_size=1, max_size=8),
       remove_order=st.permutations([0, 1, 2]))
def test_large_token_ids_and_removing_everything(ops: list, remove_order: list[int]) -> None:
    tree = SuffixTree(16)
    ref = RefSuffixTree(16)
    for seq_id, toks in ops:
        tree.extend_ndarray(seq_id, np.asarray(toks, dtype=np.int32))
        ref.extend(seq_id, toks)
        ctx = toks[-3:]
        assert_same_draft(tree, ref, (ctx, 8, 2.0, 0.0, 0.0))
    for seq_id in remove_order:
        if seq_id in ref.seqs:
            tree.remove(seq_id)
            ref.remove(seq_id)
            assert tree.check_integrity() == ""
    assert tree.num_tokens == 0 and tree.num_nodes == 1


def test_sliding_window_limits_matches_and_drafts() -> None:
    depth = 4
    tree = SuffixTree(depth)
    seq = list(range(20))
    tree.extend_list(0, seq)
    assert tree.check_integrity() == ""
    # Paths stop at depth tokens: a 4-token match has nothing left to draft, so the 1-token match wins.
    ids, _, _, score, match_len = tree.speculate_list([1, 2, 3, 4, 5], 10, 10.0, 0.0, 0.0)
    assert match_len == 1 and ids == [6, 7, 8] and score == 3.0
    ids, _, _, score, match_len = tree.speculate_list([9, 10], 10, 10.0, 0.0, 0.0)
    assert match_len == 1 and ids == [11, 12, 13] and score == 3.0


def test_draft_probabilities_follow_counts() -> None:
    tree = SuffixTree(8)
    tree.extend_list(0, [1, 2, 3, 1, 2, 3, 1, 2, 4])
    ids, _, probs, score, match_len = tree.speculate_list([0, 1, 2], 8, 1.0, 0.0, 0.1)
    # "1 2" occurs 3 times: followed by 3 twice, by 4 once.
    assert ids[:1] == [3] and probs[0] == pytest.approx(2 / 3) and match_len == 2
    assert score == pytest.approx(sum(probs))


def test_ndarray_input_is_zero_copy_and_converts_other_dtypes() -> None:
    tree = SuffixTree(8)
    tree.extend_ndarray(0, np.arange(10, dtype=np.int32))
    tree.extend_ndarray(1, np.arange(10, dtype=np.int64))  # converted (a copy), same result
    base = np.arange(40, dtype=np.int32)
    with pytest.raises(TypeError):
        tree.extend_ndarray(2, base.reshape(4, 10))
    assert tree.num_tokens == 20
    assert tree.speculate_ndarray(np.array([2, 3], dtype=np.int32), 3, 3.0, 0.0, 0.0)[0] == [4, 5, 6]


def test_memory_estimate_tracks_size() -> None:
    tree = SuffixTree(32)
    empty = tree.estimate_memory()
    rng = np.random.default_rng(0)
    for i in range(20):
        tree.extend_ndarray(i, rng.integers(0, 50, size=200, dtype=np.int32))
    full = tree.estimate_memory()
    assert full > empty + 20 * 200 * 4
    assert full < 20 * 200 * 1024  # well under 1 KiB per token
    for i in range(20):
        tree.remove(i)
    assert tree.check_integrity() == "" and tree.num_nodes == 1


def test_errors() -> None:
    with pytest.raises(ValueError):
        SuffixTree(0)
    tree = SuffixTree(4, removable=False)
    tree.extend_list(0, [1, 2, 3])
    assert tree.check_integrity() == ""
    with pytest.raises(RuntimeError):
        tree.remove(0)
