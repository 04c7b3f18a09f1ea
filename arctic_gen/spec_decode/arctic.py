"""`speculative_config={"method": "arctic", "model": DIR, "num_speculative_tokens": K, ...}`: an Arctic MLP/LSTM
speculator, optionally combined with Suffix Decoding.

Per step, for each drafting request: the speculator drafts K tokens from the target's hidden state at the request's
last accepted position and the token just sampled there (one batched call on the target's device); with
`enable_suffix_decoding`, the suffix trees draft too, and the request takes the suffix draft when its score (expected
accepted tokens) is at least the speculator's draft length, else the speculator's (Arctic's hybrid rule). The
`DraftBudget` cost model then trims the drafts to what pays off at this batch size, and the batch-size rules
(`disable_by_batch_size`, `hard_disable_by_batch_size`) decide which requests draft at all. With `uniform_drafts`
every draft is padded to K tokens and the cost model decides all-or-none per step (`arctic_gen.spec_decode.uniform`).
"""

from __future__ import annotations

from typing import Any

import torch

from arctic_gen.config import ArcticConfig, ArcticSpeculativeConfig, ConfigError
from arctic_gen.spec_decode.budget import Candidate, DraftBudget
from arctic_gen.spec_decode.step import DraftStep, RunnerProposer
from arctic_gen.spec_decode.suffix import SuffixDrafter, drafting_limits
from arctic_gen.spec_decode.uniform import uniform_candidates, warn_if_beyond_full_graphs


class ArcticProposer(RunnerProposer):
    """Speculator drafts (MLP or LSTM, Arctic's checkpoint format) with optional suffix drafts (hybrid rule)."""

    def __init__(self, vllm_config: Any) -> None:
        spec = ArcticConfig.from_vllm_config(vllm_config).speculative
        if spec is None or spec.method != "arctic":
            raise ConfigError("speculative_config.method: ArcticProposer serves method 'arctic' only")
        self.config: ArcticSpeculativeConfig = spec
        self.num_speculative_tokens: int = vllm_config.speculative_config.num_speculative_tokens
        self.hidden_size: int = vllm_config.model_config.get_hidden_size()
        self.vocab_size: int = vllm_config.model_config.get_vocab_size()
        self.dtype: torch.dtype = vllm_config.model_config.dtype
        self.suffix = SuffixDrafter(spec) if spec.enable_suffix_decoding else None
        self.budget = DraftBudget(enabled=spec.adaptive_draft_length)
        if spec.uniform_drafts:
            warn_if_beyond_full_graphs(vllm_config, self.num_speculative_tokens)
        self.speculator: Any = None
        self.speculator_tokens = 0

    def load_model(self, target_model: Any) -> None:
        """Loads the speculator on the target's device, in the engine's dtype; checks it fits the target."""
        if self.config.model is None:
            return
        from arctic_gen.models.speculator_config import load_speculator

        device = next(target_model.parameters()).device
        speculator = load_speculator(self.config.model, device, self.dtype)
        if speculator.input_hidden_dim != self.hidden_size:
            raise ConfigError(
                f"speculative_config.model={self.config.model!r}: the speculator reads hidden states of size "
                f"{speculator.input_hidden_dim}, the model's are {self.hidden_size}: train one for this model")
        if speculator.config.vocab_size > self.vocab_size:
            raise ConfigError(
                f"speculative_config.model={self.config.model!r}: the speculator's vocabulary "
                f"({speculator.config.vocab_size}) is larger than the model's ({self.vocab_size})")
        self.speculator = speculator
        self.speculator_tokens = min(self.num_speculative_tokens, speculator.n_predict)

    def propose_step(self, step: DraftStep) -> list[list[int]]:
        self.budget.observe(step)
        if self.suffix is not None:
            self.suffix.observe(step)
        drafts: list[list[int]] = [[] for _ in step.req_ids]
        rows, limits = drafting_limits(step, self.config, self.num_speculative_tokens)
        if not rows:
            return drafts
        candidates = self._speculator_drafts(step, rows, limits)
        if self.suffix is not None:
            candidates = self._hybrid(step, rows, limits, candidates)
        if self.config.uniform_drafts:
            chosen = self.budget.choose_uniform(uniform_candidates(step, rows, limits, candidates), step)
        else:
            chosen = self.budget.choose([c for c in candidates if c is not None and c.token_ids], step)
        for cand in chosen:
            drafts[cand.row] = cand.token_ids
        return drafts

    def _speculator_drafts(self, step: DraftStep, rows: list[int], limits: list[int]) -> list[Candidate | None]:
        if self.speculator is None or self.speculator_tokens == 0:
            return [None] * len(rows)
        hidden_rows = step.hidden_rows()
        hidden = step.sample_hidden_states
        index = torch.tensor([hidden_rows[r] for r in rows], dtype=torch.long).to(hidden.device, non_blocking=True)
        last = torch.tensor([step.sampled_token_ids[r][-1] for r in rows], dtype=torch.long).to(hidden.device,
                                                                                                 non_blocking=True)
        tokens = self.speculator.propose(hidden.index_select(0, index), last, self.speculator_tokens).tolist()
        return [Candidate(row, "speculator", draft[:limit])
                for row, draft, limit in zip(rows, tokens, limits, strict=True)]

    def _hybrid(self, step: DraftStep, rows: list[int], limits: list[int],
                spec_drafts: list[Candidate | None]) -> list[Candidate | None]:
        """Per request: the suffix draft when its score >= the speculator's draft length, else the speculator's."""
        assert self.suffix is not None
        tokens, probs = self.suffix.draft(step, rows, limits)
        out: list[Candidate | None] = []
        for row, spec_cand, draft, p in zip(rows, spec_drafts, tokens, probs, strict=True):
            spec_len = len(spec_cand.token_ids) if spec_cand is not None else 0
            if draft and sum(p) >= spec_len:
                out.append(Candidate(row, "suffix", draft, p))
            else:
                out.append(spec_cand)
        return out
