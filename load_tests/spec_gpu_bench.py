"""Speculative decoding end to end: no speculation vs vLLM `ngram` vs our `suffix` vs our `arctic` (+ suffix).

    python load_tests/spec_gpu_bench.py --model SMOLLM2_DIR [--speculator DIR] [--concurrency 1 16 64]
        [--max-tokens 512] [--methods none ngram suffix suffix-uniform arctic arctic-uniform] [--out results.json]
        [--uniform-k K] [--max-cudagraph-capture-size N] [--profile] [--cpu]

Code-edit prompts ("rewrite this code renaming a variable"), greedy decoding, `--max-tokens` tokens per request
(ignore_eos). One engine per method, started in this process one after the other; per method, one phase per
concurrency level: 1 = requests one at a time, N = N requests submitted together (N in flight). Every phase of every
method uses its own distinct prompts (the same set across methods), so no phase can be served from the suffix cache
of an earlier answer; each engine first runs warm-up prompts of its own. Speculation statistics are vLLM's
counters (drafts, draft tokens, accepted tokens), taken per phase.

Method variants: "-uniform" (suffix, arctic) = `uniform_drafts` (every draft padded to K tokens, all requests of a
step draft or none), K = --uniform-k (default: --num-speculative-tokens); keep max_num_seqs * (1 + K) within the
largest CUDA graph (vLLM's default min(2 * max_num_seqs * (1 + K), 512), or --max-cudagraph-capture-size for every
engine). "-full" (any method) = compilation_config cudagraph_mode "FULL": full CUDA graphs for every batch up to the
largest capture size, ragged ones included (needs an attention backend with ALWAYS support, e.g. FlashAttention 3;
vLLM falls back to FULL_AND_PIECEWISE otherwise). E.g. --methods ngram suffix suffix-full suffix-uniform.

Rows: {method, concurrency, tokens_per_s, nospec_tokens_per_s, draft_acceptance, mean_accepted_len, engine_steps,
step_ms, requests, tokens, seconds, commit, vllm, device}. `mean_accepted_len` = accepted tokens per draft;
`engine_steps` = vLLM's iteration count (the slowest request sets it at concurrency > 1, not the mean), `step_ms` =
seconds / engine_steps. `--profile` adds `profile` per row: the model runner's steps grouped by the CUDA-graph mode
vLLM dispatched (FULL / PIECEWISE / NONE; on --cpu, NONE always, plus `gpu_0_26_modes`: the modes vLLM 0.26's
dispatcher would pick on a GPU with default capture sizes), each with steps, mean scheduled tokens, mean wall time
from one step's start to the next (`cycle_ms`), inside execute_model (`exec_ms`), inside sample_tokens (`sample_ms`,
which waits for the GPU) and inside the drafter (`draft_ms`); plus how many steps were uniform decode and the
draft-length histogram. The raw per-step records go to PROFILE_DIR/profile_<method>.json (--profile-dir).
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

_NAMES = ["total", "count", "index", "value", "result", "buffer", "offset", "length", "acc", "item", "node", "width",
          "height", "score", "limit", "cursor", "delta", "weight", "bucket", "window"]
_OPS = ["+", "-", "*", "//", "%"]


def code_snippet(rng: random.Random, lines: int) -> tuple[str, str, str]:
    """A random but plausible Python function and a (old, new) variable rename inside it."""
    names = rng.sample(_NAMES, 6)
    fn = f"{rng.choice(['compute', 'update', 'merge', 'scan', 'reduce', 'collect'])}_{rng.choice(_NAMES)}"
    body = [f"def {fn}({names[0]}, {names[1]}):", f"    {names[2]} = 0"]
    for i in range(lines):
        a, b, c = rng.choice(names), rng.choice(names), rng.choice(names)
        kind = rng.random()
        if kind < 0.3:
            body.append(f"    {a} = {b} {rng.choice(_OPS)} {rng.randint(1, 99)}")
        elif kind < 0.5:
            body.append(f"    if {a} > {b}:")
            body.append(f"        {c} = {a} {rng.choice(_OPS)} {b}")
        elif kind < 0.7:
            body.append(f"    for {c} in range({rng.randint(2, 40)}):")
            body.append(f"        {a} += {c} * {rng.randint(1, 9)}")
        elif kind < 0.85:
            body.append(f"    {a} = max({b}, {c}, {rng.randint(0, 500)})")
        else:
            body.append(f"    print(\"step {i}\", {a}, {b})")
    body.append(f"    return {names[2]}")
    old = names[2]
    new = rng.choice([n for n in _NAMES if n not in names]) + "_" + rng.choice(["new", "v2", "acc", "out"])
    return "\n".join(body), old, new


def prompts_for(phase: str, n: int, seed: int, lines: int = 40) -> list[str]:
    rng = random.Random(f"{phase}-{seed}")
    out = []
    for _ in range(n):
        code, old, new = code_snippet(rng, rng.randint(lines // 2, lines))
        out.append(f"Rewrite this code renaming the variable `{old}` to `{new}`. Output only the code.\n\n"
                   f"```python\n{code}\n```")
    return out


def _counters(llm) -> dict[str, float]:
    out = {}
    for m in llm.get_metrics():
        if m.name.startswith("vllm:spec_decode_num_") and hasattr(m, "value"):
            out[m.name.removeprefix("vllm:spec_decode_")] = m.value
        elif m.name == "vllm:iteration_tokens_total" and hasattr(m, "count"):
            out["engine_steps"] = m.count  # one observation per engine step
    return out


# --- --profile: per-step records inside the model runner (sent to the worker with collective_rpc) ---------------


def _profile_install(worker) -> bool:
    """Wrap this worker's model runner (instance attributes only) to record every step; idempotent."""
    import time as _time

    runner = worker.model_runner
    if "_bench_steps" in vars(runner):
        runner._bench_steps.clear()
        return True
    steps: list[dict] = []
    determine, execute, sample = (runner._determine_batch_execution_and_padding, runner.execute_model,
                                  runner.sample_tokens)
    propose = runner.propose_draft_token_ids

    def determine_wrapped(*args, **kwargs):
        out = determine(*args, **kwargs)
        if steps and "mode" not in steps[-1]:
            steps[-1].update(mode=str(out[0]).rsplit(".", 1)[-1], padded=int(out[1].num_tokens),
                             tokens=int(kwargs["num_tokens"]), reqs=int(kwargs["num_reqs"]),
                             max_q=int(kwargs["max_num_scheduled_tokens"]))
        return out

    def execute_wrapped(*args, **kwargs):
        steps.append({"t0": _time.perf_counter()})
        out = execute(*args, **kwargs)
        steps[-1]["exec"] = _time.perf_counter() - steps[-1]["t0"]
        return out

    def sample_wrapped(*args, **kwargs):
        t = _time.perf_counter()
        out = sample(*args, **kwargs)
        if steps:
            steps[-1]["sample"] = _time.perf_counter() - t
        return out

    def propose_wrapped(*args, **kwargs):
        t = _time.perf_counter()
        out = propose(*args, **kwargs)
        if steps:
            steps[-1]["draft"] = _time.perf_counter() - t
            steps[-1]["drafts"] = [len(d) for d in out] if isinstance(out, list) else None
        return out

    runner._determine_batch_execution_and_padding = determine_wrapped
    runner.execute_model = execute_wrapped
    runner.sample_tokens = sample_wrapped
    runner.propose_draft_token_ids = propose_wrapped
    runner._bench_steps = steps
    return True


