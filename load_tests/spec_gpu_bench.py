"""Speculative decoding end to end: no speculation vs vLLM `ngram` vs our `suffix` vs our `arctic` (+ suffix).

    python load_tests/spec_gpu_bench.py --model SMOLLM2_DIR [--speculator DIR] [--concurrency 1 16 64]
        [--max-tokens 512] [--methods none ngram suffix arctic] [--out results.json] [--cpu]

Code-edit prompts ("rewrite this code renaming a variable"), greedy decoding, `--max-tokens` tokens per request
(ignore_eos). One engine per method, started in this process one after the other; per method, one phase per
concurrency level: 1 = requests one at a time, N = N requests submitted together (N in flight). Every phase of every
method uses its own distinct prompts (the same set across methods), so no phase can be served from the suffix cache
of an earlier answer; each engine first runs warm-up prompts of its own. Speculation statistics are vLLM's
counters (drafts, draft tokens, accepted tokens), taken per phase.

Rows: {method, concurrency, tokens_per_s, nospec_tokens_per_s, draft_acceptance, mean_accepted_len,
tokens_per_step, requests, tokens, seconds, commit, vllm, device}. `mean_accepted_len` = accepted tokens per draft.
"""

from __future__ import annotations

import argparse
import json
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
    return {m.name.removeprefix("vllm:spec_decode_"): m.value for m in llm.get_metrics()
            if m.name.startswith("vllm:spec_decode_num_") and hasattr(m, "value")}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def speculative_config(method: str, speculator: str | None, k: int) -> dict | None:
    if method == "none":
        return None
    if method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": 8, "prompt_lookup_max": 5, "prompt_lookup_min": 2}
    if method == "suffix":
        return {"method": "suffix", "num_speculative_tokens": k}
    if method == "arctic":
        if speculator is None:
            return {"method": "arctic", "num_speculative_tokens": k, "enable_suffix_decoding": True}
        return {"method": "arctic", "model": speculator, "num_speculative_tokens": k, "enable_suffix_decoding": True,
                "disable_by_batch_size": 64}
    raise SystemExit(f"unknown method {method!r}")


def run_method(args, method: str) -> list[dict]:
    import vllm
    from vllm import LLM, SamplingParams

    spec = speculative_config(method, args.speculator, args.num_speculative_tokens)
    extra = ({"dtype": "float32", "kv_cache_memory_bytes": 256 * 2**20, "enforce_eager": True} if args.cpu
             else {"dtype": "bfloat16", "gpu_memory_utilization": args.gpu_memory_utilization})
    start = time.perf_counter()
    llm = LLM(model=args.model, max_model_len=args.max_model_len, max_num_seqs=max(args.concurrency),
              speculative_config=spec, disable_log_stats=False, seed=0, **extra)
    print(f"[{method}] engine ready in {time.perf_counter() - start:.0f} s", flush=True)
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
               "spec": spec, "vllm": vllm.__version__}
        print(json.dumps(row), flush=True)
        rows.append(row)
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
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--code-lines", type=int, default=40, help="statements per code snippet (prompt size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="spec_bench.json")
    parser.add_argument("--cpu", action="store_true", help="float32, eager, small KV cache (a CPU dry run)")

    parser.add_argument("--one-method", help=argparse.SUPPRESS)  # internal: run one method, print its rows
    args = parser.parse_args()

    if args.one_method:
        import vllm.plugins

        vllm.plugins.load_general_plugins()
        print("ROWS " + json.dumps(run_method(args, args.one_method)), flush=True)
        return
    rows: list[dict] = []
    for method in args.methods:  # one process per engine: GPU memory and vLLM's global state start clean
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one-method", method]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROWS ")]
        if proc.returncode != 0 or not found:
            print(proc.stdout[-3000:])
            raise SystemExit(f"method {method} failed (exit {proc.returncode})")
        rows.extend(json.loads(found[-1][5:]))
    nospec = {r["concurrency"]: r["tokens_per_s"] for r in rows if r["method"] == "none"}
    device = "cpu"
    if not args.cpu:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    commit = _commit()
    for r in rows:
        r["nospec_tokens_per_s"] = nospec.get(r["concurrency"])
        r["speedup"] = round(r["tokens_per_s"] / r["nospec_tokens_per_s"], 3) if r["nospec_tokens_per_s"] else None
        r["commit"], r["device"], r["max_tokens"] = commit, device, args.max_tokens
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print("method   conc  tok/s     x_nospec  acceptance  acc/draft")
    for r in rows:
        print(f"{r['method']:8} {r['concurrency']:4}  {r['tokens_per_s']:8.1f}  {r['speedup'] or 0:8.3f}  "
              f"{r['draft_acceptance'] or 0:10.3f}  {r['mean_accepted_len'] or 0:9.2f}")


if __name__ == "__main__":
    main()
