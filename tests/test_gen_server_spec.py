"""`arctic-gen serve` with speculation (vLLM's ngram): the last message carries the request's exact speculation stats
(steps and accepted drafts counted per engine step: they match the engine's own counters), and greedy float32 text
still equals plain LLM.generate."""

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
            before = client.info().spec_accepted_tokens
            result = client.generate(text=prompt, max_tokens=48, temperature=0.0, ignore_eos=True)
            assert result.token_ids == ref["token_ids"] and result.text == ref["text"], prompt
            spec = result.speculation
            assert spec.enabled and spec.mean_tokens_per_step >= 1.0
            # Every engine step yields 1 token + its accepted drafts; alone on the engine, this request's accepted
            # drafts are what the engine-wide counter gained, less those of its last step cut by max_tokens.
            assert spec.decode_steps + spec.accepted_tokens == 48, spec
            cut = client.info().spec_accepted_tokens - before - spec.accepted_tokens
            assert 0 <= cut < SPEC["num_speculative_tokens"], spec
            assert spec.mean_tokens_per_step == pytest.approx(48 / spec.decode_steps)
            if spec.exact:  # vLLM >= 0.32 counts proposed drafts per request (arctic-gen serve turns that on)
                assert spec.accepted_tokens <= spec.draft_tokens
            accepted += spec.accepted_tokens
        assert accepted > 0
        engine = client.info()
        assert engine.spec_num_drafts > 0 and engine.spec_accepted_tokens > 0


def test_exact_steps_when_a_slow_consumer_gets_merged_deltas() -> None:
    """A stream read slower than the engine steps gets merged deltas (AsyncLLM's collector); the speculation stats
    still count engine steps exactly (the output-processor patch), not deltas."""
    import asyncio

    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from arctic_gen.server.core import EngineStats, GenerateInput, GenerationCore, Sampling
    from arctic_gen.testing import tiny_llama

    async def run():
        stats = EngineStats()
        args = AsyncEngineArgs(model=str(tiny_llama()), dtype="float32", max_model_len=512, enforce_eager=True,
                               kv_cache_memory_bytes=64 * 2**20, speculative_config=SPEC)
        engine = AsyncLLM.from_engine_args(args, stat_loggers=[stats.stat_logger_factory()])
        try:
            core = GenerationCore(engine, stats=stats)
            deltas = []
            inp = GenerateInput(text=PROMPTS[0], sampling=Sampling(temperature=0.0, max_tokens=48, ignore_eos=True))
            async for delta in core.generate(inp):
                deltas.append(delta)
                await asyncio.sleep(0.05)  # slower than an engine step of the tiny model
            return deltas, stats.spec_accepted_tokens
        finally:
            engine.shutdown()

    deltas, engine_accepted = asyncio.run(run())
    spec = deltas[-1].final.speculation
    assert sum(len(d.token_ids) for d in deltas) == 48
    assert len([d for d in deltas if d.token_ids]) < spec.decode_steps  # merged: fewer deltas than engine steps
    assert spec.decode_steps + spec.accepted_tokens == 48
    assert 0 <= engine_accepted - spec.accepted_tokens < SPEC["num_speculative_tokens"]  # last step cut at 48
