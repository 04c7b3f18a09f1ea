"""Patches of `vllm.v1.worker.gpu_model_runner`: the drafting seam.

vLLM's runner calls `propose_draft_token_ids(scheduler_output, sampled_token_ids, sampling_metadata, hidden_states,
sample_hidden_states, aux_hidden_states, spec_decode_metadata, common_attn_metadata, slot_mappings)` once per step
after sampling. The wrapper hands proposers derived from `arctic_gen.spec_decode.step.RunnerProposer` a
`DraftStep` (request ids, sampled tokens, token table, finished requests, verified draft counts, hidden states);
every other drafter goes to vLLM's original method unchanged. The CPU runner (`CPUModelRunner`) inherits the method,
so one patch serves both.

vLLM 0.26.0 and 0.32.0 have the same signature; in both the `custom_class` drafter is built with `(vllm_config)`,
gets `load_model(target_model)` after the target loads, and its method runs after the CPU bookkeeping with
`sampled_token_ids` as per-row Python lists. In both, `scheduler_output.finished_req_ids` names the requests that
finished (or were aborted) since the previous step.
"""

from __future__ import annotations

import functools
from typing import Any

from packaging.specifiers import SpecifierSet

from arctic_gen.patching import Patch
from arctic_gen.spec_decode.step import DraftStep, RunnerProposer

VERSIONS = SpecifierSet(">=0.26.0,<0.33")


def draft_step(runner: Any, scheduler_output: Any, sampled_token_ids: Any, sample_hidden_states: Any,
               spec_decode_metadata: Any) -> DraftStep:
    """The `DraftStep` of one runner step (the runner's own state, read, never changed)."""
    batch = runner.input_batch
    return DraftStep(
        req_ids=batch.req_ids,
        sampled_token_ids=sampled_token_ids,
        num_tokens_no_spec=batch.num_tokens_no_spec,
        token_ids_cpu=batch.token_ids_cpu,
        finished_req_ids=frozenset(scheduler_output.finished_req_ids),
        num_draft_tokens=None if spec_decode_metadata is None else spec_decode_metadata.num_draft_tokens,
        sample_hidden_states=sample_hidden_states,
        num_scheduled_tokens=scheduler_output.total_num_scheduled_tokens,
        max_model_len=runner.max_model_len,
    )


def _build(cls: Any) -> dict[str, Any]:
    original = vars(cls)["propose_draft_token_ids"]

    @functools.wraps(original)
    def propose_draft_token_ids(self, scheduler_output, sampled_token_ids, sampling_metadata, hidden_states,
                                sample_hidden_states, aux_hidden_states, spec_decode_metadata, common_attn_metadata,
                                slot_mappings):
        drafter = self.drafter
        if not isinstance(drafter, RunnerProposer) or not isinstance(sampled_token_ids, list):
            return original(self, scheduler_output, sampled_token_ids, sampling_metadata, hidden_states,
                            sample_hidden_states, aux_hidden_states, spec_decode_metadata, common_attn_metadata,
                            slot_mappings)
        return drafter.propose_step(
            draft_step(self, scheduler_output, sampled_token_ids, sample_hidden_states, spec_decode_metadata))

    return {"propose_draft_token_ids": propose_draft_token_ids}


PATCHES = (
    Patch(
        name="gpu_model_runner.drafting_seam",
        target="vllm.v1.worker.gpu_model_runner:GPUModelRunner",
        versions=VERSIONS,
        build=_build,
        replaces=("propose_draft_token_ids",),
        notes="Same signature and call site in 0.26.0 and 0.32.0 (custom_class drafters get CPU lists, after "
              "bookkeeping); CPUModelRunner inherits the method.",
    ),
)
