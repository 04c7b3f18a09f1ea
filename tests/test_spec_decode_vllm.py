"""Speculation through the runner seam inside vLLM (CPU, float32): greedy text identical with and without each
method, drafts really proposed and verified, and each request's suffix-cache entry holding exactly its own tokens
while requests sharing one chat template finish at different times and move between batch rows."""

from __future__ import annotations

import pytest

from arctic_gen.testing import cpu_vllm_env

cpu_vllm_env()
pytestmark = pytest.mark.vllm

PROMPTS = ["one two three one two three one two three", "hello world hello world hello world",
           "the model token stream the model token stream", "red green blue red green"]


def _counters(llm) -> dict[str, float]:
    return {m.name.removeprefix("vllm:spec_decode_"): m.value for m in llm.get_metrics()
            if m.name.startswith("vllm:spec_decode_num_") and hasattr(m, "value")}


def _run(model: str, spec: dict | None, prompts: list, max_tokens: int | list[int] = 40, **engine):
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="float32", max_model_len=512, enforce_eager=True, kv_cache_memory_bytes=32 * 2**20,
              speculative_config=spec, disable_log_stats=False, **engine)
    if isinstance(max_tokens, int):
        max_tokens = [max_tokens] * len(prompts)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in max_tokens]
    outputs = llm.generate(prompts, params)
    return llm, outputs


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("vllm")
    from arctic_gen.testing import random_speculator, tiny_llama

    model = tiny_llama()
    llm, outputs = _run(str(model), None, PROMPTS)
    reference = [list(o.outputs[0].token_ids) for o in outputs]
    del llm
    return {"model": str(model), "reference": reference, "lstm": str(random_speculator(model, "sum_lstm")),
            "mlp": str(random_speculator(model, "sum_rnn"))}


@pytest.mark.parametrize("variant", ["suffix", "suffix-uniform", "arctic-mlp", "arctic-lstm", "arctic-lstm+suffix",
                                     "arctic-lstm+suffix-uniform"])
def test_greedy_text_is_identical_with_speculation(tiny, variant: str) -> None:
    uniform = variant.endswith("-uniform")
    if variant.startswith("suffix"):
        spec = {"method": "suffix", "num_speculative_tokens": 8, "adaptive_draft_length": False,
                "uniform_drafts": uniform}
    else:
        spec = {"method": "arctic", "model": tiny["lstm" if "lstm" in variant else "mlp"], "num_speculative_tokens": 3,
                "enable_suffix_decoding": "+suffix" in variant, "disable_by_batch_size": 64, "uniform_drafts": uniform}
        if variant == "arctic-mlp" or uniform:
            spec["adaptive_draft_length"] = False  # every draft is verified: the strictest check
    llm, outputs = _run(tiny["model"], spec, PROMPTS)
    counters = _counters(llm)
    drafter = llm.collective_rpc(lambda self: type(self.model_runner.drafter).__name__)
    del llm
    assert [list(o.outputs[0].token_ids) for o in outputs] == tiny["reference"]
    assert drafter == ["SuffixProposer" if variant.startswith("suffix") else "ArcticProposer"]
    assert counters["num_drafts"] > 0 and counters["num_draft_tokens"] > 0
    if variant.startswith("suffix"):  # the prompts repeat themselves: the trees predict well
        assert counters["num_accepted_tokens"] > 0
    if uniform:  # every draft vLLM verified had all num_speculative_tokens tokens
        assert counters["num_draft_tokens"] == spec["num_speculative_tokens"] * counters["num_drafts"]


def test_shared_template_requests_moving_rows_keep_their_own_cache_entries(tiny, monkeypatch) -> None:
    from transformers import AutoTokenizer

    from arctic_gen.suffix import SuffixCache

    seen: dict[str, list[int]] = {}

    class RecordingCache(SuffixCache):
        def start_request(self, req_id, prompt_token_ids) -> None:
            assert req_id not in seen, f"request {req_id} started twice"
            seen[req_id] = [int(t) for t in prompt_token_ids]
            super().start_request(req_id, prompt_token_ids)

        def update_batch(self, req_ids, token_lists) -> None:
            for req_id, tokens in zip(req_ids, token_lists, strict=True):
                seen[req_id].extend(int(t) for t in tokens)
            super().update_batch(req_ids, token_lists)

    monkeypatch.setattr("arctic_gen.spec_decode.suffix.SuffixCache", RecordingCache)
    tok = AutoTokenizer.from_pretrained(tiny["model"])
    # One chat template, same-length user turns: every prompt shares its head and its length.
    users = ["red green blue red", "one two three one", "hello world hello world", "tree leaf water fire",
             "sun moon star sun", "river city rain snow"]
    texts = [tok.apply_chat_template([{"role": "user", "content": u}], add_generation_prompt=True, tokenize=False)
             for u in users]
    prompts = [{"prompt_token_ids": tok(text, add_special_tokens=False).input_ids} for text in texts]
    lengths = [5, 30, 9, 24, 14, 40]  # finish at different steps; two rows: later requests take freed rows
    spec = {"method": "suffix", "num_speculative_tokens": 6}
    llm, outputs = _run(tiny["model"], spec, prompts, lengths, max_num_seqs=2)
    del llm
    plain, plain_outputs = _run(tiny["model"], None, prompts, lengths, max_num_seqs=2)
    del plain
    assert [o.outputs[0].token_ids for o in outputs] == [o.outputs[0].token_ids for o in plain_outputs]
    assert len(seen) == len(prompts)
    for out in outputs:
        expected = list(out.prompt_token_ids) + list(out.outputs[0].token_ids)
        matches = [r for r, tokens in seen.items() if tokens[:len(expected)] == expected]
        assert len(matches) == 1, f"no cache entry holds exactly request {out.request_id}'s tokens"
        extra = len(seen[matches[0]]) - len(expected)
        assert 0 <= extra <= spec["num_speculative_tokens"]  # tokens sampled past max_tokens in the last step


@pytest.mark.slow  # the tiny-Llama variants above keep the same check in CI
def test_smollm2_greedy_text_is_identical_with_arctic_and_suffix() -> None:
    pytest.importorskip("vllm")
    from arctic_gen.testing import random_speculator, smollm2

    model = smollm2()
    prompts = ["Rewrite this code renaming the variable x to total:\ndef f(x):\n    x = x + 1\n    return x\n",
               "List the numbers from one to ten: one, two,"]
    outputs = {}
    for name, spec in [("plain", None),
                       ("arctic", {"method": "arctic", "model": str(random_speculator(model, "sum_lstm", inner_dim=32)),
                                   "num_speculative_tokens": 3, "enable_suffix_decoding": True,
                                   "disable_by_batch_size": 64})]:
        llm, result = _run(str(model), spec, prompts, 32)
        outputs[name] = [list(o.outputs[0].token_ids) for o in result]
        if spec is not None:
            assert _counters(llm)["num_drafts"] > 0
        del llm
    assert outputs["arctic"] == outputs["plain"]
