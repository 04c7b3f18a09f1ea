"""`uniform_drafts`: every drafting request of a step verifies exactly num_speculative_tokens draft tokens.

vLLM's model runner (0.26 and 0.32) calls a step "uniform decode" only when every request's query length equals
1 + num_speculative_tokens (`GPUModelRunner._is_uniform_decode`), and its CUDA-graph dispatcher keeps full CUDA
graphs for uniform decode steps only (`CudagraphDispatcher.initialize_cudagraph_keys`). Any other step, a step
where no request drafts included, replays piecewise graphs with attention run eagerly layer by layer, or no graph
at all above the largest capture size: on a small model those launches, not the GPU work, set the step time.
Ragged drafts (what the suffix trees and the cost model produce) are therefore never uniform.

Here each drafting request's draft is padded to its full length with guesses: the last drafted token repeated, or
the token just sampled where the request has no draft. They are draft tokens like any other, verified by the
target, so greedy text is unchanged; a padding-only draft counts as source "filler" in the acceptance statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from arctic_gen.spec_decode.budget import Candidate
from arctic_gen.spec_decode.step import DraftStep

logger = logging.getLogger(__name__)

FILLER = "filler"
"""Candidate source of a draft made of padding only."""


def uniform_candidates(step: DraftStep, rows: Sequence[int], limits: Sequence[int],
                       drafts: Sequence[Candidate | None]) -> list[Candidate]:
    """One candidate per drafting row, each exactly `limits[i]` tokens long (`drafts[i]` padded, or filler)."""
    out: list[Candidate] = []
    for row, limit, cand in zip(rows, limits, drafts, strict=True):
        if cand is None or not cand.token_ids:
            out.append(Candidate(row, FILLER, [step.sampled_token_ids[row][-1]] * limit))
            continue
        missing = limit - len(cand.token_ids)
        if missing > 0:
            cand.token_ids.extend([cand.token_ids[-1]] * missing)
            if cand.probs is not None:
                cand.probs = [*cand.probs, *([0.0] * missing)]
        out.append(cand)
    return out


def warn_if_beyond_full_graphs(vllm_config: Any, num_speculative_tokens: int) -> None:
    """Log once at start-up when a full batch of uniform drafts is larger than vLLM's largest CUDA graph."""
    largest = vllm_config.compilation_config.max_cudagraph_capture_size
    max_num_seqs = vllm_config.scheduler_config.max_num_seqs
    tokens = max_num_seqs * (1 + num_speculative_tokens)
    if largest and tokens > largest:
        logger.warning(
            "uniform_drafts: %d requests x (1 + %d) draft slots = %d tokens per step, above the largest CUDA graph "
            "(%d tokens): steps with more than %d drafting requests run without CUDA graphs. Lower "
            "num_speculative_tokens or max_num_seqs, or raise compilation_config.max_cudagraph_capture_size.",
            max_num_seqs, num_speculative_tokens, tokens, largest, largest // (1 + num_speculative_tokens))
