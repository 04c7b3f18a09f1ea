"""Generation throughput and TTFT through our gRPC server and through vLLM's own OpenAI HTTP server, same model,
same engine arguments, same run.

    python load_tests/gen_bench.py [--model DIR] [--streams 1 16 64 256] [--max-tokens 256] [--rounds 2]
        [--engine-args "--dtype bfloat16 ..."]          # given to both servers
        [--grpc-args "--api-server-count 4"]             # to `arctic-gen serve` only
        [--openai-args "..."]                            # to vLLM's OpenAI server only
        [--client-procs 8] [--out load_tests/results/gen_YYYYMMDD.json]

Both servers are started, warmed up, then measured one at a time in rounds that alternate their order (on a
shared machine the load drifts; medians over rounds are reported). At each stream count S, S streams each send
their requests one after another (streaming, greedy, ignore_eos, exactly max_tokens tokens each), spread over
`--client-procs` client processes so that the client is never what is measured.
tokens/s = all output tokens / wall time of the level; TTFT = client send to the first message carrying a token.
Default model: SmolLM2-135M-Instruct (arctic_gen.testing.smollm2).
Rows with keys server, streams, tokens_per_s, ttft_p50_ms, model, machine, commit (plus context) are appended to
the JSON file, and one line per run to load_tests/results/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import multiprocessing
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PROMPTS = [
    "Write an essay about the importance of higher education.",
    "Explain how a suffix tree speeds up speculative decoding.",
    "Rewrite this code renaming the variable x to count: def f(x): return x + 1",
    "List ten rivers of Europe and one fact about each.",
    "Describe a mountain city at night.",
    "What are the trade-offs between tensor and sequence parallelism?",
    "Summarize the plot of a detective story in five sentences.",
    "Give a recipe for bread with step-by-step instructions.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE).stdout.strip()
    except OSError:
        return ""


class Proc:
    def __init__(self, cmd: list[str], log: Path, ready: str, timeout_s: float = 600) -> None:
        self.log = log
        self.handle = open(log, "wb")
        # PYTHONSAFEPATH: `python -m` must not import this checkout's sources (no native extensions built in it)
        # ahead of the installed package.
        self.process = subprocess.Popen(cmd, stdout=self.handle, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONSAFEPATH": "1"})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if re.search(ready.encode(), log.read_bytes()):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{cmd[:4]} did not start:\n{log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.handle.close()


# --- the load: client worker processes ----------------------------------------------------------------------------
# One Python process cannot read tens of thousands of streamed messages per second (gRPC or SSE alike), and a
# saturated client measures itself, not the server. So the streams of a level are spread over `--client-procs`
# worker processes (each an asyncio loop with its own connections), started once and reused for every level.


async def grpc_request(client, prompt: str, max_tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    ttft = 0.0
    tokens = 0
    async for response in client.stream(text=prompt, max_tokens=max_tokens, temperature=0.0, ignore_eos=True):
        if response.token_ids and not ttft:
            ttft = time.perf_counter() - start
        tokens += len(response.token_ids)
    return tokens, ttft


async def openai_request(session, url: str, model: str, prompt: str, max_tokens: int) -> tuple[int, float]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft = 0.0
    tokens = 0
    async with session.post(url, json=body) as response:
        response.raise_for_status()
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0].get("text") and not ttft:
                ttft = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return tokens, ttft


@dataclass(frozen=True)
class Task:
    server: str            # "grpc", "grpc-<label>" | "openai"
    target: str
    model: str
    streams: list[int]     # global stream numbers this worker drives
    requests_per_stream: int
    max_tokens: int
    start_at: float        # time.time() at which every worker starts


class ClientWorker:
    """Runs in a worker process: keeps its connections across tasks."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.grpc_clients: dict[str, list] = {}
        self.session = None

    def _senders(self, task: Task):
        from arctic_gen.client import AsyncGenerateClient

        if task.server.startswith("grpc"):
            if task.target not in self.grpc_clients:  # own TCP connections, so SO_REUSEPORT front ends share them
                self.grpc_clients[task.target] = [
                    AsyncGenerateClient(task.target, timeout=600, options=[("grpc.use_local_subchannel_pool", 1),
                                                                           ("grpc.channel_id", i)])
                    for i in range(self.channels)]
            clients = self.grpc_clients[task.target]
            return [lambda prompt, c=clients[i % len(clients)]: grpc_request(c, prompt, task.max_tokens)
                    for i in range(len(task.streams))]
        if self.session is None:
            import aiohttp

            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                 timeout=aiohttp.ClientTimeout(total=600))
        return [lambda prompt: openai_request(self.session, task.target, task.model, prompt, task.max_tokens)
                for _ in task.streams]

    async def run(self, task: Task) -> dict:
        senders = self._senders(task)
        ttfts: list[float] = []
        total = 0

        async def stream(w: int, send) -> None:
            nonlocal total
            for r in range(task.requests_per_stream):
                tokens, ttft = await send(PROMPTS[(w + r) % len(PROMPTS)])
                total += tokens
                ttfts.append(ttft)

        await asyncio.sleep(max(task.start_at - time.time(), 0.0))
        await asyncio.gather(*(stream(w, send) for w, send in zip(task.streams, senders, strict=True)))
        return {"tokens": total, "ttfts": ttfts, "end": time.time()}