def _profile_take(worker) -> list[dict]:
    steps = worker.model_runner._bench_steps
    out = list(steps)
    steps.clear()
    return out


def capture_sizes_0_26(k: int, max_num_seqs: int, largest: int | None = None) -> list[int]:
    """vLLM 0.26's default CUDA-graph capture sizes (config/vllm.py _set_cudagraph_sizes, then
    config/compilation.py adjust_cudagraph_sizes_for_spec_decode: rounded up to multiples of 1 + K)."""
    largest = largest or min(max_num_seqs * (1 + k) * 2, 512)
    sizes = [i for i in (1, 2, 4) if i <= largest] + list(range(8, min(largest + 1, 256), 8))
    sizes += list(range(256, largest + 1, 16))
    if k > 0:
        q = 1 + k
        sizes = sorted({-(-s // q) * q for s in sizes if -(-s // q) * q <= largest}) or ([q] if q <= largest else [])
    return sorted(set(sizes))


def gpu_mode_0_26(tokens: int, reqs: int, max_q: int, k: int, max_num_seqs: int, sizes: list[int]) -> str:
    """The CUDA-graph mode vLLM 0.26 dispatches a step to (FULL_AND_PIECEWISE, the default on a GPU):
    gpu_model_runner.py _is_uniform_decode + cudagraph_dispatcher.py dispatch."""
    if not sizes or tokens > sizes[-1]:
        return "NONE"
    q = 1 + k
    uniform = max_q == q and tokens == q * reqs
    padded = next(s for s in sizes if s >= tokens)
    if uniform and q <= padded <= q * max_num_seqs:
        return "FULL"
    return "PIECEWISE"


def profile_summary(steps: list[dict], k: int, max_num_seqs: int, largest: int | None) -> dict:
    """Steps grouped by dispatched CUDA-graph mode (see the module doc)."""
    steps = [st for st in steps if "mode" in st]
    for a, b in zip(steps, steps[1:], strict=False):
        a["cycle"] = b["t0"] - a["t0"]
    sizes = capture_sizes_0_26(k, max_num_seqs, largest)
    groups: dict[str, list[dict]] = {}
    would: dict[str, int] = {}
    lengths: dict[int, int] = {}
    uniform = 0
    for st in steps:
        groups.setdefault(st["mode"], []).append(st)
        mode = gpu_mode_0_26(st["tokens"], st["reqs"], st["max_q"], k, max_num_seqs, sizes)
        would[mode] = would.get(mode, 0) + 1
        uniform += st["max_q"] == 1 + k and st["tokens"] == (1 + k) * st["reqs"]
        for n in st.get("drafts") or ():
            lengths[n] = lengths.get(n, 0) + 1

    def mean_ms(group: list[dict], key: str) -> float | None:
        vals = [st[key] for st in group if key in st]
        return round(1e3 * sum(vals) / len(vals), 3) if vals else None

    by_mode = {mode: {"steps": len(g), "tokens": round(sum(st["tokens"] for st in g) / len(g), 1),
                      "padded": round(sum(st["padded"] for st in g) / len(g), 1), "cycle_ms": mean_ms(g, "cycle"),
                      "exec_ms": mean_ms(g, "exec"), "sample_ms": mean_ms(g, "sample"), "draft_ms": mean_ms(g, "draft")}
               for mode, g in sorted(groups.items())}
    return {"steps": len(steps), "uniform_steps": uniform, "by_mode": by_mode, "gpu_0_26_modes": would,
            "gpu_0_26_largest_graph": sizes[-1] if sizes else 0, "cycle_ms": mean_ms(steps, "cycle"),
            "draft_lengths": dict(sorted(lengths.items()))}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def method_variant(method: str) -> tuple[str, bool, bool]:
    """"BASE[-uniform][-full]" -> (base, uniform_drafts, full CUDA graphs for every batch)."""
    base, *flags = method.split("-")
    if base not in ("none", "ngram", "suffix", "arctic") or any(f not in ("uniform", "full") for f in flags) \
            or ("uniform" in flags and base not in ("suffix", "arctic")):
        raise SystemExit(f"unknown method {method!r}")
    return base, "uniform" in flags, "full" in flags


def speculative_config(method: str, speculator: str | None, k: int, uniform_k: int | None = None,
                       ngram_k: int = 8) -> dict | None:
    base, uniform, _ = method_variant(method)
    if base == "none":
        return None
    if base == "ngram":
        return {"method": "ngram", "num_speculative_tokens": ngram_k, "prompt_lookup_max": 5, "prompt_lookup_min": 2}
    extra = {}
    if uniform:
        k = uniform_k or k
        extra = {"uniform_drafts": True}
    if base == "suffix":
        return {"method": "suffix", "num_speculative_tokens": k, **extra}
    if speculator is None:
        return {"method": "arctic", "num_speculative_tokens": k, "enable_suffix_decoding": True, **extra}
    return {"method": "arctic", "model": speculator, "num_speculative_tokens": k, "enable_suffix_decoding": True,
            "disable_by_batch_size": 64, **extra}


def run_method(args, method: str) -> list[dict]:
    import vllm
    from vllm import LLM, SamplingParams

    spec = speculative_config(method, args.speculator, args.num_speculative_tokens, args.uniform_k, args.ngram_k)
    extra = ({"dtype": "float32", "kv_cache_memory_bytes": 256 * 2**20, "enforce_eager": True} if args.cpu
             else {"dtype": "bfloat16", "gpu_memory_utilization": args.gpu_memory_utilization})
    compilation = {}
    if args.max_cudagraph_capture_size:
        compilation["max_cudagraph_capture_size"] = args.max_cudagraph_capture_size
    if method_variant(method)[2]:
        compilation["cudagraph_mode"] = "FULL"
    if compilation and not args.cpu:
        extra["compilation_config"] = compilation
    max_num_seqs = max(args.concurrency)
    start = time.perf_counter()
    llm = LLM(model=args.model, max_model_len=args.max_model_len, max_num_seqs=max_num_seqs,
              speculative_config=spec, disable_log_stats=False, seed=0, **extra)
    print(f"[{method}] engine ready in {time.perf_counter() - start:.0f} s", flush=True)
    k = 0 if spec is None else spec["num_speculative_tokens"]
    raw_profile: dict[str, list[dict]] = {}
    if args.profile:
        llm.collective_rpc(_profile_install)
    tok = llm.get_tokenizer()

    def chat(texts: list[str]) -> list[str]:
        return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
                for t in texts]

    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(chat(prompts_for(f"warmup-{method}", 4, args.seed, args.code_lines)), params, use_tqdm=False)
    rows = []
    for c in args.concurrency:
        n = max(c, args.min_requests) if c == 1 else c
        prompts = chat(prompts_for(f"phase-{c}", n, args.seed, args.code_lines))
        if args.profile:
            llm.collective_rpc(_profile_take)  # drop the warm-up's and earlier phases' steps
        before = _counters(llm)
        t0 = time.perf_counter()
        if c == 1:
            outs = [o for p in prompts for o in llm.generate([p], params, use_tqdm=False)]
        else:
            outs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        after = _counters(llm)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        drafts, drafted, accepted = (delta.get("num_drafts", 0), delta.get("num_draft_tokens", 0),
                                     delta.get("num_accepted_tokens", 0))
        row = {"method": method, "concurrency": c, "tokens_per_s": round(tokens / seconds, 1), "requests": len(outs),
               "tokens": tokens, "seconds": round(seconds, 3),
               "draft_acceptance": round(accepted / drafted, 4) if drafted else None,
               "mean_accepted_len": round(accepted / drafts, 3) if drafts else None,
               "draft_tokens": drafted, "accepted_tokens": accepted, "drafts": drafts,
               "engine_steps": delta.get("engine_steps"),
               "step_ms": round(1e3 * seconds / delta["engine_steps"], 3) if delta.get("engine_steps") else None,
               "spec": spec, "vllm": vllm.__version__}
        if args.profile:
            steps = llm.collective_rpc(_profile_take)[0]
            row["profile"] = profile_summary(steps, k, max_num_seqs, args.max_cudagraph_capture_size)
            raw_profile[str(c)] = steps
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.profile and args.profile_dir:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
        Path(args.profile_dir, f"profile_{method}.json").write_text(json.dumps(raw_profile))
    del llm
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--speculator", help="speculator directory (Arctic format) for method arctic")
    parser.add_argument("--methods", nargs="+", default=["none", "ngram", "suffix", "arctic"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--min-requests", type=int, default=4, help="requests in the concurrency-1 phase")
    parser.add_argument("--num-speculative-tokens", type=int, default=16, help="draft slots for suffix/arctic")
    parser.add_argument("--uniform-k", type=int, help="draft slots for the *-uniform methods (default: the above)")
    parser.add_argument("--ngram-k", type=int, default=8, help="draft slots for ngram")
    parser.add_argument("--max-cudagraph-capture-size", type=int, help="vLLM compilation_config value, all engines")
    parser.add_argument("--profile", action="store_true", help="per-step records by CUDA-graph mode (module doc)")
    parser.add_argument("--profile-dir", help="where profile_<method>.json (raw per-step records) go")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--code-lines", type=int, default=40, help="statements per code snippet (prompt size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="spec_bench.json")
    parser.add_argument("--cpu", action="store_true", help="float32, eager, small KV cache (a CPU dry run)")

    parser.add_argument("--one-method", help=argparse.SUPPRESS)  # internal: run one method, print its rows
    args = parser.parse_args()

    if args.profile:  # the recorder travels to the engine process as a pickled function
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    if args.one_method:
        import vllm.plugins

        vllm.plugins.load_general_plugins()
        print("ROWS " + json.dumps(run_method(args, args.one_method)), flush=True)
        return
    rows: list[dict] = []
    failed: list[dict] = []
    commit = _commit()
    for method in args.methods:  # one process per engine: GPU memory and vLLM's global state start clean
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one-method", method]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROWS ")]
        if proc.returncode != 0 or not found:  # keep going: the other methods' rows still count
            print(proc.stdout[-3000:])
            print(f"method {method} failed (exit {proc.returncode})", flush=True)
            failed.append({"method": method, "error": f"exit {proc.returncode}", "tail": proc.stdout[-1500:]})
        else:
            rows.extend(json.loads(found[-1][5:]))
        _finish(rows, commit, None, args.max_tokens)
        Path(args.out).write_text(json.dumps(rows + failed, indent=1))  # after every method: a killed run keeps some
    device = "cpu"
    if not args.cpu:  # only now: a CUDA context in this process would hold GPU memory while the engines run
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    _finish(rows, commit, device, args.max_tokens)
    Path(args.out).write_text(json.dumps(rows + failed, indent=1))
    print("method          conc  tok/s     x_nospec  acceptance  acc/draft  steps  step_ms  graphs")
    for r in rows:
        graphs = " ".join(f"{m}:{g['steps']}@{g['cycle_ms']}ms" for m, g in r.get("profile", {}).get("by_mode",
                                                                                                     {}).items())
        print(f"{r['method']:15} {r['concurrency']:4}  {r['tokens_per_s']:8.1f}  {r['speedup'] or 0:8.3f}  "
              f"{r['draft_acceptance'] or 0:10.3f}  {r['mean_accepted_len'] or 0:9.2f}  {r['engine_steps'] or 0:5}  "
              f"{r['step_ms'] or 0:7.2f}  {graphs}")
    if failed:
        raise SystemExit(f"failed: {', '.join(f['method'] for f in failed)}")


def _finish(rows: list[dict], commit: str, device: str | None, max_tokens: int) -> None:
    nospec = {r["concurrency"]: r["tokens_per_s"] for r in rows if r["method"] == "none"}
    for r in rows:
        r["nospec_tokens_per_s"] = nospec.get(r["concurrency"])
        r["speedup"] = round(r["tokens_per_s"] / r["nospec_tokens_per_s"], 3) if r["nospec_tokens_per_s"] else None
        r["commit"], r["device"], r["max_tokens"] = commit, device, max_tokens

if __name__ == "__main__":
    main()
