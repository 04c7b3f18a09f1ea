"""The suffix cache: one global tree over cached responses plus one tree per active request.

Per decoding step a request calls `add_active_response` (its new tokens) and `speculate` (a draft from its own
prompt+output tree or from the global tree of earlier responses, whichever scores higher). `update_batch` and
`speculate_batch` do the same for a whole batch of requests in one native call each: with small fast models the
per-request Python cost decides whether speculation pays off.

Eviction (FIFO over cached responses) keeps the global tree within `max_cached_tokens` tokens and
`max_cached_requests` responses. A response can be evicted while its request is still running; it then stops
being cached (its own tree keeps working until `stop_request`).
"""

from __future__ import annotations

from collections.abc import Hashable, KeysView, Sequence
from dataclasses import dataclass

import numpy as np

from arctic_gen._suffix_tree import SuffixCacheCore

TokenIds = np.ndarray | Sequence[int]

_INT32_MAX = 0x7FFFFFFF


@dataclass(slots=True)
class SuffixDraft:
    """One speculation result.

    token_ids: drafted tokens, most likely continuation first.
    parents: index of each token's parent in `token_ids` (-1 for the first); a path draft is [-1, 0, 1, ...].
    probs: estimated probability of each token (product of branch frequencies along the path).
    score: sum of `probs`, the expected number of accepted tokens; compare it with other drafters' lengths.
    match_len: length of the context suffix that was matched to produce the draft (0: no match).
    """

    token_ids: list[int]
    parents: list[int]
    probs: list[float]
    score: float
    match_len: int


@dataclass(slots=True)
class SuffixDraftBatch:
    """Drafts for a batch of requests (entry i belongs to the i-th request).

    token_ids: drafted tokens per request (the form vLLM's proposers return).
    scores: each draft's score (see SuffixDraft.score).
    probs: each draft token's estimated probability (see SuffixDraft.probs); from speculate_rows only, else None.
    """

    token_ids: list[list[int]]
    scores: list[float]
    probs: list[list[float]] | None = None

    def __len__(self) -> int:
        return len(self.token_ids)


