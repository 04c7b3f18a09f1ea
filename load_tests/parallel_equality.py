"""Ulysses / Shift Parallelism check: greedy tokens of a TP x SP engine against TP=1, plus prefill timing.

    python load_tests/parallel_equality.py --model DIR [--sp 2] [--tp 1] [--shift-threshold 16] [--cpu]
        [--prompt-tokens 48] [--prompts 4] [--max-tokens 16] [--out DIR]

Runs each engine in its own process: the reference (TP=1, SP=1), then the parallel one (SP ranks x TP ranks, with
Shift when --shift-threshold is given). Random word prompts of about --prompt-tokens tokens, greedy decoding
(ignore_eos), first the batch together, then the first prompt alone (its prefill is sequence-parallel, its decode
tensor-parallel under Shift). Writes `parallel_equality.json` to --out (default $OUT or .) and prints one summary
line; exit status 1 when the tokens differ. `--cpu`: float32, one core per rank (VLLM_CPU_OMP_THREADS_BIND), small
KV cache. On GPUs it needs SP x TP GPUs (NCCL); float32 there too unless --dtype is given.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("the river mountain city under a quiet moon where every stone and leaf and fire speaks of water wind rain "
         "snow and the long road home through green fields").split()

RESULT_MARK = "ARCTIC_PARALLEL_RESULT "


def _prompts(count: int, tokens: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(tokens)) for _ in range(count)]


def _engine(job: dict) -> dict:
    import vllm.plugins

    vllm.plugins.load_general_plugins()
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=job["model"], **job["engine_kwargs"])
    load_s = time.perf_counter() - start
    params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], ignore_eos=True)
    one_token = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    llm.generate(job["prompts"][:1], one_token, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    llm.generate(job["prompts"], one_token, use_tqdm=False)
    prefill_s = time.perf_counter() - start
    batch = llm.generate(job["prompts"], params, use_tqdm=False)
    alone = llm.generate(job["prompts"][:1], params, use_tqdm=False)
    sp = job["engine_kwargs"].get("ulysses_sequence_parallel_size", 1)
    return {"load_s": round(load_s, 2), "prefill_batch_s": round(prefill_s, 4),
            "batch": [list(o.outputs[0].token_ids) for o in batch], "alone": list(alone[0].outputs[0].token_ids),
            "steps": llm.collective_rpc("arctic_parallel_stats")[0]["steps"] if sp > 1 else None}


def _run(job: dict, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--engine-job"], input=json.dumps(job), capture_output=True,
                         text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"engine failed ({job['engine_kwargs']}):\n{out.stderr[-6000:]}")
    # vLLM logs to stdout too (its shutdown lines come after ours): find our line by its mark.
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT_MARK)]
    return json.loads(lines[-1].removeprefix(RESULT_MARK))


def main() -> None:
    if sys.argv[1:] == ["--engine-job"]:
        print(RESULT_MARK + json.dumps(_engine(json.loads(sys.stdin.read()))), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sp", type=int, default=2)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--shift-threshold", type=int, help="enable Shift Parallelism with this threshold")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()

    common = {"dtype": args.dtype, "max_model_len": args.max_model_len, "enforce_eager": True}
    env = dict(os.environ)
    if args.cpu:
        common["kv_cache_memory_bytes"] = 64 * 2**20
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    prompts = _prompts(args.prompts, args.prompt_tokens)
    job = {"model": args.model, "prompts": prompts, "max_tokens": args.max_tokens}
    reference = _run({**job, "engine_kwargs": common}, env)
    parallel_kwargs = {**common, "tensor_parallel_size": args.tp, "ulysses_sequence_parallel_size": args.sp}
    if args.shift_threshold is not None:
        parallel_kwargs.update(enable_shift_parallel=True, shift_parallel_threshold=args.shift_threshold)
    parallel_env = dict(env)
    if args.cpu:
        world = args.tp * args.sp
        cores = os.cpu_count() or world
        per = max(1, cores // world)
        parallel_env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
            f"{r * per}-{r * per + per - 1}" if per > 1 else str(r % cores) for r in range(world))
    parallel = _run({**job, "engine_kwargs": parallel_kwargs}, parallel_env)
    equal = reference["batch"] == parallel["batch"] and reference["alone"] == parallel["alone"]
    result = {"model": args.model, "tp": args.tp, "sp": args.sp, "shift_threshold": args.shift_threshold,
              "dtype": args.dtype, "prompts": args.prompts, "prompt_tokens": args.prompt_tokens,
              "max_tokens": args.max_tokens, "equal": equal, "steps": parallel["steps"],
              "reference": {k: reference[k] for k in ("load_s", "prefill_batch_s")},
              "parallel": {k: parallel[k] for k in ("load_s", "prefill_batch_s")}}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "parallel_equality.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    sys.exit(0 if equal else 1)


if __name__ == "__main__":
    main()
