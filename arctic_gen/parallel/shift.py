"""Shift Parallelism: per step, run the SP ranks as Ulysses sequence parallelism or as tensor parallelism.

Arctic's rule: a step whose scheduled tokens are at most `shift_parallel_threshold` runs tensor-parallel (small
decode steps: latency), a larger one runs sequence-parallel (large prefills: throughput). Without Shift every step
runs sequence-parallel. Both modes read and write the same KV cache: each SP rank caches its own heads
(`arctic_gen.parallel.ulysses.HeadLayout`) in both.

Tensor-parallel mode here: every SP rank holds every token of the step; attention is split by heads across the
SP ranks (each attends over its own cached heads, the outputs are all-gathered); the dense layers run on the
TP shard that every SP rank holds. Sequence-parallel mode: `ulysses.sequence_parallel`.

`StepCounters` counts the steps and tokens each mode ran (per worker process); `ModeStats` is what a worker reports.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from arctic_gen.config import ArcticParallelConfig
from arctic_gen.parallel import ulysses


class StepMode(str, enum.Enum):
    SEQUENCE_PARALLEL = "sp"
    TENSOR_PARALLEL = "tp"


@dataclass(frozen=True)
class ShiftPolicy:
    """Which mode a step of `num_tokens` scheduled tokens runs in."""

    enabled: bool
    threshold: int

    @classmethod
    def of(cls, config: ArcticParallelConfig) -> ShiftPolicy:
        return cls(config.enable_shift_parallel, config.shift_parallel_threshold)

    def mode(self, num_tokens: int) -> StepMode:
        if self.enabled and num_tokens <= self.threshold:
            return StepMode.TENSOR_PARALLEL
        return StepMode.SEQUENCE_PARALLEL


@dataclass
class StepCounters:
    """Model steps (and their tokens) per mode in this worker process."""

    steps: dict[str, int] = field(default_factory=lambda: {m.value: 0 for m in StepMode})
    tokens: dict[str, int] = field(default_factory=lambda: {m.value: 0 for m in StepMode})

    def record(self, mode: StepMode, num_tokens: int) -> None:
        self.steps[mode.value] += 1
        self.tokens[mode.value] += num_tokens

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {"steps": dict(self.steps), "tokens": dict(self.tokens)}


COUNTERS = StepCounters()
"""This process's counters (read by the workers' `arctic_parallel_stats` RPC)."""


def _rows(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, positions: torch.Tensor | None) -> int:
    for tensor in (input_ids, inputs_embeds):
        if tensor is not None:
            return int(tensor.shape[0])
    if positions is None:
        raise ValueError("a model step needs input_ids, inputs_embeds or positions")
    return int(positions.shape[-1])


def _slice_tree(value: Any, piece: ulysses.SequenceSlice) -> Any:
    """Slice the token dimension of a pipeline stage's IntermediateTensors (or a tensor)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return ulysses.take_slice(value, piece)
    from vllm.sequence import IntermediateTensors

    if isinstance(value, IntermediateTensors):
        return IntermediateTensors({k: ulysses.take_slice(t, piece) for k, t in value.tensors.items()})
    raise TypeError(f"cannot split {type(value).__name__} by sequence")


def _gather_tree(value: Any, piece: ulysses.SequenceSlice) -> Any:
    if isinstance(value, torch.Tensor):
        return ulysses.gather_slices(value, piece)
    from vllm.sequence import IntermediateTensors

    if isinstance(value, IntermediateTensors):
        return IntermediateTensors({k: ulysses.gather_slices(t, piece) for k, t in value.tensors.items()})
    if isinstance(value, tuple):  # e.g. (hidden_states, aux_hidden_states)
        return tuple(_gather_tree(v, piece) if v is not None else None for v in value)
    if isinstance(value, list):
        return [_gather_tree(v, piece) for v in value]
    raise TypeError(f"cannot gather {type(value).__name__} by sequence")


def run_step(forward: Callable[..., Any], policy: ShiftPolicy, input_ids: torch.Tensor | None,
             positions: torch.Tensor | None, intermediate_tensors: Any, inputs_embeds: torch.Tensor | None,
             **model_kwargs: Any) -> Any:
    """One model forward in the mode the policy picks; the result covers every token on every rank."""
    num_tokens = _rows(input_ids, inputs_embeds, positions)
    mode = policy.mode(num_tokens)
    COUNTERS.record(mode, num_tokens)
    if mode is StepMode.TENSOR_PARALLEL:
        return forward(input_ids=input_ids, positions=positions, intermediate_tensors=intermediate_tensors,
                       inputs_embeds=inputs_embeds, **model_kwargs)
    with ulysses.sequence_parallel(num_tokens) as piece:
        out = forward(
            input_ids=None if input_ids is None else ulysses.take_slice(input_ids, piece),
            positions=None if positions is None else ulysses.take_slice(positions, piece, dim=positions.dim() - 1),
            intermediate_tensors=_slice_tree(intermediate_tensors, piece),
            inputs_embeds=None if inputs_embeds is None else ulysses.take_slice(inputs_embeds, piece),
            **model_kwargs,
        )
        return _gather_tree(out, piece)
