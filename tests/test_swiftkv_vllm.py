"""SwiftKV in vLLM (CPU, float32): K = L is plain Llama; K < L skips prompt tokens in layers >= K.

Engines run in one subprocess (this file's `__main__`), one after the other, with chunked prefill (small token
budget, so prompts are split) and prefix caching (every prompt list runs twice: the second run hits the cache).
Forward hooks on every layer's MLP count the rows each layer processes. The SmolLM2 K = L check is slow (its own
worker, load_tests/slow_tests.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arctic_gen.testing import cpu_vllm_env, smollm2, tiny_llama

pytestmark = pytest.mark.vllm

PROMPTS = [
    "The river runs to the mountain city and the sun and the moon are one two three four five " * 3,
    "Hello world, the model streams tokens from the server to the client.",
    "one two three four five six seven eight nine ten " * 4,
]
MAX_TOKENS = 12


def _run_engines(jobs: list[dict], tmp: Path) -> list[dict]:
    cpu_vllm_env()
    spec = tmp / "jobs.json"
    spec.write_text(json.dumps(jobs))
    out = subprocess.run([sys.executable, __file__, str(spec)], capture_output=True, text=True, timeout=900,
                         env=dict(os.environ))
    if out.returncode != 0:
        raise RuntimeError(f"engine worker failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


SMOL_PROMPTS = ["Write one sentence about rivers.", "What is the capital of France? Answer briefly, then explain."]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    """Every engine of this module, run once in one worker process."""
    from arctic_gen.training.swiftkv.checkpoint import build_swiftkv_checkpoint

    tmp = tmp_path_factory.mktemp("swiftkv")
    llama = tiny_llama(layers=4)
    models = {
        "plain": str(llama),
        "k4": str(build_swiftkv_checkpoint(llama, tmp / "k4", 4)),
        "k3": str(build_swiftkv_checkpoint(llama, tmp / "k3", 3)),
        "k2g2": str(build_swiftkv_checkpoint(llama, tmp / "k2g2", 2, key_value_group_size=2)),
    }
    jobs = [{"name": name, "model": path, "prompts": PROMPTS, "max_tokens": MAX_TOKENS}
            for name, path in models.items()]
    return {r["name"]: {**r, "model": models[r["name"]]} for r in _run_engines(jobs, tmp)}


@pytest.fixture(scope="module")
def smol_results(tmp_path_factory) -> dict[str, dict]:
    from arctic_gen.training.swiftkv.checkpoint import build_swiftkv_checkpoint

    tmp = tmp_path_factory.mktemp("swiftkv_smol")
    smol = smollm2()
    layers = json.loads((smol / "config.json").read_text())["num_hidden_layers"]
    models = {"smol_plain": str(smol), "smol_kL": str(build_swiftkv_checkpoint(smol, tmp / "smol-kL", layers))}
    jobs = [{"name": name, "model": path, "prompts": SMOL_PROMPTS, "max_tokens": 16, "repeat": 1}
            for name, path in models.items()]
    return {r["name"]: {**r, "model": models[r["name"]]} for r in _run_engines(jobs, tmp)}


def test_k_equals_l_is_plain_llama_tiny(results):
    plain, swift = results["plain"], results["k4"]
    assert swift["runs"][0]["tokens"] == plain["runs"][0]["tokens"]
    assert swift["runs"][0]["layer_rows"] == plain["runs"][0]["layer_rows"]


def test_later_layers_see_fewer_tokens(results):
    """K = L - 1 with groups of one starts exactly as the teacher (init copies the teacher's projections), so the
    text must equal plain Llama while layer 3 only sees the rows that need logits."""
    plain, swift = results["plain"], results["k3"]
    for run in (0, 1):
        assert swift["runs"][run]["tokens"] == plain["runs"][0]["tokens"]
    first = swift["runs"][0]
    rows = first["layer_rows"]
    assert rows[0] == rows[1] == rows[2] == plain["runs"][0]["layer_rows"][0]
    prompt_tokens = sum(first["prompt_lens"])
    generated = len(PROMPTS) * MAX_TOKENS
    # every prompt token runs layers < K; layers >= K see one row per prefill chunk plus the decode tokens
    assert rows[0] >= prompt_tokens + generated - len(PROMPTS)
    chunks_max = -(-prompt_tokens // first["chunk"]) + len(PROMPTS)
    assert generated - len(PROMPTS) <= rows[3] <= generated - len(PROMPTS) + chunks_max
    assert rows[3] < rows[0] / 2
    # the second run hits the prefix cache: fewer rows in layers < K, same text
    assert swift["runs"][1]["layer_rows"][0] < rows[0]


def test_across_kv_matches_torch_student(results):
    """K = L/2 with AcrossKV groups of two: vLLM (skip path, chunked prefill, prefix cache hit on the second run)
    produces the greedy text of the independent torch implementation the distillation trains."""
    from arctic_gen.training.swiftkv.reference import greedy

    swift = results["k2g2"]
    expected = greedy(swift["model"], swift["runs"][0]["prompt_ids"], MAX_TOKENS)
    assert swift["runs"][0]["tokens"] == expected
    assert swift["runs"][1]["tokens"] == expected
    rows = swift["runs"][0]["layer_rows"]
    assert rows[2] == rows[3] < rows[0]


@pytest.mark.slow  # the tiny Llama's K = L check above on real weights (SmolLM2 engines: a longer run)
def test_k_equals_l_is_plain_llama_smollm2(smol_results):
    plain, swift = smol_results["smol_plain"], smol_results["smol_kL"]
    assert swift["runs"][0]["tokens"] == plain["runs"][0]["tokens"]
    assert len(swift["runs"][0]["tokens"][0]) == 16


# --- the engine worker (a subprocess: one vLLM engine at a time, in-process engine core) -----------------------


def _worker(spec_path: str) -> None:
    import gc

    cpu_vllm_env()
    from vllm import LLM, SamplingParams

    jobs = json.loads(Path(spec_path).read_text())
    chunk = 32
    results = []
    for job in jobs:
        llm = LLM(model=job["model"], dtype="float32", max_model_len=512, kv_cache_memory_bytes=64 * 2**20,
                  enforce_eager=True, enable_chunked_prefill=True, enable_prefix_caching=True,
                  max_num_batched_tokens=chunk, max_num_seqs=8, block_size=32)
        counts: list[int] = []

        def install(model, counts=counts):
            layers = model.model.layers
            counts.extend([0] * len(layers))
            for i, layer in enumerate(layers):
                def hook(_module, args, _out, i=i):
                    counts[i] += int(args[0].shape[0])
                layer.mlp.register_forward_hook(hook)
            return len(layers)

        llm.apply_model(install)
        tokenizer = llm.get_tokenizer()
        prompt_ids = [tokenizer(p)["input_ids"] for p in job["prompts"]]
        params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], ignore_eos=True)
        runs = []
        for _ in range(job.get("repeat", 2)):
            before = list(counts)
            outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
            runs.append({"tokens": [list(o.outputs[0].token_ids) for o in outputs],
                         "layer_rows": [a - b for a, b in zip(counts, before, strict=True)],
                         "prompt_lens": [len(ids) for ids in prompt_ids], "prompt_ids": prompt_ids, "chunk": chunk})
        results.append({"name": job["name"], "runs": runs})
        del llm
        gc.collect()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1])
