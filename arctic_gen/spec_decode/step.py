"""The drafting seam's contract: what the model runner hands a proposer of the plugin each step.

vLLM's own `custom_class` proposer contract gives batch rows and the token table only. The plugin's runner patch
(`arctic_gen.patches.gpu_model_runner`) intercepts the runner's drafting call instead and hands every proposer
derived from `RunnerProposer` one `DraftStep`: request ids in batch order, the tokens sampled for each, the token
table, the requests that finished since the last step, how many draft tokens each request had verified, and the
target model's hidden states at the positions whose logits were sampled. Requests start the first time their id
is seen and stop when the scheduler reports them finished; nothing is guessed from row contents.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class SeamNotInstalled(RuntimeError):
    """A plugin proposer was called through vLLM's plain `custom_class` path: the runner patch is missing."""


@dataclass(frozen=True, slots=True)
class DraftStep:
    """One decoding step of the batch, as the model runner saw it (row i of every per-row field is request i)."""

    req_ids: Sequence[str]
    """Request ids in batch-row order (vLLM's `input_batch.req_ids`)."""
    sampled_token_ids: Sequence[Sequence[int]]
    """Tokens sampled this step per row (accepted drafts + one more); empty for partial prefills."""
    num_tokens_no_spec: np.ndarray
    """Tokens per row in the token table, the sampled ones included (drafts excluded)."""
    token_ids_cpu: np.ndarray
    """The batch's token table [max_num_reqs, max_model_len] (int32), row i = prompt + output of request i."""
    finished_req_ids: frozenset[str]
    """Requests that finished or were aborted since the previous step (they no longer have a row)."""
    num_draft_tokens: Sequence[int] | None
    """Draft tokens verified per row this step (None: no row had drafts)."""
    sample_hidden_states: Any
    """Target hidden states at the sampled positions (torch tensor [sum(num_draft_tokens[i] + 1), hidden]); row i's
    block starts at the sum of the earlier rows' (num_draft_tokens + 1)."""
    num_scheduled_tokens: int
    """Tokens the target model ran this step (all requests, prefill chunks included)."""
    max_model_len: int
    """Longest sequence the engine accepts; a draft never runs past it."""

    def hidden_rows(self) -> list[int]:
        """Index into `sample_hidden_states` of each row's last accepted position (-1 for rows with no sample)."""
        rows: list[int] = []
        offset = 0
        drafts = self.num_draft_tokens
        for i, sampled in enumerate(self.sampled_token_ids):
            rows.append(offset + len(sampled) - 1 if sampled else -1)
            offset += (drafts[i] if drafts is not None else 0) + 1
        return rows

    def draft_limits(self, rows: Sequence[int], wanted: int) -> list[int]:
        """Draft tokens each of `rows` may take: `wanted`, cut so the sequence stays below max_model_len."""
        room = self.max_model_len - 1 - self.num_tokens_no_spec[np.asarray(rows, dtype=np.int64)]
        return np.clip(room, 0, wanted).tolist()


class RunnerProposer(ABC):
    """Base of the plugin's proposers: built by vLLM as a `custom_class` proposer, driven through the runner seam."""

    @abstractmethod
    def propose_step(self, step: DraftStep) -> list[list[int]]:
        """Draft token ids per batch row ([] where the row gets no draft)."""

    def load_model(self, target_model: Any) -> None:  # noqa: B027 (optional hook: most proposers load nothing)
        """Called once by the runner with the target model after it is loaded (device and dtype come from it)."""

    def propose(self, *args: Any, **kwargs: Any) -> list[list[int]]:
        """vLLM's plain `custom_class` entry point: never used while the plugin's runner patch is installed."""
        raise SeamNotInstalled(
            f"{type(self).__name__} is driven by the arctic_gen runner patch (gpu_model_runner.drafting_seam), which "
            "is not installed in this process: load the plugin (do not exclude 'arctic_gen' from VLLM_PLUGINS)"
        )
