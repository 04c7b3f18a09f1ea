"""The drafting seam's proposers without vLLM: requests followed by id across row moves, the batch-size rules, the
cost model that trims drafts, and the runner patch's wrapper routing."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from arctic_gen.config import ArcticSpeculativeConfig
from arctic_gen.spec_decode.budget import AcceptanceStats, Candidate, DraftBudget, StepCostModel
from arctic_gen.spec_decode.step import DraftStep, SeamNotInstalled
from arctic_gen.spec_decode.suffix import SuffixProposer, drafting_rows
from arctic_gen.suffix import SuffixCache

WIDTH = 128


def _vllm_config(k: int = 4, max_len: int = WIDTH, max_num_seqs: int = 8, largest_graph: int = 512,
                 **spec) -> SimpleNamespace:
    arctic = {"parallel": {}, "speculative": {"method": "suffix", **spec}}
    return SimpleNamespace(speculative_config=SimpleNamespace(num_speculative_tokens=k),
                           model_config=SimpleNamespace(max_model_len=max_len), additional_config={"arctic": arctic},
                           scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs),
                           compilation_config=SimpleNamespace(max_cudagraph_capture_size=largest_graph))


class Batch:
    """A minimal stand-in for vLLM's input batch: rows of a token table, requests moving between rows."""

    def __init__(self, rows: int = 4) -> None:
        self.table = np.zeros((rows, WIDTH), dtype=np.int32)
        self.req_ids: list[str] = []
        self.lengths: list[int] = []
        self.history: dict[str, list[int]] = {}

    def add(self, req_id: str, prompt: list[int]) -> None:
        row = len(self.req_ids)
        self.req_ids.append(req_id)
        self.table[row, :len(prompt)] = prompt
        self.lengths.append(len(prompt))
        self.history[req_id] = list(prompt)

    def remove(self, req_id: str) -> None:
        """vLLM condenses the batch: the last row moves into the hole."""
        row = self.req_ids.index(req_id)
        last = len(self.req_ids) - 1
        if row != last:
            self.table[row] = self.table[last]
            self.req_ids[row] = self.req_ids[last]
            self.lengths[row] = self.lengths[last]
        self.req_ids.pop()
        self.lengths.pop()

    def sample(self, tokens: dict[str, list[int]]) -> list[list[int]]:
        out = []
        for row, req_id in enumerate(self.req_ids):
            new = tokens.get(req_id, [])
            n = self.lengths[row]
            self.table[row, n:n + len(new)] = new
            self.lengths[row] += len(new)
            self.history[req_id].extend(new)
            out.append(new)
        return out

    def step(self, sampled: list[list[int]], finished: set[str] = frozenset(),
             num_draft_tokens: list[int] | None = None) -> DraftStep:
        return DraftStep(req_ids=list(self.req_ids), sampled_token_ids=sampled,
                         num_tokens_no_spec=np.array(self.lengths + [0] * (len(self.table) - len(self.lengths))),
                         token_ids_cpu=self.table, finished_req_ids=frozenset(finished),
                         num_draft_tokens=num_draft_tokens, sample_hidden_states=None,
                         num_scheduled_tokens=max(1, sum(len(s) for s in sampled)), max_model_len=WIDTH)


