"""`speculative_config={"method": "suffix", ...}`: Suffix Decoding served by our native suffix trees.

vLLM builds this class in the process that runs the model (`arctic_gen.patches.engine_args` hands the method to
vLLM as a `custom_class` proposer) and calls `propose` once per step with the step's sampled tokens, each row's
token count and the batch's token table (`token_ids_cpu`, one row per request). Per step there is one native call
that appends every request's new tokens and one that drafts for every request, reading the contexts from the token
table in place.

The custom-proposer contract passes batch rows, not request ids, so requests are followed by row: a row continues
its request when its token count grew by exactly the sampled tokens and its first tokens are unchanged; anything
else (a new request in the row, a request moved to another row, a preempted request resumed) starts a request in the
cache from the row's tokens. A misidentified row can only cost draft quality: vLLM verifies every draft token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from arctic_gen.config import ArcticConfig, ArcticSpeculativeConfig
from arctic_gen.suffix import SuffixCache

_HEAD_TOKENS = 16  # tokens of a row compared to tell a continuing request from a new one


@dataclass(slots=True)
class _Row:
    key: int  # request key in the cache
    length: int  # tokens of the row at the last step
    head: bytes  # its first tokens


class SuffixProposer:
    """Drafts up to `num_speculative_tokens` tokens per request from the request's prompt and output and from
    earlier responses (`arctic_gen.suffix.SuffixCache`), with the suffix_* fields of ArcticSpeculativeConfig."""

    def __init__(self, vllm_config: Any) -> None:
        spec = ArcticConfig.from_vllm_config(vllm_config).speculative or ArcticSpeculativeConfig(method="suffix")
        self.config = spec
        self.num_speculative_tokens: int = vllm_config.speculative_config.num_speculative_tokens
        self.max_model_len: int = vllm_config.model_config.max_model_len
        self.cache = SuffixCache(spec.suffix_cache_max_depth, max_cached_requests=spec.suffix_cache_max_requests)
        self._rows: list[_Row | None] = []
        self._next_key = 0

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        """No model to load."""

    def propose(
        self,
        sampled_token_ids: Sequence[Sequence[int]],
        num_tokens_no_spec: np.ndarray,
        token_ids_cpu: np.ndarray,
        slot_mappings: Any = None,
        **kwargs: Any,
    ) -> list[list[int]]:
        """Draft token ids per batch row ([] for rows without new tokens, e.g. partial prefills)."""
        n_rows = len(sampled_token_ids)
        for i in range(n_rows, len(self._rows)):  # rows past the batch: their requests are gone
            self._drop_row(i)
        del self._rows[n_rows:]
        keys: list[int] = []
        chunks: list[Sequence[int]] = []
        spec_keys: list[int] = []
        rows: list[int] = []
        ends: list[int] = []
        limits: list[int] = []
        k, max_len = self.num_speculative_tokens, self.max_model_len
        for i, sampled in enumerate(sampled_token_ids):
            if not sampled:
                continue
            n = int(num_tokens_no_spec[i])
            key = self._track(i, n, len(sampled), token_ids_cpu)
            keys.append(key)
            chunks.append(sampled if type(sampled) is list else list(sampled))
            limit = min(k, max_len - n - 1)
            if limit > 0:
                spec_keys.append(key)
                rows.append(i)
                ends.append(n)
                limits.append(limit)
        drafts: list[list[int]] = [[] for _ in range(n_rows)]
        if not keys:
            return drafts
        self.cache.update_batch(keys, chunks)
        disable = self.config.disable_by_batch_size
        if spec_keys and (disable is None or len(keys) < disable):
            spec = self.config
            batch = self.cache.speculate_rows(spec_keys, token_ids_cpu, rows, ends, limits, spec.suffix_max_spec_factor,
                                              spec.suffix_max_spec_offset, spec.suffix_min_token_prob)
            for row, draft in zip(rows, batch.token_ids, strict=True):
                drafts[row] = draft
        return drafts

    def _track(self, i: int, n: int, new: int, table: np.ndarray) -> int:
        """The cache key of the request in row i (n tokens, the last `new` of them just sampled)."""
        row = self._rows[i] if i < len(self._rows) else None
        if row is not None and row.length + new == n and table[i, :len(row.head) // 4].tobytes() == row.head:
            row.length = n
            return row.key
        if row is not None:
            self.cache.stop_request(row.key)
        key = self._next_key
        self._next_key += 1
        known = n - new
        self.cache.start_request(key, table[i, :known])
        if len(self._rows) <= i:
            self._rows.extend([None] * (i + 1 - len(self._rows)))
        self._rows[i] = _Row(key, n, table[i, :min(_HEAD_TOKENS, known)].tobytes())
        return key

    def _drop_row(self, i: int) -> None:
        row = self._rows[i]
        if row is not None:
            self.cache.stop_request(row.key)
            self._rows[i] = None
