"""Generation throughput and TTFT through our gRPC server and through vLLM's own OpenAI HTTP server, same model,
same engine arguments, same run.

    python load_tests/gen_bench.py [--model DIR] [--streams 1 16] [--max-tokens 128] [--requests-per-stream 3]
                                   [--engine-args "--dtype bfloat16 ..."] [--out load_tests/results/gen_YYYYMMDD.json]

Both servers are started, warmed up, then measured one at a time in rounds that alternate their order (on a
shared machine the load drifts; medians over rounds are reported). At each stream count S, S workers each send
their requests one after another (streaming, greedy, ignore_eos, exactly max_tokens tokens each).
tokens/s = all output tokens / wall time of the level; TTFT = client send to the first message carrying a token.
Default model: SmolLM2-135M-Instruct (arctic_gen.testing.smollm2).
Rows with keys server, streams, tokens_per_s, ttft_p50_ms, model, commit (plus context) are appended to the JSON
file, and one line per run to load_tests/results/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
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
            "ttft_p90_ms": round(sorted(ttfts)[max(math.ceil(0.9 * len(ttfts)) - 1, 0)] * 1e3, 1),
            "output_tokens": total, "requests": len(ttfts), "wall_s": round(wall, 2)}


def start_grpc(model: str, engine_args: list[str], logdir: Path) -> tuple[Proc, str]:
    port = _free_port()
    proc = Proc([sys.executable, "-m", "arctic_gen.server.cli", "serve", "--model", model, "--host", "127.0.0.1",
                 "--port", str(port), *engine_args], logdir / "grpc_server.log", r"arctic-gen: serving")
    return proc, f"127.0.0.1:{port}"


def start_openai(model: str, engine_args: list[str], logdir: Path) -> tuple[Proc, str]:
    port = _free_port()
    proc = Proc([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
                 "--port", str(port), "--disable-uvicorn-access-log", *engine_args], logdir / "openai_server.log",
                r"Application startup complete|Uvicorn running")
    return proc, f"http://127.0.0.1:{port}/v1/completions"


async def measure(servers: dict[str, str], model: str, args) -> list[dict]:
    """Rounds of (stream level x server), the server order alternating per round; medians over rounds."""
    import aiohttp

    from arctic_gen.client import AsyncGenerateClient

    senders = {}
    grpc_client = AsyncGenerateClient(servers["grpc"], timeout=600) if "grpc" in servers else None
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) if "openai" in servers else None
    if grpc_client is not None:
        senders["grpc"] = lambda prompt: grpc_request(grpc_client, prompt, args.max_tokens)
    if session is not None:
        senders["openai"] = lambda prompt: openai_request(session, servers["openai"], model, prompt, args.max_tokens)
    try:
        for send in senders.values():  # warm-up: every batch shape the levels will see
            for streams in args.streams:
                await drive(send, streams, 1)
        samples: dict[tuple[str, int], list[dict]] = {}
        for r in range(args.rounds):
            for streams in args.streams:
                order = list(senders) if r % 2 == 0 else list(reversed(senders))
                for name in order:
                    result = await drive(senders[name], streams, args.requests_per_stream)
                    print(f"round {r} {name}@{streams}: {result}", flush=True)
                    samples.setdefault((name, streams), []).append(result)
    finally:
        if grpc_client is not None:
            await grpc_client.close()
        if session is not None:
            await session.close()
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
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="measurements per (server, streams); medians reported")
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
    procs, servers = [], {}
    try:
        for name in args.servers:  # both up at once; measured one at a time (an idle vLLM server costs no CPU)
            proc, target = (start_grpc if name == "grpc" else start_openai)(model, engine_args, logdir)
            procs.append(proc)
            servers[name] = target
        results = asyncio.run(measure(servers, model, args))
    finally:
        for proc in procs:
            proc.stop()
    rows = []
    for result in sorted(results, key=lambda x: (x["streams"], x["server"])):
        row = {"server": result.pop("server"), "streams": result.pop("streams"),
               "tokens_per_s": result.pop("tokens_per_s"), "ttft_p50_ms": result.pop("ttft_p50_ms"),
               "model": Path(model).name, "commit": commit, "max_tokens": args.max_tokens, "vllm": vllm.__version__,
               "engine_args": args.engine_args, "machine": args.machine, **result}
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
