"""Suffix tree benchmark: the same recorded workload through our SuffixCache and through arctic-inference's.

Workloads (all token ids):
- code_edit: synthetic "rewrite this file renaming a variable" requests over a small codebase (prompt = system +
  file + instruction; response = the file with renames and a few local edits);
- agent_loop: synthetic tool-calling agent sessions (a fixed tool schema prompt, growing history, JSON-like tool
  calls with a fixed skeleton and varying arguments);
- smollm2: SmolLM2-135M-Instruct greedy answers to code-edit prompts (generated once with transformers on the CPU
  and cached under .cache/suffix_bench/), when `arctic_gen.testing` can provide the model.

Decoding is replayed the way a server does it: `concurrency` requests in flight, requests start as others finish,
and every step each request asks for a draft of its latest `max_depth` tokens, then appends the tokens it
produced (1 + the draft tokens that match the recorded continuation, so the replay is the same for both caches).
Each call is timed on its own (alternating the two caches); we report medians, and the fraction of queries where
both caches drafted the same tokens. Our batched entry points (one native call per step for the whole batch)
are timed too, reported per request.

arctic-inference is never installed into the project's venv (it registers a vLLM plugin): install it into a
separate directory and pass that directory, e.g.

    .venv/bin/pip install --no-build-isolation --no-deps --target /tmp/arctic_ref arctic-inference==0.3.0
    .venv/bin/python load_tests/suffix_bench.py --arctic-path /tmp/arctic_ref
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arctic_gen.suffix import SuffixCache

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "load_tests" / "results"


@dataclass
class Trace:
    prompt: np.ndarray  # int32
    response: np.ndarray  # int32


# --------------------------------------------------------------------------------------------------- workloads
class _Vocab:
    """Token ids shaped like a BPE vocabulary: a few hundred frequent ids (keywords, punctuation, indentation) and
    a long tail of identifiers."""

    def __init__(self, rng: np.random.Generator, size: int = 32000):
        self.rng = rng
        self.size = size
        self.frequent = rng.choice(np.arange(10, 2000), size=300, replace=False)
        ranks = np.arange(1, 301)
        self.p = (1 / ranks) / (1 / ranks).sum()

    def common(self, n: int) -> np.ndarray:
        return self.rng.choice(self.frequent, size=n, p=self.p)

    def ident(self) -> int:
        return int(self.rng.integers(2000, self.size))


def _code_file(v: _Vocab, n_lines: int) -> tuple[list[int], list[int]]:
    """A file as token ids, and the identifiers it uses."""
    rng = v.rng
    idents = [v.ident() for _ in range(int(rng.integers(6, 16)))]
    templates = [list(v.common(int(rng.integers(3, 9)))) for _ in range(12)]
    out: list[int] = []
    for _ in range(n_lines):
        line = list(templates[int(rng.integers(0, len(templates)))])
        for _ in range(int(rng.integers(1, 4))):
            line.insert(int(rng.integers(0, len(line) + 1)), idents[int(rng.integers(0, len(idents)))])
        indent = [13] * int(rng.integers(0, 3))
        out += indent + line + [198]  # 198: newline
    return out, idents


def code_edit_traces(n: int, seed: int = 0) -> list[Trace]:
    rng = np.random.default_rng(seed)
    v = _Vocab(rng)
    system = list(v.common(40))
    instruction = list(v.common(12))
    files = [_code_file(v, int(rng.integers(20, 60))) for _ in range(max(2, n // 3))]
    traces = []
    for _ in range(n):
        body, idents = files[int(rng.integers(0, len(files)))]
        old, new = idents[int(rng.integers(0, len(idents)))], v.ident()
        edited = [new if t == old else t for t in body]
        for _ in range(int(rng.integers(1, 4))):  # small local edits
            at = int(rng.integers(0, len(edited)))
            if rng.random() < 0.5:
                edited[at:at] = list(v.common(int(rng.integers(2, 8))))
            else:
                del edited[at:at + int(rng.integers(1, 6))]
        prompt = system + body + instruction + [old, 11, new]
        response = list(v.common(6)) + edited + list(v.common(10))
        traces.append(Trace(np.asarray(prompt, np.int32), np.asarray(response, np.int32)))
    return traces


def agent_loop_traces(n: int, seed: int = 1) -> list[Trace]:
    rng = np.random.default_rng(seed)
    v = _Vocab(rng)
    tools = [(v.ident(), list(v.common(int(rng.integers(20, 40))))) for _ in range(5)]
    system = list(v.common(60)) + [t for name, schema in tools for t in [name] + schema]
    skeleton = list(v.common(14))  # {"tool": ..., "arguments": {...}} as ids
    traces: list[Trace] = []
    while len(traces) < n:
        history: list[int] = list(v.common(int(rng.integers(15, 40))))  # the user's task
        for _ in range(int(rng.integers(3, 9))):
            name, schema = tools[int(rng.integers(0, len(tools)))]
            args = [v.ident() if rng.random() < 0.4 else int(t) for t in v.common(int(rng.integers(3, 12)))]
            thought = list(v.common(int(rng.integers(5, 25))))
            response = thought + skeleton[:5] + [name] + skeleton[5:10] + args + skeleton[10:]
            traces.append(Trace(np.asarray(system + history, np.int32), np.asarray(response, np.int32)))
            result = list(v.common(int(rng.integers(10, 60))))
            history += response + result
            if len(traces) == n:
                break
    return traces


SMOLLM2_PROMPTS = [
    ("def total_price(items, tax):\n    subtotal = 0\n    for item in items:\n        subtotal += item.price * "
     "item.quantity\n    return subtotal * (1 + tax)\n", "subtotal", "amount"),
    ("def count_words(text):\n    counts = {}\n    for word in text.split():\n        counts[word] = counts.get(word, "
     "0) + 1\n    return counts\n", "counts", "frequencies"),
    ("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, value):\n        "
     "self.items.append(value)\n\n    def pop(self):\n        return self.items.pop()\n", "items", "elements"),
    ("def mean(values):\n    total = sum(values)\n    n = len(values)\n    return total / n if n else 0.0\n",
     "total", "acc"),
    ("def find_max(numbers):\n    best = numbers[0]\n    for x in numbers[1:]:\n        if x > best:\n            "
     "best = x\n    return best\n", "best", "largest"),
    ("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n", "a", "prev"),
    ("def read_lines(path):\n    with open(path) as handle:\n        lines = handle.readlines()\n    return [line."
     "strip() for line in lines]\n", "handle", "f"),
    ("def merge(left, right):\n    result = []\n    i = j = 0\n    while i < len(left) and j < len(right):\n        "
     "if left[i] <= right[j]:\n            result.append(left[i])\n            i += 1\n        else:\n            "
     "result.append(right[j])\n            j += 1\n    return result + left[i:] + right[j:]\n", "result", "merged"),
]


def smollm2_traces(max_new_tokens: int = 256) -> list[Trace] | None:
    """SmolLM2 greedy answers to the code-edit prompts, generated once and cached (None if unavailable)."""
    cache = REPO / ".cache" / "suffix_bench" / f"smollm2_code_edit_{max_new_tokens}.json"
    if not cache.exists():
        try:
            from arctic_gen.testing import smollm2
        except ImportError:
            return None
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = smollm2()
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        records = []
        for code, old, new in SMOLLM2_PROMPTS:
            msgs = [{"role": "user", "content": f"Rewrite this code, renaming the variable `{old}` to `{new}`. "
                                                f"Output the complete code.\n\n```python\n{code}```"}]
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            with torch.no_grad():
                out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
            prompt_len = ids["input_ids"].shape[1]
            records.append({"prompt": out[0, :prompt_len].tolist(), "response": out[0, prompt_len:].tolist()})
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(records))
    records = json.loads(cache.read_text())
    return [Trace(np.asarray(r["prompt"], np.int32), np.asarray(r["response"], np.int32)) for r in records]


# ------------------------------------------------------------------------------------------------------ replay
@dataclass
class Timings:
    speculate_ns: list[int] = field(default_factory=list)
    update_ns: list[int] = field(default_factory=list)
    start_ns: list[int] = field(default_factory=list)


@dataclass
class WorkloadResult:
    name: str
    requests: int
    queries: int
    same_drafts: int
    accepted_tokens: int
    steps: int
    ours: Timings
    arctic: Timings
    single_speculate_ns: int = 0
    batch_speculate_ns: int = 0
    single_update_ns: int = 0
    batch_update_ns: int = 0
    request_steps: int = 0
    # The replayed schedule: per step, (request ids, contexts, appended chunks, requests finished after it).
    schedule: list[tuple[list[int], list[np.ndarray], list[list[int]], list[int]]] = field(default_factory=list)


def _timed(fn: Callable[[], object]) -> tuple[object, int]:
    t0 = time.perf_counter_ns()
    out = fn()
    return out, time.perf_counter_ns() - t0


def replay(name: str, traces: list[Trace], arctic_cls: type, args: argparse.Namespace) -> WorkloadResult:
    depth, k = args.max_depth, args.max_spec_tokens
    ours = SuffixCache(depth, max_cached_requests=args.max_cached_requests)
    arctic = arctic_cls(max_tree_depth=depth, max_cached_requests=args.max_cached_requests)
    res = WorkloadResult(name, len(traces), 0, 0, 0, 0, Timings(), Timings())
    pending: Iterator[tuple[int, Trace]] = iter(enumerate(traces))
    active: dict[int, tuple[np.ndarray, int, int]] = {}  # req -> (full sequence, prompt length, position)

    def admit() -> None:
        while len(active) < args.concurrency:
            item = next(pending, None)
            if item is None:
                return
            req, tr = item
            full = np.concatenate([tr.prompt, tr.response]).astype(np.int32)
            _, t_ours = _timed(lambda: ours.start_request(req, tr.prompt))  # noqa: B023
            _, t_arc = _timed(lambda: arctic.start_request(req, tr.prompt))  # noqa: B023
            res.ours.start_ns.append(t_ours)
            res.arctic.start_ns.append(t_arc)
            active[req] = (full, len(tr.prompt), len(tr.prompt))

    admit()
    while active:
        reqs = list(active)
        contexts = [active[r][0][max(0, active[r][2] - depth):active[r][2]] for r in reqs]
        chunks = []
        for i, r in enumerate(reqs):  # every request drafts, then every request appends (as a batch step does)
            full, _, pos = active[r]
            ctx = contexts[i]
            d_arc, t_arc = _timed(lambda: arctic.speculate(r, ctx, k, 1.0, 0.0, args.min_token_prob))  # noqa: B023
            d_ours, t_ours = _timed(lambda: ours.speculate(r, ctx, k, 1.0, 0.0, args.min_token_prob))  # noqa: B023
            res.arctic.speculate_ns.append(t_arc)
            res.ours.speculate_ns.append(t_ours)
            res.queries += 1
            res.same_drafts += d_arc.token_ids == d_ours.token_ids
            # Tokens this step produces: the accepted prefix of arctic's draft, plus one.
            truth = full[pos:pos + len(d_arc.token_ids)].tolist()
            accepted = 0
            while accepted < len(truth) and truth[accepted] == d_arc.token_ids[accepted]:
                accepted += 1
            step = min(accepted + 1, len(full) - pos)
            res.accepted_tokens += accepted
            res.steps += 1
            chunks.append(full[pos:pos + step].tolist())  # vLLM hands the proposer lists of sampled ids
        for r, chunk in zip(reqs, chunks, strict=True):
            _, t_arc = _timed(lambda: arctic.add_active_response(r, chunk))  # noqa: B023
            _, t_ours = _timed(lambda: ours.add_active_response(r, chunk))  # noqa: B023
            res.arctic.update_ns.append(t_arc)
            res.ours.update_ns.append(t_ours)
            full, plen, pos = active[r]
            active[r] = (full, plen, pos + len(chunk))
        finished = []
        for r in reqs:
            full, _, pos = active[r]
            if pos >= len(full):
                ours.stop_request(r)
                arctic.stop_request(r)
                del active[r]
                finished.append(r)
        res.schedule.append((reqs, contexts, chunks, finished))
        admit()
    replay_batched(traces, res, args)
    return res


def replay_batched(traces: list[Trace], res: WorkloadResult, args: argparse.Namespace) -> None:
    """The recorded schedule again through two fresh caches of ours, step by step: one per-request call each
    (as above) and one native call per step for the whole batch. Both are reported
    as mean µs per request and step: a batch call cannot be split into per-request calls for a median."""
    single = SuffixCache(args.max_depth, max_cached_requests=args.max_cached_requests)
    batched = SuffixCache(args.max_depth, max_cached_requests=args.max_cached_requests)
    started: set[int] = set()
    k, p = args.max_spec_tokens, args.min_token_prob
    for reqs, contexts, chunks, finished in res.schedule:
        for r in reqs:
            if r not in started:
                single.start_request(r, traces[r].prompt)
                batched.start_request(r, traces[r].prompt)
                started.add(r)
        t0 = time.perf_counter_ns()
        for r, ctx in zip(reqs, contexts, strict=True):
            single.speculate(r, ctx, k, 1.0, 0.0, p)
        t1 = time.perf_counter_ns()
        batch = batched.speculate_batch(reqs, contexts, k, 1.0, 0.0, p)
        t2 = time.perf_counter_ns()
        for r, chunk in zip(reqs, chunks, strict=True):
            single.add_active_response(r, chunk)
        t3 = time.perf_counter_ns()
        batched.update_batch(reqs, chunks)
        t4 = time.perf_counter_ns()
        res.single_speculate_ns += t1 - t0
        res.batch_speculate_ns += t2 - t1
        res.single_update_ns += t3 - t2
        res.batch_update_ns += t4 - t3
        res.request_steps += len(reqs)
        assert len(batch) == len(reqs)
        for r in finished:
            single.stop_request(r)
            batched.stop_request(r)


# ------------------------------------------------------------------------------------------------ end to end
def e2e_worker(args: argparse.Namespace) -> dict[str, object]:
    """SmolLM2 in vLLM (float32, greedy), without and with `"method": "suffix"` (our proposer), same prompts in
    one process: output tokens/s, identical text, acceptance. Runs in a child process of the bench."""
    import os

    from arctic_gen.testing import cpu_vllm_env, smollm2

    cpu_vllm_env()
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    model = str(smollm2())
    tok = AutoTokenizer.from_pretrained(model)
    prompts = []
    for i in range(args.e2e_prompts):
        code, old, new = SMOLLM2_PROMPTS[i % len(SMOLLM2_PROMPTS)]
        if i >= len(SMOLLM2_PROMPTS):
            old, new = new, old + "_v2"
            code = code.replace(SMOLLM2_PROMPTS[i % len(SMOLLM2_PROMPTS)][1], old)
        msgs = [{"role": "user", "content": f"Rewrite this code, renaming the variable `{old}` to `{new}`. "
                                            f"Output the complete code.\n\n```python\n{code}```"}]
        prompts.append(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
    params = SamplingParams(temperature=0.0, max_tokens=args.e2e_max_tokens, ignore_eos=True)
    spec = {"method": "suffix", "num_speculative_tokens": args.max_spec_tokens}
    out: dict[str, object] = {"model": "SmolLM2-135M-Instruct (float32)", "prompts": len(prompts),
                              "max_tokens": args.e2e_max_tokens, "threads": os.environ.get("VLLM_CPU_OMP_THREADS_BIND")}
    texts: dict[str, list] = {}
    for name, cfg in (("nospec", None), ("spec", spec)):
        llm = LLM(model=model, dtype="float32", max_model_len=2048, enforce_eager=True,
                  kv_cache_memory_bytes=256 * 2**20, speculative_config=cfg, disable_log_stats=False,
                  max_num_seqs=max(args.e2e_concurrency, 1))
        llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=8))  # warm-up
        before = {m.name: getattr(m, "value", 0) for m in llm.get_metrics() if "spec_decode" in m.name}
        t0 = time.perf_counter()
        results = []
        for start in range(0, len(prompts), args.e2e_concurrency):  # waves of `concurrency` requests
            results += llm.generate(prompts[start:start + args.e2e_concurrency], params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        texts[name] = [r.outputs[0].token_ids for r in results]
        out[f"{name}_tokens_per_s"] = round(sum(len(t) for t in texts[name]) / elapsed, 2)
        if cfg is not None:
            after = {m.name: getattr(m, "value", 0) for m in llm.get_metrics() if "spec_decode" in m.name}
            delta = {k.removeprefix("vllm:spec_decode_"): after.get(k, 0) - before.get(k, 0) for k in after}
            drafts, proposed, accepted = delta.get("num_drafts", 0), delta.get("num_draft_tokens", 0), \
                delta.get("num_accepted_tokens", 0)
            out["drafts"], out["draft_tokens"], out["accepted_tokens"] = drafts, proposed, accepted
            out["acceptance_rate"] = round(accepted / proposed, 4) if proposed else None
            out["mean_accepted_len"] = round(accepted / drafts, 3) if drafts else None
        del llm
    out["identical_text"] = texts["spec"] == texts["nospec"]
    out["identical_prompts"] = sum(a == b for a, b in zip(texts["spec"], texts["nospec"], strict=True))
    out["speedup"] = round(out["spec_tokens_per_s"] / out["nospec_tokens_per_s"], 3)
    return out


def run_e2e(args: argparse.Namespace) -> dict[str, object] | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--e2e-worker",
           "--max-spec-tokens", str(args.max_spec_tokens), "--e2e-prompts", str(args.e2e_prompts),
           "--e2e-max-tokens", str(args.e2e_max_tokens), "--e2e-concurrency", str(args.e2e_concurrency)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("E2E "):
            return json.loads(line[4:])
    print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
    return None


# ------------------------------------------------------------------------------------------------------- main
def _median_us(values: list[int] | list[float]) -> float:
    return round(statistics.median(values) / 1000, 3) if values else float("nan")


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "native", "arctic_gen/suffix",
                                "load_tests/suffix_bench.py"], cwd=REPO, capture_output=True, text=True).stdout
        return head + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arctic-path", default="/tmp/arctic_ref",
                    help="directory where arctic-inference 0.3.0 was installed with pip --target")
    ap.add_argument("--requests", type=int, default=120, help="requests per synthetic workload")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-depth", type=int, default=64)
    ap.add_argument("--max-spec-tokens", type=int, default=16)
    ap.add_argument("--min-token-prob", type=float, default=0.1)
    ap.add_argument("--max-cached-requests", type=int, default=10000)
    ap.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2-generated workload")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default: results/suffix_<date>.json)")
    ap.add_argument("--no-record", action="store_true", help="print only; write no result files")
    ap.add_argument("--e2e", action="store_true", help="also run SmolLM2 in vLLM with and without suffix decoding")
    ap.add_argument("--e2e-prompts", type=int, default=8)
    ap.add_argument("--e2e-max-tokens", type=int, default=256)
    ap.add_argument("--e2e-concurrency", type=int, default=1, help="requests per generate call in the e2e run")
    ap.add_argument("--e2e-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.e2e_worker:
        print("E2E " + json.dumps(e2e_worker(args)), flush=True)
        return
    e2e = run_e2e(args) if args.e2e else None

    workloads: dict[str, list[Trace]] = {
        "code_edit": code_edit_traces(args.requests),
        "agent_loop": agent_loop_traces(args.requests),
    }
    if not args.no_smollm2:
        traces = smollm2_traces()  # before arctic's path goes on sys.path: nothing of it may reach transformers
        if traces:
            workloads["smollm2"] = traces

    sys.path.insert(0, args.arctic_path)  # only in this process, only for the reference tree
    from arctic_inference.suffix_decoding import SuffixDecodingCache  # noqa: E402

    gc.disable()
    results = []
    for name, traces in workloads.items():
        results.append(replay(name, traces, SuffixDecodingCache, args))
        gc.collect()
    gc.enable()

    def pooled(get: Callable[[WorkloadResult], list]) -> list:
        return [x for r in results for x in get(r)]

    summary: dict[str, object] = {
        "ours_speculate_us": _median_us(pooled(lambda r: r.ours.speculate_ns)),
        "arctic_speculate_us": _median_us(pooled(lambda r: r.arctic.speculate_ns)),
        "ours_update_us": _median_us(pooled(lambda r: r.ours.update_ns)),
        "arctic_update_us": _median_us(pooled(lambda r: r.arctic.update_ns)),
        "same_draft_fraction": round(sum(r.same_drafts for r in results) / sum(r.queries for r in results), 5),
        # End-to-end vLLM figures (with --e2e; null otherwise).
        "spec_tokens_per_s": e2e["spec_tokens_per_s"] if e2e else None,
        "nospec_tokens_per_s": e2e["nospec_tokens_per_s"] if e2e else None,
        "identical_text": e2e["identical_text"] if e2e else None,
        "mean_accepted_len": e2e["mean_accepted_len"] if e2e else None,
        "commit": _git_commit(),
    }
    summary["speculate_speedup"] = round(summary["arctic_speculate_us"] / summary["ours_speculate_us"], 2)
    summary["update_speedup"] = round(summary["arctic_update_us"] / summary["ours_update_us"], 2)
    steps = sum(r.request_steps for r in results)
    summary["batched_vs_single_mean_us_per_request_step"] = {
        "single_speculate": round(sum(r.single_speculate_ns for r in results) / steps / 1000, 3),
        "batched_speculate": round(sum(r.batch_speculate_ns for r in results) / steps / 1000, 3),
        "single_update": round(sum(r.single_update_ns for r in results) / steps / 1000, 3),
        "batched_update": round(sum(r.batch_update_ns for r in results) / steps / 1000, 3),
    }
    summary["workloads"] = {
        r.name: {
            "requests": r.requests,
            "queries": r.queries,
            "same_draft_fraction": round(r.same_drafts / r.queries, 5),
            "replay_mean_accepted_len": round(r.accepted_tokens / r.steps, 3),
            "ours_speculate_us": _median_us(r.ours.speculate_ns),
            "arctic_speculate_us": _median_us(r.arctic.speculate_ns),
            "ours_update_us": _median_us(r.ours.update_ns),
            "arctic_update_us": _median_us(r.arctic.update_ns),
            "ours_start_request_us": _median_us(r.ours.start_ns),
            "arctic_start_request_us": _median_us(r.arctic.start_ns),
            "mean_us_per_request_step": {
                "single_speculate": round(r.single_speculate_ns / r.request_steps / 1000, 3),
                "batched_speculate": round(r.batch_speculate_ns / r.request_steps / 1000, 3),
                "single_update": round(r.single_update_ns / r.request_steps / 1000, 3),
                "batched_update": round(r.batch_update_ns / r.request_steps / 1000, 3),
            },
        }
        for r in results
    }
    summary["e2e"] = e2e
    summary["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "no_record", "e2e_worker")}
    summary["settings"]["arctic_inference"] = "0.3.0"
    summary["machine"] = f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip()
    summary["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(json.dumps(summary, indent=2))

    if args.no_record:
        return
    day = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    out = args.out or RESULTS / f"suffix_{day}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    readme = RESULTS / "README.md"
    if not readme.exists():
        readme.write_text("# Measured results\n\nOne line per recorded run: date, machine, command, figure.\n\n")
    cmd = "python " + " ".join([str(Path(sys.argv[0]).relative_to(REPO)) if Path(sys.argv[0]).is_absolute()
                                else sys.argv[0]] + sys.argv[1:])
    with readme.open("a") as f:
        f.write(f"- {summary['date'][:10]} · {summary['machine']} ({_cpu_count()} cores) · `{cmd}` · suffix tree vs "
                f"arctic-inference 0.3.0: speculate {summary['ours_speculate_us']} µs vs "
                f"{summary['arctic_speculate_us']} µs ({summary['speculate_speedup']}x), update "
                f"{summary['ours_update_us']} µs vs {summary['arctic_update_us']} µs ({summary['update_speedup']}x), "
                f"same draft {summary['same_draft_fraction']:.2%}"
                + (f"; vLLM SmolLM2 e2e {e2e['spec_tokens_per_s']} vs {e2e['nospec_tokens_per_s']} tok/s "
                   f"({e2e['speedup']}x), identical text {e2e['identical_text']}, acceptance {e2e['acceptance_rate']}, "
                   f"mean accepted {e2e['mean_accepted_len']}" if e2e else "")
                + f" · {out.name}\n")
    print(f"wrote {out}")


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
