"""`arctic-gen serve` with speculation (vLLM's ngram until our methods land): the last message carries the
request's speculation stats, and greedy float32 text still equals plain LLM.generate."""

from __future__ import annotations

import json

import pytest

from arctic_gen.testing import cpu_vllm_env

cpu_vllm_env()
pytestmark = pytest.mark.vllm

# Prompts whose greedy continuations repeat, so n-gram drafts get accepted.
PROMPTS = ["one two three one two three one two three", "red green blue red green blue red green",
           "hello world hello world hello world", "the river the river the river the river"]
SPEC = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 2}


@pytest.fixture(scope="module")
def spec_server(tmp_path_factory):
    pytest.importorskip("vllm")
    from arctic_gen.testing import start_gen_server, tiny_llama

    log = tmp_path_factory.mktemp("gen_spec") / "server.log"
    srv = start_gen_server(tiny_llama(), ["--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes",
                                          str(64 * 2**20), "--enforce-eager", "--speculative-config",
                                          json.dumps(SPEC)], log_path=log)
    yield srv
    assert srv.stop() == 0, log.read_text()[-3000:]


def test_speculation_stats_and_same_text(spec_server) -> None:
    from arctic_gen.client import GenerateClient
    from arctic_gen.testing import reference_generate, tiny_llama

    reference = reference_generate(tiny_llama(), PROMPTS, max_tokens=48)
    accepted = 0
    with GenerateClient(spec_server.target, timeout=120) as client:
        info = client.info()
        assert info.speculative_config.startswith("ngram")
        for prompt, ref in zip(PROMPTS, reference, strict=True):
            result = client.generate(text=prompt, max_tokens=48, temperature=0.0, ignore_eos=True)
            assert result.token_ids == ref["token_ids"] and result.text == ref["text"], prompt
            spec = result.speculation
            assert spec.enabled and 0 < spec.decode_steps <= 48 and spec.mean_tokens_per_step >= 1.0
            if spec.exact:  # vLLM >= 0.32 counts drafts per request (arctic-gen serve turns that on)
                assert spec.accepted_tokens <= spec.draft_tokens
                assert spec.decode_steps + spec.accepted_tokens == 48
            accepted += spec.accepted_tokens
        assert accepted > 0
        engine = client.info()
        assert engine.spec_num_drafts > 0 and engine.spec_accepted_tokens > 0
