"""Exact per-request decode steps, counted from the engine core's per-step outputs.

AsyncLLM hands a stream's outputs to its consumer through a collector that merges them when the consumer is slower
than the engine (that is how a busy front end keeps up), so the number of deltas a stream sees is not the number of
engine steps. The engine core, however, sends one `EngineCoreOutput` per request per step in which the request got
tokens (1 + its accepted draft tokens under speculation). `arctic_gen.patches.output_processor` shows every batch of
them to `STEP_TALLY` before vLLM processes it; the tally counts only the requests a server asked it to watch, keyed
by the request id the server gave vLLM.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class StepCount:
    steps: int = 0
    """Engine steps that produced tokens for this request."""
    tokens: int = 0
    """Tokens those steps produced."""


class StepTally:
    """Steps and tokens per watched request. Single-threaded: the front end's event loop owns it."""

    def __init__(self) -> None:
        self._counts: dict[str, StepCount] = {}

    def watch(self, request_id: str) -> StepCount:
        """Start counting `request_id` (the id given to AsyncLLM); returns its live count."""
        count = self._counts[request_id] = StepCount()
        return count

    def forget(self, request_id: str) -> None:
        self._counts.pop(request_id, None)

    @property
    def watched(self) -> int:
        return len(self._counts)

    def record(self, outputs: Iterable[Any], request_states: Mapping[str, Any]) -> None:
        """One engine step's outputs (`EngineCoreOutput`s, keyed by vLLM's internal request ids);
        `request_states` maps those ids to vLLM's RequestState (which knows the id the caller gave)."""
        counts = self._counts
        if not counts:
            return
        for output in outputs:
            new_tokens = len(output.new_token_ids)
            if not new_tokens:
                continue
            state = request_states.get(output.request_id)
            if state is None:
                continue
            count = counts.get(state.external_req_id)
            if count is not None:
                count.steps += 1
                count.tokens += new_tokens


STEP_TALLY = StepTally()
"""The process's tally (one AsyncLLM output processor per front-end process)."""
