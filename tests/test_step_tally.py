"""STEP_TALLY counts engine steps per watched request from per-step outputs, by the caller's request id."""

from __future__ import annotations

from dataclasses import dataclass

from arctic_gen.server.step_tally import StepTally


@dataclass
class _Out:
    request_id: str
    new_token_ids: list[int]


@dataclass
class _State:
    external_req_id: str


def test_counts_steps_and_tokens_of_watched_requests_only() -> None:
    tally = StepTally()
    states = {"a-1234abcd": _State("a"), "b-9876fedc": _State("b")}
    a = tally.watch("a")
    tally.record([_Out("a-1234abcd", [5]), _Out("b-9876fedc", [7, 8])], states)  # b is not watched
    tally.record([_Out("a-1234abcd", [1, 2, 3])], states)                          # 2 drafts accepted
    tally.record([_Out("a-1234abcd", [])], states)                                 # a prefill chunk: no step
    tally.record([_Out("gone-00000000", [4])], states)                             # unknown to vLLM: ignored
    assert (a.steps, a.tokens) == (2, 4)
    assert tally.watched == 1
    tally.forget("a")
    tally.forget("a")  # idempotent
    assert tally.watched == 0
    tally.record([_Out("a-1234abcd", [9])], states)
    assert (a.steps, a.tokens) == (2, 4)  # no longer counted