class RecordingCache(SuffixCache):
    """Records what each request's entry receives (prompt at start, then every appended token)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[str, list[int]] = {}

    def start_request(self, req_id, prompt_token_ids) -> None:
        assert req_id not in self.seen, f"{req_id} started twice"
        self.seen[req_id] = [int(t) for t in prompt_token_ids]
        super().start_request(req_id, prompt_token_ids)

    def update_batch(self, req_ids, token_lists) -> None:
        for req_id, tokens in zip(req_ids, token_lists, strict=True):
            self.seen[req_id].extend(int(t) for t in tokens)
        super().update_batch(req_ids, token_lists)


def test_requests_keep_their_own_entry_when_rows_move(monkeypatch) -> None:
    monkeypatch.setattr("arctic_gen.spec_decode.suffix.SuffixCache", RecordingCache)
    prop = SuffixProposer(_vllm_config(adaptive_draft_length=False))
    batch = Batch()
    head = [7, 7, 1, 2, 3]  # one shared "chat template" head, equal lengths: the old row-guessing collided here
    for name, body in [("a", [10, 11]), ("b", [20, 21]), ("c", [30, 31])]:
        batch.add(name, head + body)
    rng = np.random.default_rng(0)
    finished: set[str] = set()
    for step_no in range(12):
        new = {r: [int(t) for t in rng.integers(40, 50, size=1 + (step_no % 2))] for r in batch.req_ids}
        sampled = batch.sample(new)
        prop.propose_step(batch.step(sampled, finished))
        finished = set()
        if step_no == 3:  # "a" finishes, "c" moves into its row, "d" arrives in a new row with the same length
            batch.remove("a")
            finished.add("a")
            batch.add("d", head + [40, 41])
            batch.history["d"] = head + [40, 41]
        if step_no == 7:
            batch.remove("b")
            finished.add("b")
    cache = prop.cache
    assert isinstance(cache, RecordingCache)
    for req_id, tokens in cache.seen.items():
        assert tokens == batch.history[req_id], req_id
    assert set(cache.active_requests) == {"c", "d"}
    assert cache.check_integrity() == ""


def test_new_request_with_output_already_known_starts_from_the_table() -> None:
    """A request first seen with several accepted tokens (e.g. resumed) starts from everything but the new ones."""
    prop = SuffixProposer(_vllm_config(adaptive_draft_length=False))
    batch = Batch()
    batch.add("r", [1, 2, 3, 1, 2, 3, 1, 2])
    sampled = batch.sample({"r": [3, 1]})
    drafts = prop.propose_step(batch.step(sampled))
    assert drafts == [[2, 3, 1, 2]]


def test_suffix_drafts_match_the_cache_for_the_same_history() -> None:
    rng = np.random.default_rng(1)
    prop = SuffixProposer(_vllm_config(k=6, adaptive_draft_length=False))
    ref = SuffixCache(64)
    batch = Batch(3)
    base = [int(t) for t in rng.integers(0, 20, size=40)]
    for i in range(3):
        batch.add(str(i), base[:39])
        ref.start_request(str(i), base[:39])
    new = {str(i): [base[39]] for i in range(3)}
    for _ in range(20):
        sampled = batch.sample(new)
        drafts = prop.propose_step(batch.step(sampled))
        for i in range(3):
            ref.add_active_response(str(i), sampled[i])
        for i in range(3):
            n = batch.lengths[i]
            expected = ref.speculate(str(i), batch.table[i, max(0, n - 64):n], min(6, WIDTH - n - 1)).token_ids
            assert drafts[i] == expected
        new = {str(i): [int(t) for t in rng.integers(0, 20, size=1 + i)] for i in range(3)}


def test_drafts_stop_at_max_model_len() -> None:
    prop = SuffixProposer(_vllm_config(k=8, max_len=WIDTH, adaptive_draft_length=False))
    batch = Batch(1)
    pattern = [1, 2] * ((WIDTH - 3) // 2)
    batch.add("r", pattern)
    n = len(pattern)
    drafts = prop.propose_step(batch.step(batch.sample({"r": [1]})))
    assert len(drafts[0]) == min(8, WIDTH - (n + 1) - 1)


def test_batch_size_rules() -> None:
    batch = Batch(8)
    for i in range(6):
        batch.add(str(i), [1, 2, 3])
    step = batch.step(batch.sample({str(i): [4] for i in range(6) if i != 1}))
    assert drafting_rows(step, ArcticSpeculativeConfig(method="suffix")) == [0, 2, 3, 4, 5]
    assert drafting_rows(step, ArcticSpeculativeConfig(method="suffix", disable_by_batch_size=3)) == [0, 2]
    assert drafting_rows(step, ArcticSpeculativeConfig(method="suffix", hard_disable_by_batch_size=6)) == []
    assert drafting_rows(step, ArcticSpeculativeConfig(method="suffix", hard_disable_by_batch_size=7)) == [0, 2, 3, 4,
                                                                                                            5]


def test_hidden_rows_follow_verified_drafts() -> None:
    batch = Batch(4)
    for name in "abc":
        batch.add(name, [1, 2])
    sampled = batch.sample({"a": [5, 6, 7], "b": [], "c": [9]})
    step = batch.step(sampled, num_draft_tokens=[3, 0, 2])
    # a: rows 0..3 (3 drafts + 1), last accepted at 0 + 3 - 1; b: row 4, nothing sampled; c: rows 5..7, one sampled
    assert step.hidden_rows() == [2, -1, 5]
    assert batch.step(batch.sample({"a": [1], "b": [2], "c": [3]})).hidden_rows() == [0, 1, 2]


# --- uniform drafts ----------------------------------------------------------------------------------------------


def _draft_lengths(uniform: bool, k: int = 6) -> list[list[int]]:
    """Draft lengths per step of a batch mixing a repetitive request, a random one and one in partial prefill."""
    prop = SuffixProposer(_vllm_config(k=k, adaptive_draft_length=False, uniform_drafts=uniform))
    rng = np.random.default_rng(3)
    batch = Batch(3)
    batch.add("loop", [1, 2, 3, 4, 5] * 4)
    batch.add("noise", [int(t) for t in rng.integers(10, 60, size=20)])
    batch.add("prefill", [7] * 5)
    cycle = iter([1, 2, 3, 4, 5] * 20)
    lengths = []
    for _ in range(8):
        sampled = batch.sample({"loop": [next(cycle)], "noise": [int(rng.integers(10, 60))]})  # "prefill": none
        lengths.append([len(d) for d in prop.propose_step(batch.step(sampled))])
    return lengths


def test_uniform_drafts_give_every_drafting_request_exactly_k_tokens() -> None:
    ragged = _draft_lengths(uniform=False)
    assert any(n[1] < 6 for n in ragged) and all(n[2] == 0 for n in ragged)  # the noise request drafts little
    assert _draft_lengths(uniform=True) == [[6, 6, 0]] * 8  # the row without a new sample cannot draft


def test_uniform_drafts_keep_the_suffix_path_and_pad_it() -> None:
    def drafts(uniform: bool) -> list[list[int]]:
        prop = SuffixProposer(_vllm_config(k=8, adaptive_draft_length=False, uniform_drafts=uniform))
        batch = Batch(1)
        batch.add("r", [5, 6, 7, 8, 9])
        return prop.propose_step(batch.step(batch.sample({"r": [5, 6]})))

    assert drafts(uniform=False) == [[7, 8]]  # at most match length x suffix_max_spec_factor tokens
    assert drafts(uniform=True) == [[7, 8, 9, 5, 6, 6, 6, 6]]  # the tree's whole path, then padding


def test_uniform_budget_sends_all_drafts_or_none() -> None:
    batch = Batch(2)
    batch.add("x", [1, 2])
    batch.add("y", [1, 2])
    step = batch.step([[2], [2]])

    def chosen(budget: DraftBudget, probs: list[float]) -> list[int]:
        cands = [Candidate(0, "suffix", [1, 2, 3, 4], list(probs)), Candidate(1, "filler", [9, 9, 9, 9])]
        return [len(c.token_ids) for c in budget.choose_uniform(cands, step)]

    flat = _budget_after([(n, 0.01 + 1e-6 * n) for n in [1, 9, 17, 40, 3, 64] * 5])
    assert chosen(flat, [0.9, 0.5, 0.2, 0.0]) == [4, 4]
    steep = _budget_after([(n, 0.0005 + 0.001 * n) for n in [1, 9, 17, 40, 3, 64] * 5])
    assert chosen(steep, [0.9, 0.5, 0.2, 0.0]) == [0, 0]
    assert chosen(DraftBudget(enabled=False), [0.0] * 4) == [4, 4]


def test_uniform_drafts_warn_when_a_full_batch_exceeds_the_largest_cuda_graph(caplog) -> None:
    with caplog.at_level("WARNING", logger="arctic_gen.spec_decode.uniform"):
        SuffixProposer(_vllm_config(k=7, max_num_seqs=64, largest_graph=512, uniform_drafts=True))
    assert not caplog.records
    with caplog.at_level("WARNING", logger="arctic_gen.spec_decode.uniform"):
        SuffixProposer(_vllm_config(k=16, max_num_seqs=64, largest_graph=510, uniform_drafts=True))
    assert "1088 tokens per step" in caplog.text and "more than 30 drafting requests" in caplog.text


# --- the cost model ----------------------------------------------------------------------------------------------


def test_step_cost_model_fits_intercept_and_slope() -> None:
    model = StepCostModel()
    for tokens in [1, 5, 9, 33, 64, 2, 17, 48] * 4:
        model.record(tokens, 0.002 + 0.0001 * tokens)
    a, s = model.coefficients()
    assert a == pytest.approx(0.002, rel=1e-3) and s == pytest.approx(0.0001, rel=1e-3)


def test_acceptance_stats_per_position() -> None:
    stats = AcceptanceStats()
    for _ in range(200):
        stats.record(verified=3, accepted=1, expected=None)  # first always accepted, second always rejected
    p = stats.cumulative(3)
    assert p[0] > 0.95 and p[1] < 0.05 and p[2] <= p[1]


def _fake_clock(times: list[float]):
    it = iter(times)
    return lambda: next(it)


def _budget_after(step_costs: list[tuple[int, float]]) -> DraftBudget:
    t = 0.0
    stamps = [t]
    for _, seconds in step_costs:
        t += seconds
        stamps.append(t)
    budget = DraftBudget(clock=_fake_clock(stamps + [t + 1.0] * 4))
    batch = Batch(1)
    batch.add("x", [1])
    budget.observe(batch.step([[]]))
    for tokens, _ in step_costs:
        budget.observe(dataclasses.replace(batch.step([[]]), num_scheduled_tokens=tokens))
    return budget


def test_budget_keeps_likely_tokens_when_steps_are_flat_and_trims_when_compute_bound() -> None:
    probs = [0.9, 0.8, 0.6, 0.3, 0.1]
    batch = Batch(1)
    batch.add("x", [1, 2])
    step = batch.step([[2]])
    flat = _budget_after([(n, 0.01 + 1e-6 * n) for n in [1, 9, 17, 40, 3, 64] * 5])
    kept = flat.choose([Candidate(0, "suffix", [1, 2, 3, 4, 5], list(probs))], step)
    assert len(kept[0].token_ids) == 5
    steep = _budget_after([(n, 0.0005 + 0.001 * n) for n in [1, 9, 17, 40, 3, 64] * 5])
    kept = steep.choose([Candidate(0, "suffix", [1, 2, 3, 4, 5], list(probs))], step)
    assert 0 < len(kept[0].token_ids) < 5
    off = DraftBudget(enabled=False)
    assert len(off.choose([Candidate(0, "suffix", [1, 2, 3, 4, 5], list(probs))], step)[0].token_ids) == 5


def test_budget_learns_acceptance_from_what_vllm_accepted() -> None:
    budget = DraftBudget(enabled=False)
    batch = Batch(1)
    batch.add("x", [1, 2])
    for _ in range(50):
        step = batch.step(batch.sample({"x": [3]}), num_draft_tokens=[3])  # 3 verified, none accepted
        budget.observe(step)
        budget.choose([Candidate(0, "speculator", [5, 6, 7])], step)
    assert budget.stats["speculator"].cumulative(1)[0] < 0.1
    assert budget.stats["speculator"].acceptance_rate < 0.1


# --- the runner patch ------------------------------------------------------------------------------------------


def test_plugin_proposer_outside_the_seam_fails_loudly() -> None:
    prop = SuffixProposer(_vllm_config())
    with pytest.raises(SeamNotInstalled, match="VLLM_PLUGINS"):
        prop.propose([[1]], np.array([1]), np.zeros((1, 4), dtype=np.int32))


def test_runner_patch_routes_plugin_proposers_and_leaves_others_alone() -> None:
    from arctic_gen.patches.gpu_model_runner import PATCHES

    class Runner:
        max_model_len = WIDTH

        def propose_draft_token_ids(self, *args):
            return "vllm's own"

    (patch,) = PATCHES
    wrapper = patch.build(Runner)["propose_draft_token_ids"]
    batch = Batch(2)
    batch.add("a", [1, 2, 1, 2, 1])
    runner = Runner()
    runner.input_batch = SimpleNamespace(req_ids=batch.req_ids, num_tokens_no_spec=np.array([6, 0]),
                                         token_ids_cpu=batch.table)
    sched = SimpleNamespace(finished_req_ids=set(), total_num_scheduled_tokens=1)
    runner.drafter = object()
    assert wrapper(runner, sched, [[2]], None, None, None, None, None, None, None) == "vllm's own"
    runner.drafter = SuffixProposer(_vllm_config(adaptive_draft_length=False))
    batch.sample({"a": [2]})
    assert wrapper(runner, sched, [[2]], None, None, None, None, None, None, None) == [[1, 2]]
