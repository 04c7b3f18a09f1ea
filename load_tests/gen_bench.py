"""Generation throughput and TTFT through our gRPC server and through vLLM's own OpenAI HTTP server, same model,
same engine arguments, same run.

    python load_tests/gen_bench.py [--model DIR] [--streams 1 16] [--max-tokens 128] [--requests-per-stream 3]
                                   [--engine-args "--dtype bfloat16 ..."] [--out load_tests/results/gen_YYYYMMDD.json]

Each server is started in turn (never both at once: on a small machine they would share cores), warmed up, then
driven at each stream count: S workers, each sending its requests one after another (streaming, greedy,
ignore_eos, exactly max_tokens tokens each). tokens/s = all output tokens / wall time of the level; TTFT = client
send to the first message carrying a token. Default model: SmolLM2-135M-Instruct (arctic_gen.testing.smollm2).
Rows with keys server, streams, tokens_per_s, ttft_p50_ms, model, commit (plus context) are appended to the JSON
file, and one line per run to load_tests/results/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time
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
        self.process = subprocess.Popen(cmd, stdout=self.handle, stderr=subprocess.STDOUT)
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


# --- one request per protocol: returns (output tokens, ttft seconds) --------------------------------------------


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


async def drive(send, streams: int, requests_per_stream: int) -> dict:
    ttfts: list[float] = []
    total = 0

    async def worker(w: int) -> None:
        nonlocal total
        for r in range(requests_per_stream):
            tokens, ttft = await send(PROMPTS[(w + r) % len(PROMPTS)])
            total += tokens
            ttfts.append(ttft)

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(streams)))
    wall = time.perf_counter() - start
    return {"tokens_per_s": round(total / wall, 1), "ttft_p50_ms": round(statistics.median(ttfts) * 1e3, 1),
            "ttft_p90_ms": round(sorted(ttfts)[int(0.9 * (len(ttfts) - 1))] * 1e3, 1), "output_tokens": total,
            "requests": len(ttfts), "wall_s": round(wall, 2)}


def bench_grpc(model: str, engine_args: list[str], args, logdir: Path) -> list[dict]:
    from arctic_gen.client import AsyncGenerateClient

    port = _free_port()
    proc = Proc([sys.executable, "-m", "arctic_gen.server.cli", "serve", "--model", model, "--host", "127.0.0.1",
                 "--port", str(port), *engine_args], logdir / "grpc_server.log", r"arctic-gen: serving")
    try:
        async def run() -> list[dict]:
            async with AsyncGenerateClient(f"127.0.0.1:{port}", timeout=600) as client:
                async def send(prompt: str):
                    return await grpc_request(client, prompt, args.max_tokens)

                await drive(send, 2, 1)  # warm-up
                return [{"streams": s, **await drive(send, s, args.requests_per_stream)} for s in args.streams]

        return asyncio.run(run())
    finally:
        proc.stop()


def bench_openai(model: str, engine_args: list[str], args, logdir: Path) -> list[dict]:
    import aiohttp

    port = _free_port()
    proc = Proc([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
                 "--port", str(port), "--disable-uvicorn-access-log", *engine_args], logdir / "openai_server.log",
                r"Application startup complete|Uvicorn running")
    try:
        async def run() -> list[dict]:
            timeout = aiohttp.ClientTimeout(total=600)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                url = f"http://127.0.0.1:{port}/v1/completions"

                async def send(prompt: str):
                    return await openai_request(session, url, model, prompt, args.max_tokens)

                await drive(send, 2, 1)
                return [{"streams": s, **await drive(send, s, args.requests_per_stream)} for s in args.streams]

        return asyncio.run(run())
    finally:
        proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: SmolLM2-135M-Instruct from arctic_gen.testing)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--requests-per-stream", type=int, default=3)
    parser.add_argument("--engine-args", default="--dtype bfloat16 --max-model-len 1024 --kv-cache-memory-bytes "
                        f"{256 * 2**20} --enforce-eager", help="vLLM engine arguments given to both servers")
    parser.add_argument("--servers", nargs="+", default=["grpc", "openai"], choices=["grpc", "openai"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--machine", default=f"{platform.node()} ({os.cpu_count()} cores, CPU)")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()

    from arctic_gen.testing import cpu_vllm_env, smollm2

    scratch = cpu_vllm_env()
    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # both servers run vLLM's default engine-core process
    model = args.model or str(smollm2())
    engine_args = shlex.split(args.engine_args)
    logdir = scratch / "gen_bench"
    logdir.mkdir(parents=True, exist_ok=True)

    import vllm

    commit = _commit()
    rows = []
    for server in args.servers:
        bench = bench_grpc if server == "grpc" else bench_openai
        for result in bench(model, engine_args, args, logdir):
            row = {"server": server, "streams": result.pop("streams"), "tokens_per_s": result.pop("tokens_per_s"),
                   "ttft_p50_ms": result.pop("ttft_p50_ms"), "model": Path(model).name, "commit": commit,
                   "max_tokens": args.max_tokens, "vllm": vllm.__version__, "engine_args": args.engine_args,
                   "machine": args.machine, **result}
            print(json.dumps(row), flush=True)
            rows.append(row)

    today = datetime.date.today().strftime("%Y%m%d")
    out = args.out or RESULTS / f"gen_{today}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(existing + rows, indent=1) + "\n")
    summary = ", ".join(f"{r['server']}@{r['streams']}: {r['tokens_per_s']} tok/s TTFT p50 {r['ttft_p50_ms']} ms"
                        for r in rows)
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
