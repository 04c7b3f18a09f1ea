"""Ulysses (SP=2) and Shift Parallelism on two CPU ranks (vLLM mp executor, gloo): greedy tokens equal TP=1.

Each engine runs in its own process (the 2-rank engines bind one core per rank, `VLLM_CPU_OMP_THREADS_BIND="0|1"`)
and is shared by the checks of its model (module-scoped fixtures):
- tiny Llama with SmolLM2's head layout (9 query / 3 KV heads: an uneven split over two ranks, a padded query and
  KV slot on rank 1), SP=2 + Shift with threshold 4: a batch of five prompts (prefill and decode steps above the
  threshold: sequence-parallel), then one prompt alone (its prefill sequence-parallel, its decode steps of one
  token tensor-parallel); both modes are counted by every rank's `arctic_parallel_stats`.
- slow (load_tests/slow_tests.sh): SmolLM2-135M itself (real weights, 9 / 3 heads), SP=2 without Shift.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from arctic_gen.testing import cpu_vllm_env

cpu_vllm_env()
pytestmark = pytest.mark.vllm

TINY_BATCH = [
    "Hello world the model token stream server request",
    "One two three four five six seven eight nine ten",
    "The river and the mountain city under the moon",
    "Python rust code function variable rename return value",
    "Speculative decoding suffix tree cache draft accept",
]
TINY_ALONE = "Write essay about importance higher education student learning knowledge"
TINY_TOKENS = 12
TINY_HEADS, TINY_KV_HEADS = 9, 3  # uneven over two ranks (as SmolLM2): padding slots on rank 1
SHIFT_THRESHOLD = 4
SMOL_PROMPTS = ["The capital of France is", "Write a haiku about the sea."]
SMOL_TOKENS = 16

RESULT_MARK = "ARCTIC_PARALLEL_RESULT "


def _run(job: dict) -> dict:
    """Run `job` (see `_main`) in a fresh process with one core per rank; returns its JSON result."""
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    out = subprocess.run([sys.executable, __file__], input=json.dumps(job), capture_output=True, text=True,
                         timeout=900, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"parallel engine failed:\n{out.stderr[-6000:]}")
    # vLLM logs to stdout too (its shutdown lines come after ours): find our line by its mark.
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT_MARK)]
    return json.loads(lines[-1].removeprefix(RESULT_MARK))


def _main() -> None:
    """Engine process: {"model", "engine_kwargs", "rounds": [[prompt, ...], ...], "max_tokens"} -> per round the
    token ids of each prompt and every rank's step counters after the round."""
    job = json.loads(sys.stdin.read())
    import vllm.plugins

    vllm.plugins.load_general_plugins()
    from vllm import LLM, SamplingParams

    llm = LLM(model=job["model"], dtype="float32", max_model_len=512, kv_cache_memory_bytes=32 * 2**20,
              enforce_eager=True, **job["engine_kwargs"])
    params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], ignore_eos=True)
    rounds = []
    for prompts in job["rounds"]:
        outputs = llm.generate(prompts, params, use_tqdm=False)
        rounds.append({"token_ids": [list(o.outputs[0].token_ids) for o in outputs],
                       "stats": llm.collective_rpc("arctic_parallel_stats")})
    print(RESULT_MARK + json.dumps({"rounds": rounds}), flush=True)


@pytest.fixture(scope="module")
def tiny_runs():
    from arctic_gen.testing import reference_generate, tiny_llama

    model = str(tiny_llama(hidden=TINY_HEADS * 32, heads=TINY_HEADS, kv_heads=TINY_KV_HEADS))
    reference = reference_generate(model, [*TINY_BATCH, TINY_ALONE], TINY_TOKENS)
    parallel = _run({"model": model, "max_tokens": TINY_TOKENS, "rounds": [TINY_BATCH, [TINY_ALONE]],
                     "engine_kwargs": {"ulysses_sequence_parallel_size": 2, "enable_shift_parallel": True,
                                       "shift_parallel_threshold": SHIFT_THRESHOLD}})
    return [row["token_ids"] for row in reference], parallel["rounds"]


def test_tiny_llama_sp2_batch_matches_tp1(tiny_runs) -> None:
    reference, rounds = tiny_runs
    assert rounds[0]["token_ids"] == reference[: len(TINY_BATCH)]
    for rank_stats in rounds[0]["stats"]:  # 5 requests per step > threshold: every step sequence-parallel
        assert rank_stats["steps"]["sp"] >= TINY_TOKENS and rank_stats["steps"]["tp"] == 0


def test_tiny_llama_shift_prefill_sp_decode_tp(tiny_runs) -> None:
    reference, rounds = tiny_runs
    assert rounds[1]["token_ids"] == [reference[-1]]
    before, after = rounds[0]["stats"], rounds[1]["stats"]
    assert len(after) == 2  # both ranks report, and agree
    for old, new in zip(before, after, strict=True):
        assert new["steps"]["sp"] - old["steps"]["sp"] == 1  # the prompt's prefill
        assert new["steps"]["tp"] - old["steps"]["tp"] == TINY_TOKENS - 1  # one-token decode steps
        assert new["tokens"]["tp"] - old["tokens"]["tp"] == TINY_TOKENS - 1
    assert after[0] == after[1]


@pytest.mark.slow  # the same uneven split as the tiny Llama above, on real weights: 75+ s on 2 cores
def test_smollm2_sp2_matches_tp1() -> None:
    from arctic_gen.testing import reference_generate, smollm2

    model = str(smollm2())
    reference = [row["token_ids"] for row in reference_generate(model, SMOL_PROMPTS, SMOL_TOKENS)]
    parallel = _run({"model": model, "max_tokens": SMOL_TOKENS, "rounds": [SMOL_PROMPTS],
                     "engine_kwargs": {"ulysses_sequence_parallel_size": 2}})
    assert parallel["rounds"][0]["token_ids"] == reference
    assert all(s["steps"]["tp"] == 0 and s["steps"]["sp"] >= SMOL_TOKENS for s in parallel["rounds"][0]["stats"])


if __name__ == "__main__":
    _main()
