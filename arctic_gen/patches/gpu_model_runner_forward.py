"""Patch of `GPUModelRunner._model_forward`: the per-step Shift between sequence and tensor parallelism.

With `ulysses_sequence_parallel_size` > 1 every model forward of a step goes through
`arctic_gen.parallel.shift.run_step`: the step's token count picks the mode (`ShiftPolicy`; always sequence-parallel
without Shift), sequence-parallel steps hand each SP rank its slice of the tokens and all-gather the result, so the
rest of the runner (logits, sampling, drafting) sees every token as usual. Forwards outside `_model_forward`
(vLLM's dummy and profiling runs) run with replicated tokens, which is always correct. The CPU runner inherits the
method. A separate module from `gpu_model_runner.py` (the drafting seam) so that each has one owner; both patch
different attributes of the same class, which the registry checks.

Same `_model_forward(input_ids, positions, intermediate_tensors, inputs_embeds, **model_kwargs)` in vLLM 0.26.0
and 0.32.0, called once per step from `execute_model`.
"""

from __future__ import annotations

import functools
from typing import Any

from packaging.specifiers import SpecifierSet

from arctic_gen.config import ArcticConfig
from arctic_gen.parallel import shift
from arctic_gen.patching import Patch

VERSIONS = SpecifierSet(">=0.26.0,<0.33")


def _build(cls: Any) -> dict[str, Any]:
    original = vars(cls)["_model_forward"]

    @functools.wraps(original)
    def _model_forward(self, input_ids=None, positions=None, intermediate_tensors=None, inputs_embeds=None,
                       **model_kwargs):
        parallel = ArcticConfig.from_vllm_config(self.vllm_config).parallel
        if parallel.ulysses_sequence_parallel_size == 1:
            return original(self, input_ids, positions, intermediate_tensors, inputs_embeds, **model_kwargs)
        return shift.run_step(functools.partial(original, self), shift.ShiftPolicy.of(parallel), input_ids,
                              positions, intermediate_tensors, inputs_embeds, **model_kwargs)

    return {"_model_forward": _model_forward}


PATCHES = (
    Patch(
        name="gpu_model_runner.shift_parallel_step",
        target="vllm.v1.worker.gpu_model_runner:GPUModelRunner",
        versions=VERSIONS,
        build=_build,
        replaces=("_model_forward",),
        notes="Same signature and single call site (execute_model) in 0.26.0 and 0.32.0; CPUModelRunner inherits.",
    ),
)
