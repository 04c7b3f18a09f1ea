"""How many draft tokens each request verifies per step: a cost model instead of a fixed batch-size cut-off.

A verification step costs about `a + s * T` seconds for T scheduled tokens (a: the step's fixed cost — launches,
scheduling, weight reads; s: the extra cost per token). Both are fitted online from the wall time between
consecutive drafting calls (one step apart) with exponentially weighted least squares, so the model follows the
machine, the model size and the batch. A draft token whose estimated acceptance probability is p adds p expected
tokens and one scheduled token; it is kept when it raises the step's expected throughput (tokens per second):

    p * (a + s * T) >= s * (B + G)

for B decoding requests, T tokens scheduled so far and G expected accepted tokens so far, taken in decreasing p
(each request's tokens form a prefix, their probabilities never increase along the draft). With a flat step cost
(small batches on a GPU) every plausible token is kept; in a compute-bound step only near-certain ones are.

With `uniform_drafts` (`choose_uniform`) drafts are not trimmed: the step sends every (padded) draft or none,
whichever the same cost model expects to give more tokens per second.

Acceptance probabilities: suffix drafts carry the tree's own estimates (path frequencies), calibrated by the ratio
of accepted to expected tokens measured on earlier suffix drafts; speculator drafts use the measured conditional
acceptance of each draft position. Both estimates are updated every step from what vLLM accepted (the tokens sampled
for a request are its accepted drafts plus one).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from arctic_gen.spec_decode.step import DraftStep

_DECAY = 0.98  # weight of the past per observation (about the last 50 steps count)
_IDLE_FACTOR = 8.0  # a gap this many times the predicted step time (and over _IDLE_MIN_S) is idle time, not a step
_IDLE_MIN_S = 0.05
_PRIOR_FLAT_TOKENS = 256.0  # before the slope is measured: a step of this many tokens costs twice an empty one


@dataclass(slots=True)
class Candidate:
    """One request's draft before the budget trims it."""

    row: int
    source: str
    """"suffix" or "speculator"."""
    token_ids: list[int]
    probs: list[float] | None = None
    """The drafter's own per-token acceptance estimates (suffix); None: use the measured acceptance of `source`."""


@dataclass(slots=True)
class StepCostModel:
    """Step seconds ≈ intercept + slope * scheduled tokens, fitted with exponential forgetting."""

    w: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def record(self, tokens: int, seconds: float) -> None:
        self.w = self.w * _DECAY + 1.0
        self.sx = self.sx * _DECAY + tokens
        self.sy = self.sy * _DECAY + seconds
        self.sxx = self.sxx * _DECAY + tokens * tokens
        self.sxy = self.sxy * _DECAY + tokens * seconds

    @property
    def measured(self) -> bool:
        return self.w > 0.0

    def coefficients(self) -> tuple[float, float]:
        """(intercept, slope) in seconds and seconds per token; a flat prior until the tokens have varied."""
        if self.w <= 0.0:
            return 1e-3, 1e-3 / _PRIOR_FLAT_TOKENS
        mx, my = self.sx / self.w, self.sy / self.w
        var = self.sxx / self.w - mx * mx
        if var < 4.0:  # the tokens per step barely varied: the slope is not observable yet
            slope = my / (mx + _PRIOR_FLAT_TOKENS)
        else:
            slope = (self.sxy / self.w - mx * my) / var
        slope = max(slope, 1e-9)
        intercept = max(my - slope * mx, 1e-6)
        return intercept, slope

    def predict(self, tokens: int) -> float:
        a, s = self.coefficients()
        return a + s * tokens