def _worker_main(tasks, results, channels: int) -> None:
    import uvloop

    worker = ClientWorker(channels)
    loop = uvloop.new_event_loop()
    while True:
        task = tasks.get()
        if task is None:
            return
        try:
            results.put(loop.run_until_complete(worker.run(task)))
        except Exception as exc:  # reported to the coordinator, which fails the run
            results.put({"error": f"{type(exc).__name__}: {exc}"})


class ClientPool:
    """`procs` worker processes; `level()` drives S streams spread over them and returns the level's figures."""

    def __init__(self, procs: int, channels: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.tasks = [ctx.Queue() for _ in range(procs)]
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=_worker_main, args=(q, self.results, channels), daemon=True)
                      for q in self.tasks]
        for proc in self.procs:
            proc.start()

    def level(self, server: str, target: str, model: str, streams: int, requests_per_stream: int,
              max_tokens: int) -> dict:
        share = [list(range(i, streams, len(self.tasks))) for i in range(len(self.tasks))]
        start_at = time.time() + 0.5
        busy = [i for i, s in enumerate(share) if s]
        for i in busy:
            self.tasks[i].put(Task(server, target, model, share[i], requests_per_stream, max_tokens, start_at))
        parts = [self.results.get(timeout=1800) for _ in busy]
        errors = [p["error"] for p in parts if "error" in p]
        if errors:
            raise RuntimeError(f"{server}@{streams}: {errors[0]}")
        ttfts = [t for p in parts for t in p["ttfts"]]
        total = sum(p["tokens"] for p in parts)
        wall = max(p["end"] for p in parts) - start_at
        return {"tokens_per_s": round(total / wall, 1), "ttft_p50_ms": round(statistics.median(ttfts) * 1e3, 1),
                "ttft_p90_ms": round(sorted(ttfts)[max(math.ceil(0.9 * len(ttfts)) - 1, 0)] * 1e3, 1),
                "output_tokens": total, "requests": len(ttfts), "wall_s": round(wall, 2)}

    def close(self) -> None:
        for q in self.tasks:
            q.put(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


GPU_ENGINE_ARGS = "--max-model-len 1024 --gpu-memory-utilization 0.3"
CPU_ENGINE_ARGS = f"--dtype bfloat16 --max-model-len 1024 --kv-cache-memory-bytes {256 * 2**20} --enforce-eager"


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def default_machine() -> str:
    """"<host> (<cores> cores, <GPU name or CPU>)"."""
    device = "CPU"
    if _has_gpu():
        import torch

        device = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"{platform.node()} ({os.cpu_count()} cores, {device})"


def start_grpc(model: str, engine_args: list[str], logdir: Path, name: str = "grpc") -> tuple[Proc, str]:
    port = _free_port()
    proc = Proc([sys.executable, "-m", "arctic_gen.server.cli", "serve", "--model", model, "--host", "127.0.0.1",
                 "--port", str(port), *engine_args], logdir / f"{name}_server.log", r"arctic-gen: serving")
    return proc, f"127.0.0.1:{port}"


def start_openai(model: str, engine_args: list[str], logdir: Path) -> tuple[Proc, str]:
    port = _free_port()
    proc = Proc([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
                 "--port", str(port), "--disable-uvicorn-access-log", *engine_args], logdir / "openai_server.log",
                r"Application startup complete|Uvicorn running")
    return proc, f"http://127.0.0.1:{port}/v1/completions"


def measure(servers: dict[str, str], model: str, args) -> list[dict]:
    """Rounds of (stream level x server), the server order alternating per round; medians over rounds."""
    pool = ClientPool(args.client_procs, args.channels_per_proc)
    try:
        for name, target in servers.items():  # warm-up: every batch shape the levels will see
            for streams in args.streams:
                pool.level(name, target, model, streams, 1, args.max_tokens)
        samples: dict[tuple[str, int], list[dict]] = {}
        for r in range(args.rounds):
            for streams in args.streams:
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in order:
                    result = pool.level(name, servers[name], model, streams, args.requests_per_stream,
                                        args.max_tokens)
                    print(f"round {r} {name}@{streams}: {result}", flush=True)
                    samples.setdefault((name, streams), []).append(result)
    finally:
        pool.close()
    rows = []
    for (name, streams), results in samples.items():
        rows.append({"server": name, "streams": streams,
                     "tokens_per_s": statistics.median(x["tokens_per_s"] for x in results),
                     "ttft_p50_ms": statistics.median(x["ttft_p50_ms"] for x in results),
                     "ttft_p90_ms": statistics.median(x["ttft_p90_ms"] for x in results),
                     "tokens_per_s_best": max(x["tokens_per_s"] for x in results),
                     "ttft_p50_ms_best": min(x["ttft_p50_ms"] for x in results),
                     "rounds": len(results), "requests_per_round": results[0]["requests"],
                     "tokens_per_s_all": [x["tokens_per_s"] for x in results]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: SmolLM2-135M-Instruct from arctic_gen.testing)")
    parser.add_argument("--streams", type=int, nargs="+",
                        help="stream counts (default: 1 16 64 256 on a GPU, 1 16 on a CPU)")
    parser.add_argument("--max-tokens", type=int, help="tokens per request (default: 256 on a GPU, 128 on a CPU)")
    parser.add_argument("--client-procs", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                        help="client processes the streams are spread over (default: half the cores, at most 8)")
    parser.add_argument("--channels-per-proc", type=int, default=4,
                        help="gRPC connections per client process (default: 4)")
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="measurements per (server, streams); medians reported")
    parser.add_argument("--engine-args", help="vLLM engine arguments given to both servers (default: on a GPU "
                        f"'{GPU_ENGINE_ARGS}', on a CPU '{CPU_ENGINE_ARGS}')")
    parser.add_argument("--grpc-args", default="", help="extra arguments for `arctic-gen serve` only")
    parser.add_argument("--grpc-variant", nargs=2, action="append", default=[], metavar=("LABEL", "ARGS"),
                        help="one more `arctic-gen serve` in the same run (server name grpc-LABEL), with "
                             "--engine-args + ARGS (repeatable), e.g. --grpc-variant spec '--speculative-config ...'")
    parser.add_argument("--openai-args", default="", help="extra arguments for vLLM's OpenAI server only")
    parser.add_argument("--servers", nargs="+", default=["grpc", "openai"], choices=["grpc", "openai"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--machine", help="machine description for the rows (default: host, cores, GPU)")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    gpu = _has_gpu()
    args.streams = args.streams or ([1, 16, 64, 256] if gpu else [1, 16])
    args.max_tokens = args.max_tokens or (256 if gpu else 128)
    args.engine_args = args.engine_args if args.engine_args is not None else (
        GPU_ENGINE_ARGS if gpu else CPU_ENGINE_ARGS)

    from arctic_gen.testing import cpu_vllm_env, smollm2

    scratch = cpu_vllm_env()
    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # both servers run vLLM's default engine-core process
    model = args.model or str(smollm2())
    engine_args = shlex.split(args.engine_args)
    logdir = scratch / "gen_bench"
    logdir.mkdir(parents=True, exist_ok=True)

    import vllm

    commit = _commit()
    args.machine = args.machine or default_machine()
    extra = {"grpc": args.grpc_args, "openai": args.openai_args,
             **{f"grpc-{label}": variant for label, variant in args.grpc_variant}}
    names = [*args.servers, *(f"grpc-{label}" for label, _ in args.grpc_variant)]
    procs, servers = [], {}
    try:
        for name in names:  # all up at once; measured one at a time (an idle vLLM server costs no CPU)
            server_argv = engine_args + shlex.split(extra[name])
            proc, target = (start_grpc(model, server_argv, logdir, name) if name.startswith("grpc")
                            else start_openai(model, server_argv, logdir))
            procs.append(proc)
            servers[name] = target
        results = measure(servers, model, args)
    finally:
        for proc in procs:
            proc.stop()
    rows = []
    for result in sorted(results, key=lambda x: (x["streams"], x["server"])):
        server = result.pop("server")
        row = {"server": server, "streams": result.pop("streams"),
               "tokens_per_s": result.pop("tokens_per_s"), "ttft_p50_ms": result.pop("ttft_p50_ms"),
               "model": Path(model).name, "commit": commit, "max_tokens": args.max_tokens, "vllm": vllm.__version__,
               "engine_args": args.engine_args, "machine": args.machine,
               "server_args": extra[server],
               "client_procs": args.client_procs, **result}
        print(json.dumps(row), flush=True)
        rows.append(row)

    today = datetime.date.today().strftime("%Y%m%d")
    out = args.out or RESULTS / f"gen_{today}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(existing + rows, indent=1) + "\n")
    summary = ", ".join(f"{r['server']}@{r['streams']}: {r['tokens_per_s']} tok/s TTFT p50 {r['ttft_p50_ms']} ms "
                        f"(best round {r['tokens_per_s_best']} tok/s, {r['ttft_p50_ms_best']} ms)" for r in rows)
    print(summary)
    if not args.no_readme:
        command = "python load_tests/gen_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        line = (f"- {datetime.date.today().isoformat()} · {args.machine} · `{command.strip()}` · "
                f"{Path(model).name}, {args.max_tokens} tokens/request, vLLM {vllm.__version__}: {summary} "
                f"→ `{out.name}`\n")
        readme = RESULTS / "README.md"
        if not readme.exists():
            readme.write_text("# Measured figures\n\nOne line per run: date · machine · command · figures.\n\n")
        with open(readme, "a") as f:
            f.write(line)


if __name__ == "__main__":
    main()
