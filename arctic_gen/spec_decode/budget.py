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

Acceptance probabilities: suffix drafts carry the tree's own estimates (path frequencies), calibrated by the ratio
of accepted to expected tokens measured on earlier suffix drafts; speculator drafts use the measured conditional
acceptance of each draft position. Both estimates are updated every step from what vLLM accepted (the tokens sampled
for a request are its accepted drafts plus one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
        for name in ("w", "sx", "sy", "sxx", "sxy"):
            setattr(self, name, getattr(self, name) * _DECAY)
        self.w += 1.0
        self.sx += tokens
        self.sy += seconds
        self.sxx += tokens * tokens
        self.sxy += tokens * seconds

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


@dataclass(slots=True)
class AcceptanceStats:
    """Measured acceptance of one draft source: per position (speculators) and against its own estimates (suffix)."""

    reached: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)
    expected_sum: float = 1.0  # prior: the drafter's own estimates are right
    accepted_sum: float = 1.0

    def record(self, verified: int, accepted: int, expected: float | None) -> None:
        while len(self.reached) < verified:
            self.reached.append(2.0)  # prior: one in two
            self.accepted.append(1.0)
        for i in range(verified):
            if i > accepted:  # position i was never reached: an earlier token was rejected
                break
            self.reached[i] = self.reached[i] * _DECAY + 1.0
            self.accepted[i] = self.accepted[i] * _DECAY + (1.0 if i < accepted else 0.0)
        if expected is not None:
            self.expected_sum = self.expected_sum * _DECAY + expected
            self.accepted_sum = self.accepted_sum * _DECAY + accepted

    def cumulative(self, n: int) -> list[float]:
        """Probability that each of the first n draft positions is accepted (product of conditional rates)."""
        out: list[float] = []
        p = 1.0
        for i in range(n):
            p *= self.accepted[i] / self.reached[i] if i < len(self.reached) else 0.5
            out.append(p)
        return out

    @property
    def calibration(self) -> float:
        """Accepted tokens per token the drafter expected (1.0: its estimates are right)."""
        return min(max(self.accepted_sum / self.expected_sum, 0.05), 2.0)

    @property
    def acceptance_rate(self) -> float:
        """Accepted share of verified draft tokens over the recent past."""
        reached = sum(self.reached) - 2.0 * len(self.reached)
        accepted = sum(self.accepted) - len(self.accepted)
        return accepted / reached if reached > 0 else 0.0


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
        for row, req_id in enumerate(step.req_ids):
            pending = self._pending.pop(req_id, None)
            if pending is None:
                continue
            sampled = step.sampled_token_ids[row]
            verified = verified_counts[row] if verified_counts is not None else 0
            if not sampled or verified == 0:
                continue
            accepted = min(len(sampled) - 1, verified)
            self.stats_for(pending.source).record(verified, accepted, pending.expected)

    def stats_for(self, source: str) -> AcceptanceStats:
        stats = self.stats.get(source)
        if stats is None:
            stats = self.stats[source] = AcceptanceStats()
        return stats

    def probabilities(self, cand: Candidate) -> list[float]:
        """Estimated acceptance probability of each token of `cand` (non-increasing along the draft)."""
        stats = self.stats_for(cand.source)
        if cand.probs is None:
            return stats.cumulative(len(cand.token_ids))
        scale = stats.calibration
        out: list[float] = []
        prev = 1.0
        for p in cand.probs:
            prev = min(prev, p * scale, 1.0)
            out.append(prev)
        return out

    def choose(self, candidates: list[Candidate], step: DraftStep) -> list[Candidate]:
        """The candidates with their drafts trimmed (possibly to nothing); remembers what was sent."""
        if self.enabled:
            keep = self._lengths([self.probabilities(c) for c in candidates], decoding=len(step.req_ids))
            for cand, n in zip(candidates, keep, strict=True):
                del cand.token_ids[n:]
        for cand in candidates:
            if cand.token_ids:
                self._pending[step.req_ids[cand.row]] = _Pending(
                    cand.source, None if cand.probs is None else sum(cand.probs[:len(cand.token_ids)]))
        return candidates

    def _lengths(self, probs: list[list[float]], decoding: int) -> list[int]:
        a, s = self.cost.coefficients()
        order = sorted(((p, j, c) for c, ps in enumerate(probs) for j, p in enumerate(ps)), key=lambda t: (-t[0], t[1]))
        keep = [0] * len(probs)
        tokens = float(decoding)
        gain = float(decoding)
        for p, j, c in order:
            if keep[c] != j:  # an earlier token of this draft was dropped
                continue
            if p * (a + s * tokens) < s * gain:
                break
            keep[c] = j + 1
            tokens += 1.0
            gain += p
        return keep