class AcceptanceStats:
    """Measured acceptance of one draft source: per position (speculators) and against its own estimates (suffix).

    Counts decay by _DECAY per recorded draft; every position starts from a prior of one accepted in two."""

    def __init__(self) -> None:
        self.reached = np.zeros(0)
        self.accepted = np.zeros(0)
        self.expected_sum = 1.0  # prior: the drafter's own estimates are right
        self.accepted_sum = 1.0

    def record(self, verified: int, accepted: int, expected: float | None) -> None:
        self.record_many(np.array([verified]), np.array([accepted]), None if expected is None else expected)

    def record_many(self, verified: np.ndarray, accepted: np.ndarray, expected: float | None) -> None:
        """Drafts of one step: tokens verified and accepted per draft; `expected`: the drafter's own estimate of
        the accepted tokens, summed over these drafts (None for drafters without estimates)."""
        width = int(verified.max())
        if self.reached.size < width:
            grow = width - self.reached.size
            self.reached = np.concatenate((self.reached, np.full(grow, 2.0)))
            self.accepted = np.concatenate((self.accepted, np.full(grow, 1.0)))
        decay = _DECAY ** verified.size
        positions = np.arange(width)[None, :]
        # Position i was verified and reached (every earlier token accepted): i < verified and i <= accepted.
        reached = ((positions < verified[:, None]) & (positions <= accepted[:, None])).sum(axis=0)
        hits = (positions < accepted[:, None]).sum(axis=0)
        self.reached[:width] = self.reached[:width] * decay + reached
        self.accepted[:width] = self.accepted[:width] * decay + hits
        if expected is not None:
            self.expected_sum = self.expected_sum * decay + expected
            self.accepted_sum = self.accepted_sum * decay + float(accepted.sum())

    def cumulative(self, n: int) -> np.ndarray:
        """Probability that each of the first n draft positions is accepted (product of conditional rates)."""
        rates = np.full(n, 0.5)
        m = min(n, self.reached.size)
        rates[:m] = self.accepted[:m] / self.reached[:m]
        return np.cumprod(rates)

    @property
    def calibration(self) -> float:
        """Accepted tokens per token the drafter expected (1.0: its estimates are right)."""
        return min(max(self.accepted_sum / self.expected_sum, 0.05), 2.0)

    @property
    def acceptance_rate(self) -> float:
        """Accepted share of verified draft tokens over the recent past."""
        reached = float(self.reached.sum()) - 2.0 * self.reached.size
        accepted = float(self.accepted.sum()) - self.accepted.size
        return accepted / reached if reached > 0 else 0.0