class SuffixCache:
    """Suffix trees for Suffix Decoding, with eviction by token budget and by request count.

    Args:
        max_depth: longest suffix the trees keep (and longest context matched); the sliding window.
        max_cached_requests: most responses kept in the global tree; 0 disables the global tree, -1 means no
            limit on the count (the token budget still applies).
        max_cached_tokens: most tokens kept in the global tree (sum of cached response lengths).
    """

    def __init__(self, max_depth: int = 64, max_cached_requests: int = 100_000, max_cached_tokens: int = 1 << 21):
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        if max_cached_requests < -1 or max_cached_requests > _INT32_MAX:
            raise ValueError(f"max_cached_requests must be -1 (no limit), 0 (no global cache) or up to 2^31-1, "
                             f"got {max_cached_requests}")
        if max_cached_tokens < 0:
            raise ValueError(f"max_cached_tokens must be >= 0, got {max_cached_tokens}")
        self._max_depth = max_depth
        self._max_cached_requests = max_cached_requests
        self._max_cached_tokens = max_cached_tokens
        self._core = SuffixCacheCore(max_depth)
        # Active request -> [local tree slot, global sequence id or -1]: one lookup per call on the hot paths.
        self._active: dict[Hashable, list[int]] = {}
        self._free_slots: list[int] = []
        self._seqs: dict[Hashable, int] = {}  # cached request -> global sequence id (insertion order = FIFO)
        self._seq_owner: dict[int, Hashable] = {}
        self._next_seq = 0

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def max_depth(self) -> int:
        return self._max_depth

    @property
    def max_cached_requests(self) -> int:
        return self._max_cached_requests

    @property
    def max_cached_tokens(self) -> int:
        return self._max_cached_tokens

    @property
    def active_requests(self) -> KeysView[Hashable]:
        """Requests between `start_request` and `stop_request`."""
        return self._active.keys()

    @property
    def cached_requests(self) -> KeysView[Hashable]:
        """Requests whose responses are in the global tree."""
        return self._seqs.keys()

    @property
    def cached_tokens(self) -> int:
        """Tokens held by the global tree."""
        return int(self._core.global_num_tokens)

    # ---------------------------------------------------------------------------------------------- lifecycle
    def start_request(self, req_id: Hashable, prompt_token_ids: TokenIds) -> None:
        """Builds the request's own tree over its prompt and opens a slot for its response in the global tree
        (evicting the oldest responses if the request count would exceed the limit).

        Raises ValueError if the request is already active.
        """
        if req_id in self._active:
            raise ValueError(f"request {req_id!r} is already active")
        slot = self._free_slots.pop() if self._free_slots else len(self._active)
        if isinstance(prompt_token_ids, np.ndarray):
            self._core.start_ndarray(slot, prompt_token_ids)
        else:
            self._core.start_list(slot, list(prompt_token_ids))
        entry = [slot, -1]
        self._active[req_id] = entry
        if self._max_cached_requests == 0:
            return
        if req_id in self._seqs:
            self.evict_cached_response(req_id)
        entry[1] = self._assign_seq(req_id)
        if self._max_cached_requests > 0:
            while len(self._seqs) > self._max_cached_requests:
                self.evict_cached_response(next(iter(self._seqs)))

    def stop_request(self, req_id: Hashable) -> None:
        """Drops the request's own tree; its response stays cached until evicted. Raises ValueError if inactive."""
        entry = self._active.pop(req_id, None)
        if entry is None:
            raise ValueError(f"request {req_id!r} is not active")
        self._core.stop(entry[0])
        self._free_slots.append(entry[0])

    def add_active_response(self, req_id: Hashable, token_ids: TokenIds) -> None:
        """Appends generated tokens to the request's tree and to its cached response. Raises ValueError if
        the request is not active."""
        entry = self._active.get(req_id)
        if entry is None:
            raise ValueError(f"request {req_id!r} is not active")
        if type(token_ids) is list:
            cached = self._core.append_list(entry[0], entry[1], token_ids)
        elif isinstance(token_ids, np.ndarray):
            cached = self._core.append_ndarray(entry[0], entry[1], token_ids)
        else:
            cached = self._core.append_list(entry[0], entry[1], list(token_ids))
        if cached > self._max_cached_tokens:
            self._evict_to_budget()

    def update_batch(self, req_ids: Sequence[Hashable], token_lists: Sequence[TokenIds]) -> None:
        """`add_active_response` for many requests in one native call (request i gets token_lists[i]: a list of
        ints or an int32 array). The token budget is applied once, after the whole batch."""
        entries = self._entries(req_ids)
        cached = self._core.append_many([e[0] for e in entries], [e[1] for e in entries], list(token_lists))
        if cached > self._max_cached_tokens:
            self._evict_to_budget()

    def evict_cached_response(self, req_id: Hashable) -> None:
        """Removes the request's response from the global tree. Raises ValueError if it is not cached."""
        seq = self._seqs.pop(req_id, None)
        if seq is None:
            raise ValueError(f"request {req_id!r} is not cached")
        del self._seq_owner[seq]
        entry = self._active.get(req_id)
        if entry is not None and entry[1] == seq:
            entry[1] = -1  # still running, no longer cached
        if self._core.global_contains(seq):
            self._core.remove_global(seq)

    # -------------------------------------------------------------------------------------------- speculation
    def speculate(
        self,
        req_id: Hashable,
        context: TokenIds,
        max_spec_tokens: int | None = None,
        max_spec_factor: float = 1.0,
        max_spec_offset: float = 0.0,
        min_token_prob: float = 0.1,
    ) -> SuffixDraft:
        """Drafts a continuation of `context` (the request's latest tokens; only the last max_depth are used).

        The number of tokens is at most min(max_spec_tokens, max_spec_factor * match_len + max_spec_offset), and
        a path stops where its estimated probability falls under min_token_prob. Both trees are queried; the
        higher score wins (the request's own tree on ties). Raises ValueError if the request is not active.
        """
        entry = self._active.get(req_id)
        if entry is None:
            raise ValueError(f"request {req_id!r} is not active")
        k = self._max_depth if max_spec_tokens is None else max_spec_tokens
        if isinstance(context, np.ndarray):
            out = self._core.speculate_ndarray(entry[0], context, k, max_spec_factor, max_spec_offset,
                                               min_token_prob)
        else:
            out = self._core.speculate_list(entry[0], list(context), k, max_spec_factor, max_spec_offset,
                                            min_token_prob)
        return SuffixDraft(*out)

    def speculate_batch(
        self,
        req_ids: Sequence[Hashable],
        contexts: Sequence[TokenIds],
        max_spec_tokens: int | None = None,
        max_spec_factor: float = 1.0,
        max_spec_offset: float = 0.0,
        min_token_prob: float = 0.1,
    ) -> SuffixDraftBatch:
        """`speculate` for many requests in one native call (contexts: lists of ints or int32 arrays)."""
        slots = [e[0] for e in self._entries(req_ids)]
        k = self._max_depth if max_spec_tokens is None else max_spec_tokens
        drafts, scores = self._core.speculate_many(slots, list(contexts), k, max_spec_factor, max_spec_offset,
                                                   min_token_prob)
        return SuffixDraftBatch(drafts, scores)

    def speculate_rows(
        self,
        req_ids: Sequence[Hashable],
        token_table: np.ndarray,
        rows: Sequence[int],
        ends: Sequence[int],
        max_spec_tokens: Sequence[int],
        max_spec_factor: float = 1.0,
        max_spec_offset: float = 0.0,
        min_token_prob: float = 0.1,
    ) -> SuffixDraftBatch:
        """`speculate` for many requests whose tokens are rows of one 2-D int32 table (vLLM's `token_ids_cpu`):
        request i's context is token_table[rows[i], :ends[i]] (its last max_depth tokens), read in place."""
        slots = [e[0] for e in self._entries(req_ids)]
        drafts, scores, probs = self._core.speculate_rows(slots, token_table, list(rows), list(ends),
                                                          list(max_spec_tokens), max_spec_factor, max_spec_offset,
                                                          min_token_prob)
        return SuffixDraftBatch(drafts, scores, probs)

    # -------------------------------------------------------------------------------------------- diagnostics
    def check_integrity(self) -> str:
        """Empty string when every tree is consistent, else the first problem found. Slow (tests only)."""
        err = self._core.global_check_integrity()
        if err:
            return f"global tree: {err}"
        for req_id, (slot, seq) in self._active.items():
            if seq >= 0 and self._seqs.get(req_id) != seq:
                return f"request {req_id!r} appends to a response that is not cached"
            err = self._core.local_check_integrity(slot)
            if err:
                return f"tree of request {req_id!r}: {err}"
        for req_id, seq in self._seqs.items():
            if self._seq_owner.get(seq) != req_id:
                return f"sequence map out of sync for {req_id!r}"
        return ""

    def estimate_memory(self) -> dict[str, int]:
        """Bytes held by the global tree and by all per-request trees."""
        local = sum(self._core.local_estimate_memory(slot) for slot, _ in self._active.values())
        return {"global": int(self._core.global_estimate_memory()), "local": int(local)}

    # ---------------------------------------------------------------------------------------------- internals
    def _entries(self, req_ids: Sequence[Hashable]) -> list[list[int]]:
        try:
            return [self._active[r] for r in req_ids]
        except KeyError as e:
            raise ValueError(f"request {e.args[0]!r} is not active") from None

    def _assign_seq(self, req_id: Hashable) -> int:
        # Sequence ids count up and wrap at 2^31; an id still held by a cached response is skipped, or reclaimed
        # (evicting that response) after a full lap.
        for _ in range(_INT32_MAX):
            seq = self._next_seq
            self._next_seq = (self._next_seq + 1) & _INT32_MAX
            owner = self._seq_owner.get(seq)
            if owner is None:
                break
            if owner not in self._active:
                self.evict_cached_response(owner)
                break
        self._seqs[req_id] = seq
        self._seq_owner[seq] = req_id
        return seq

    def _evict_to_budget(self) -> None:
        while self._seqs and self._core.global_num_tokens > self._max_cached_tokens:
            self.evict_cached_response(next(iter(self._seqs)))
