"""`speculative_config={"method": "suffix"}` served by our tree: the proposer alone, then inside vLLM."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from arctic_gen.spec_decode.suffix import SuffixProposer
from arctic_gen.suffix import SuffixCache


def _proposer(k: int = 4, max_len: int = 64) -> SuffixProposer:
    cfg = SimpleNamespace(speculative_config=SimpleNamespace(num_speculative_tokens=k),
                          model_config=SimpleNamespace(max_model_len=max_len), additional_config={})
    return SuffixProposer(cfg)


def test_proposer_follows_requests_by_row() -> None:
    prop = _proposer()
    table = np.zeros((4, 64), dtype=np.int32)
    a = [5, 6, 7, 5, 6, 7, 5, 6]
    b = [1, 2, 3, 1, 2]
    table[0, :len(a)] = a
    table[1, :len(b)] = b
    counts = np.array([len(a), len(b), 0, 0], dtype=np.int32)
    # First step after prefill: one sampled token each (already in the table).
    drafts = prop.propose([[6], [2]], counts, table)
    assert drafts == [[7, 5, 6], [3, 1]]  # limited by the match length (max_spec_factor 1)
    assert len(prop.cache.active_requests) == 2
    # Continue row 0 with two accepted tokens; row 1 has no new tokens (e.g. a partial prefill).
    table[0, 8:10] = [7, 5]
    counts[0] = 10
    drafts = prop.propose([[7, 5], []], counts, table)
    assert drafts[1] == [] and drafts[0] == [6, 7, 5, 6]
    # Row 1 now holds another request (different first tokens): the old one stops, the new one starts.
    c = [9, 9, 8, 9, 9]
    table[1, :] = 0
    table[1, :len(c)] = c
    counts[1] = len(c)
    drafts = prop.propose([[7], [9]], np.array([11, 5, 0, 0], dtype=np.int32), table)
    assert drafts[1] == [8, 9]
    assert len(prop.cache.active_requests) == 2
    # The batch shrinks to one row: the request of row 1 stops, its response stays cached.
    prop.propose([[6]], np.array([12, 0, 0, 0], dtype=np.int32), table)
    assert len(prop.cache.active_requests) == 1
    assert prop.cache.check_integrity() == ""


def test_proposer_respects_max_model_len() -> None:
    prop = _proposer(k=8, max_len=10)
    table = np.zeros((1, 10), dtype=np.int32)
    table[0, :8] = [1, 2, 1, 2, 1, 2, 1, 2]
    assert prop.propose([[2]], np.array([8], dtype=np.int32), table) == [[1]]  # 10 - 8 - 1 slots left
    table[0, 8] = 1
    assert prop.propose([[1]], np.array([9], dtype=np.int32), table) == [[]]


def test_drafts_equal_the_cache_for_the_same_history() -> None:
    rng = np.random.default_rng(0)
    prop = _proposer(k=6, max_len=512)
    ref = SuffixCache(64)
    table = np.zeros((3, 512), dtype=np.int32)
    base = rng.integers(0, 20, size=40).astype(np.int32)
    lengths = []
    for i in range(3):
        table[i, :40] = base
        ref.start_request(i, base[:39])
        lengths.append(40)
    sampled = [[int(base[39])]] * 3
    for _ in range(20):
        drafts = prop.propose(sampled, np.array(lengths, dtype=np.int32), table)
        for i in range(3):
            ref.add_active_response(i, sampled[i])
        for i in range(3):
            n = lengths[i]
            assert drafts[i] == ref.speculate(i, table[i, max(0, n - 64):n], min(6, 512 - n - 1)).token_ids
        sampled = []
        for i in range(3):
            nxt = [int(t) for t in rng.integers(0, 20, size=1 + i)]
            table[i, lengths[i]:lengths[i] + len(nxt)] = nxt
            lengths[i] += len(nxt)
            sampled.append(nxt)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_greedy_text_is_unchanged_and_drafts_are_accepted() -> None:
    pytest.importorskip("vllm")
    from arctic_gen.testing import cpu_vllm_env, tiny_llama

    cpu_vllm_env()
    from vllm import LLM, SamplingParams

    prompts = ["one two three one two three one two three", "hello world hello world hello world"]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    outputs = {}
    accepted = 0
    for name, spec in [("plain", None), ("suffix", {"method": "suffix", "num_speculative_tokens": 8})]:
        llm = LLM(model=str(tiny_llama()), dtype="float32", max_model_len=256, enforce_eager=True,
                  kv_cache_memory_bytes=32 * 2**20, speculative_config=spec, disable_log_stats=False)
        outputs[name] = [r.outputs[0].token_ids for r in llm.generate(prompts, params)]
        if spec is not None:
            accepted = sum(m.value for m in llm.get_metrics() if m.name == "vllm:spec_decode_num_accepted_tokens")
        del llm
    assert outputs["suffix"] == outputs["plain"]
    assert accepted > 0