def _layout(candidates: list[Candidate]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All draft tokens of a step as flat arrays: draft sizes, each token's candidate index and position in its
    draft, and the drafter's own acceptance estimate (NaN where the drafter gives none)."""
    sizes = np.fromiter((len(c.token_ids) for c in candidates), dtype=np.int64, count=len(candidates))
    total = int(sizes.sum())
    owner = np.repeat(np.arange(len(candidates)), sizes)
    position = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    own = np.fromiter(itertools.chain.from_iterable(c.probs if c.probs is not None else itertools.repeat(
        np.nan, len(c.token_ids)) for c in candidates), dtype=np.float64, count=total)
    return sizes, owner, position, own


@dataclass(slots=True)
class _Pending:
    source: str
    expected: float | None  # sum of the drafter's own estimates for the tokens sent (suffix), else None


class DraftBudget:
    """Trims each step's drafts to the length that maximizes expected tokens per second (see the module doc).

    `enabled=False` keeps every draft as proposed (the measurements still run, for the statistics).
    """

    def __init__(self, enabled: bool = True, clock: Callable[[], float] = time.perf_counter) -> None:
        self.enabled = enabled
        self.cost = StepCostModel()
        self.stats: dict[str, AcceptanceStats] = {}
        self._clock = clock
        self._last_call: float | None = None
        self._pending: dict[str, _Pending] = {}

    def observe(self, step: DraftStep) -> None:
        """Record the step that just ran: its wall time and what vLLM accepted of the drafts sent before it."""
        now = self._clock()
        if self._last_call is not None:
            gap = now - self._last_call
            if not self.cost.measured or gap < max(_IDLE_MIN_S, _IDLE_FACTOR * self.cost.predict(
                    step.num_scheduled_tokens)):
                self.cost.record(step.num_scheduled_tokens, gap)
        self._last_call = now
        for req_id in step.finished_req_ids:
            self._pending.pop(req_id, None)
        if not self._pending:
            return
        verified_counts = step.num_draft_tokens
        outcomes: dict[str, tuple[list[int], list[int], list[float]]] = {}
        for row, req_id in enumerate(step.req_ids):
            pending = self._pending.pop(req_id, None)
            if pending is None:
                continue
            sampled = step.sampled_token_ids[row]
            verified = verified_counts[row] if verified_counts is not None else 0
            if not sampled or verified == 0:
                continue
            lists = outcomes.get(pending.source)
            if lists is None:
                lists = outcomes[pending.source] = ([], [], [])
            lists[0].append(verified)
            lists[1].append(min(len(sampled) - 1, verified))
            if pending.expected is not None:
                lists[2].append(pending.expected)
        for source, (verified_list, accepted_list, expected_list) in outcomes.items():
            self.stats_for(source).record_many(np.array(verified_list), np.array(accepted_list),
                                               sum(expected_list) if expected_list else None)

    def stats_for(self, source: str) -> AcceptanceStats:
        stats = self.stats.get(source)
        if stats is None:
            stats = self.stats[source] = AcceptanceStats()
        return stats

    def choose(self, candidates: list[Candidate], step: DraftStep) -> list[Candidate]:
        """The candidates with their drafts trimmed (possibly to nothing); remembers what was sent.

        Vectorized over all draft tokens of the step (a 64-request batch of 16-token drafts is 1,024 tokens)."""
        if not candidates:
            return candidates
        sizes, owner, position, own = _layout(candidates)
        total = owner.size
        keep = sizes
        if self.enabled and total:
            keep = self._lengths(self._probabilities(candidates, own, owner, position), owner, position,
                                 decoding=len(step.req_ids), count=len(candidates))
            for cand, n in zip(candidates, keep.tolist(), strict=True):
                del cand.token_ids[n:]
        self._remember(candidates, step, own, owner, position < keep[owner])
        return candidates

    def choose_uniform(self, candidates: list[Candidate], step: DraftStep) -> list[Candidate]:
        """All candidates kept whole, or all emptied (`uniform_drafts`): drafting wins when the step's expected
        tokens per second with every draft, (B + G) / cost(B + N), is at least B / cost(B) without any (B decoding
        requests, N draft tokens, G of them expected to be accepted); remembers what was sent."""
        if not candidates:
            return candidates
        _, owner, position, own = _layout(candidates)
        total = owner.size
        if self.enabled and total:
            decoding = len(step.req_ids)
            gain = float(self._probabilities(candidates, own, owner, position).sum())
            if (decoding + gain) * self.cost.predict(decoding) < decoding * self.cost.predict(decoding + total):
                for cand in candidates:
                    cand.token_ids.clear()
                return candidates
        self._remember(candidates, step, own, owner, np.ones(total, dtype=bool))
        return candidates

    def _remember(self, candidates: list[Candidate], step: DraftStep, own: np.ndarray, owner: np.ndarray,
                  sent: np.ndarray) -> None:
        """Note each sent draft's source and expected accepted tokens, for `observe` in the next step."""
        expected = np.bincount(owner, weights=np.where(sent & ~np.isnan(own), own, 0.0), minlength=len(candidates))
        for i, cand in enumerate(candidates):
            if cand.token_ids:
                self._pending[step.req_ids[cand.row]] = _Pending(
                    cand.source, None if cand.probs is None else float(expected[i]))

    def _probabilities(self, candidates: list[Candidate], own: np.ndarray, owner: np.ndarray,
                       position: np.ndarray) -> np.ndarray:
        """Estimated acceptance probability of every draft token (non-increasing along each draft: suffix path
        probabilities are products along the path, speculator ones products of per-position rates): the drafter's
        own estimate times its source's calibration, or the source's measured per-position rate."""
        sources = sorted({c.source for c in candidates})
        source_of = np.fromiter((sources.index(c.source) for c in candidates), dtype=np.int64,
                                count=len(candidates))[owner]
        scale = np.array([self.stats_for(s).calibration for s in sources])[source_of]
        width = int(position.max()) + 1
        measured = np.array([self.stats_for(s).cumulative(width) for s in sources]).reshape(len(sources), width)
        return np.where(np.isnan(own), measured[source_of, position], np.minimum(own * scale, 1.0))

    def _lengths(self, p: np.ndarray, owner: np.ndarray, position: np.ndarray, decoding: int,
                 count: int) -> np.ndarray:
        """Tokens kept per draft: the longest run of all tokens in decreasing probability for which each added
        token still raises expected tokens per second (see the module doc)."""
        a, s = self.cost.coefficients()
        order = np.lexsort((position, -p))  # by probability, earlier positions first on ties
        p = p[order]
        tokens = decoding + np.arange(p.size)  # scheduled tokens before each candidate token is added
        gain = decoding + np.concatenate(([0.0], np.cumsum(p)[:-1]))  # expected tokens before it
        fails = np.nonzero(p * (a + s * tokens) < s * gain)[0]
        kept = p.size if fails.size == 0 else int(fails[0])
        return np.bincount(owner[order[:kept]], minlength=count)
