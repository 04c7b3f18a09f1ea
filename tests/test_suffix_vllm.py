"""`speculative_config={"method": "suffix"}` served by our tree inside vLLM (the proposer alone:
test_spec_decode_seam)."""

from __future__ import annotations

import pytest


@pytest.mark.vllm  # in `make test`: CI's check that suffix speculation keeps greedy text (~17 s)
def test_vllm_greedy_text_is_unchanged_and_drafts_are_accepted() -> None:
    pytest.importorskip("vllm")
    from arctic_gen.testing import cpu_vllm_env, tiny_llama

    cpu_vllm_env()
    from vllm import LLM, SamplingParams

    prompts = ["one two three one two three one two three", "hello world hello world hello world"]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    outputs = {}
    accepted = 0
    for name, spec in [("plain", None), ("suffix", {"method": "suffix", "num_speculative_tokens": 8})]:
        llm = LLM(model=str(tiny_llama()), dtype="float32", max_model_len=256, enforce_eager=True,
                  kv_cache_memory_bytes=32 * 2**20, speculative_config=spec, disable_log_stats=False)
        outputs[name] = [r.outputs[0].token_ids for r in llm.generate(prompts, params)]
        if spec is not None:
            accepted = sum(m.value for m in llm.get_metrics() if m.name == "vllm:spec_decode_num_accepted_tokens")
        del llm
    assert outputs["suffix"] == outputs["plain"]
    assert accepted > 0
