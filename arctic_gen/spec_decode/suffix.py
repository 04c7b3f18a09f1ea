"""`speculative_config={"method": "suffix", ...}`: Suffix Decoding served by our native suffix trees.

`SuffixDrafter` keeps one cache entry per request id (from the runner seam, `arctic_gen.spec_decode.step`): a request
starts the first time its id is seen (its tree is built from its prompt and any output it already has) and stops
when the scheduler reports it finished, so a request that moves to another batch row keeps its tree and no request
ever writes into another's entry. Per step there is one native call that appends every request's new tokens and one
that drafts for every drafting request, reading the contexts from the token table in place.

`SuffixProposer` is the method itself: suffix drafts, trimmed per step by `DraftBudget` (the cost model) and the
batch-size rules of `ArcticSpeculativeConfig`, or with `uniform_drafts` padded to full length and sent for all
requests of a step or none (`arctic_gen.spec_decode.uniform`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arctic_gen.config import ArcticConfig, ArcticSpeculativeConfig
from arctic_gen.spec_decode.budget import Candidate, DraftBudget
from arctic_gen.spec_decode.step import DraftStep, RunnerProposer
from arctic_gen.spec_decode.uniform import uniform_candidates, warn_if_beyond_full_graphs
from arctic_gen.suffix import SuffixCache


class SuffixDrafter:
    """Suffix trees per request id plus the global tree of earlier responses, fed from `DraftStep`s."""

    def __init__(self, spec: ArcticSpeculativeConfig) -> None:
        self.config = spec
        self.cache = SuffixCache(spec.suffix_cache_max_depth, max_cached_requests=spec.suffix_cache_max_requests)

    def observe(self, step: DraftStep) -> None:
        """Stop finished requests, start new ones, append every request's sampled tokens."""
        cache = self.cache
        for req_id in step.finished_req_ids:
            if req_id in cache.active_requests:
                cache.stop_request(req_id)
        ids: list[str] = []
        chunks: list[Sequence[int]] = []
        table = step.token_ids_cpu
        for row, (req_id, sampled) in enumerate(zip(step.req_ids, step.sampled_token_ids, strict=False)):
            if not sampled:
                continue
            if req_id not in cache.active_requests:
                known = int(step.num_tokens_no_spec[row]) - len(sampled)
                cache.start_request(req_id, table[row, :known])
            ids.append(req_id)
            chunks.append(sampled if type(sampled) is list else list(sampled))
        if ids:
            cache.update_batch(ids, chunks)

    def draft(self, step: DraftStep, rows: Sequence[int], limits: Sequence[int],
              whole_paths: bool = False) -> tuple[list[list[int]], list[list[float]]]:
        """Suffix drafts (token ids and per-token path probabilities) for `rows`, each at most `limits[i]` long.

        `whole_paths`: follow the most likely path up to the limit, past suffix_min_token_prob and the match-length
        rule (uniform drafts: a likelier guess than padding)."""
        if not rows:
            return [], []
        spec = self.config
        factor, offset, min_prob = spec.suffix_max_spec_factor, spec.suffix_max_spec_offset, spec.suffix_min_token_prob
        if whole_paths:
            factor, offset, min_prob = 0.0, float(max(limits)), 0.0
        batch = self.cache.speculate_rows([step.req_ids[r] for r in rows], step.token_ids_cpu, rows,
                                          [int(step.num_tokens_no_spec[r]) for r in rows], limits, factor, offset,
                                          min_prob)
        return batch.token_ids, batch.probs

    def close(self) -> None:
        for req_id in list(self.cache.active_requests):
            self.cache.stop_request(req_id)


def drafting_rows(step: DraftStep, spec: ArcticSpeculativeConfig) -> list[int]:
    """Rows that may draft this step: rows with a fresh sample, the first `disable_by_batch_size` running requests
    only, none at all from `hard_disable_by_batch_size` running requests."""
    running = len(step.req_ids)
    if spec.hard_disable_by_batch_size is not None and running >= spec.hard_disable_by_batch_size:
        return []
    first = running if spec.disable_by_batch_size is None else min(running, spec.disable_by_batch_size)
    return [row for row in range(first) if step.sampled_token_ids[row]]


def drafting_limits(step: DraftStep, spec: ArcticSpeculativeConfig, wanted: int) -> tuple[list[int], list[int]]:
    """The drafting rows that have room for a draft, and how many tokens each may draft (at most `wanted`)."""
    rows = drafting_rows(step, spec)
    if not rows:
        return [], []
    limits = step.draft_limits(rows, wanted)
    kept = [i for i, n in enumerate(limits) if n > 0]
    if len(kept) == len(rows):
        return rows, limits
    return [rows[i] for i in kept], [limits[i] for i in kept]


class SuffixProposer(RunnerProposer):
    """Drafts up to `num_speculative_tokens` tokens per request from the request's prompt and output and from
    earlier responses, with the suffix_* fields of ArcticSpeculativeConfig."""

    def __init__(self, vllm_config: Any) -> None:
        spec = ArcticConfig.from_vllm_config(vllm_config).speculative or ArcticSpeculativeConfig(method="suffix")
        self.config = spec
        self.num_speculative_tokens: int = vllm_config.speculative_config.num_speculative_tokens
        self.suffix = SuffixDrafter(spec)
        self.budget = DraftBudget(enabled=spec.adaptive_draft_length)
        if spec.uniform_drafts:
            warn_if_beyond_full_graphs(vllm_config, self.num_speculative_tokens)

    @property
    def cache(self) -> SuffixCache:
        return self.suffix.cache

    def propose_step(self, step: DraftStep) -> list[list[int]]:
        self.budget.observe(step)
        self.suffix.observe(step)
        drafts: list[list[int]] = [[] for _ in step.req_ids]
        rows, limits = drafting_limits(step, self.config, self.num_speculative_tokens)
        if not rows:
            return drafts
        uniform = self.config.uniform_drafts
        tokens, probs = self.suffix.draft(step, rows, limits, whole_paths=uniform)
        candidates = [Candidate(row, "suffix", draft, p) for row, draft, p in zip(rows, tokens, probs, strict=True)]
        if uniform:
            candidates = self.budget.choose_uniform(uniform_candidates(step, rows, limits, candidates), step)
        else:
            candidates = self.budget.choose(candidates, step)
        for cand in candidates:
            drafts[cand.row] = cand.token_ids
        return drafts
