"""HTTP vs gRPC on ONE embedding server in one run: same model, same core, same inputs, batch 64.

    .venv/bin/python load_tests/http_bench.py                       # CPU, bundled MiniLM, writes the JSON
    .venv/bin/python load_tests/http_bench.py --duration 2 --rounds 2 --out /tmp/x.json   # quick check

Starts `arctic-embed serve` (gRPC + HTTP), then alternates rounds: gRPC `Embed` (our async client) and HTTP
`POST /v1/embeddings` as the official `openai` async client sends it (encoding_format base64, decoded to numpy),
plus the same with `encoding_format: float` (JSON numbers) and TEI `POST /embed`. Each round runs `--duration`
seconds at `--concurrency` requests in flight; the figure per path is the median over rounds of tokens/s (input
tokens counted by the server). Alternating rounds keeps a shared machine's drift from favouring one path.
Writes {rows, summary: {http_over_grpc, ...}} to --out and prints the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from arctic_embed.testing import free_port, start_server, texts_of_token_length  # noqa: E402

Call = Callable[[list[str]], Awaitable[int]]


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


async def run_round(call: Call, batches: list[list[str]], duration_s: float, concurrency: int) -> dict:
    """Requests back to back from `concurrency` workers for `duration_s`; tokens/s, requests/s, latency."""
    deadline = time.perf_counter() + duration_s
    latencies: list[float] = []
    tokens = 0
    failures = 0

    async def worker(index: int) -> None:
        nonlocal tokens, failures
        i = index
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                tokens += await call(batches[i % len(batches)])
            except Exception:  # noqa: BLE001 - counted; a benchmark with failures is reported as such
                failures += 1
            latencies.append(time.perf_counter() - started)
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"tokens_per_s": tokens / elapsed, "requests_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(latencies, 50) * 1e3) if latencies else 0.0,
            "p99_ms": float(np.percentile(latencies, 99) * 1e3) if latencies else 0.0,
            "requests": len(latencies), "failures": failures}


async def bench(args: argparse.Namespace, grpc_target: str, http_base: str, texts: list[str]) -> list[dict]:
    import httpx
    import openai

    from arctic_embed.client import AsyncEmbedClient

    batches = [texts[i:i + args.batch] for i in range(0, len(texts), args.batch)]
    grpc_client = AsyncEmbedClient(grpc_target)
    oai = openai.AsyncOpenAI(base_url=http_base + "/v1", api_key="unused", max_retries=0, timeout=600,
                             http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=args.concurrency)))
    http = httpx.AsyncClient(base_url=http_base, timeout=600, limits=httpx.Limits(max_connections=args.concurrency))

    async def via_grpc(batch: list[str]) -> int:
        result = await grpc_client.embed_detailed(batch)  # one Embed RPC, vectors decoded to numpy
        assert result.vectors.shape[0] == len(batch)
        return int(result.token_counts.sum())

    async def via_openai(batch: list[str]) -> int:
        response = await oai.embeddings.create(model="", input=batch)  # base64 on the wire, numpy-decoded
        assert len(response.data) == len(batch)
        return response.usage.prompt_tokens

    async def via_openai_float(batch: list[str]) -> int:
        response = await http.post("/v1/embeddings", json={"input": batch, "encoding_format": "float"})
        body = response.json()
        np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32)
        return body["usage"]["prompt_tokens"]

    async def via_tei(batch: list[str]) -> int:
        response = await http.post("/embed", json={"inputs": batch})
        vectors = np.asarray(response.json(), dtype=np.float32)
        assert vectors.shape[0] == len(batch)
        return args.input_tokens * len(batch)

    paths: dict[str, Call] = {"grpc": via_grpc, "http_openai_base64": via_openai,
                              "http_openai_float": via_openai_float, "http_tei": via_tei}
    selected = {name: paths[name] for name in args.paths}
    for call in selected.values():  # warm-up: connections, first batches
        await call(batches[0])
    rows: list[dict] = []
    async with grpc_client:
        for round_index in range(args.rounds):
            order = list(selected) if round_index % 2 == 0 else list(reversed(selected))
            for name in order:
                result = await run_round(selected[name], batches, args.duration, args.concurrency)
                rows.append({"path": name, "round": round_index, "batch": args.batch,
                             "concurrency": args.concurrency, "input_tokens": args.input_tokens, **result})
                print(f"round {round_index} {name:20s} {result['tokens_per_s']:9.0f} tok/s "
                      f"p50 {result['p50_ms']:7.1f} ms  failures {result['failures']}", flush=True)
    await oai.close()
    await http.aclose()
    return rows


def summarize(rows: list[dict]) -> dict:
    medians = {}
    for path in dict.fromkeys(r["path"] for r in rows):
        medians[path] = statistics.median(r["tokens_per_s"] for r in rows if r["path"] == path)
    summary = {"median_tokens_per_s": medians, "failures": sum(r["failures"] for r in rows)}
    if "grpc" in medians:
        for path, value in medians.items():
            if path != "grpc":
                summary[f"{path}_over_grpc"] = value / medians["grpc"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="inputs per request")
    parser.add_argument("--input-tokens", type=int, default=20, help="tokens per input (special tokens included)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight per path")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per round and path")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (paths alternate order each round)")
    parser.add_argument("--paths", nargs="+", default=["grpc", "http_openai_base64", "http_openai_float", "http_tei"])
    parser.add_argument("--server-args", default="--tokenizer-workers 1", help="extra `arctic-embed serve` options")
    parser.add_argument("--out", default=str(HERE / "results" / f"http_vs_grpc_{datetime.date.today():%Y%m%d}.json"))
    args = parser.parse_args()

    from tokenizers import Tokenizer

    from arctic_embed.config import default_model_path

    tokenizer = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    texts = texts_of_token_length(tokenizer, args.input_tokens, args.batch * 8, seed=1)
    http_port = free_port()
    server = start_server(["--http-port", str(http_port), *args.server_args.split()],
                          log_path=os.path.join(os.environ.get("TMPDIR", "/tmp"), "http_bench_server.log"))
    try:
        load_before = os.getloadavg()
        rows = asyncio.run(bench(args, server.target, f"http://127.0.0.1:{http_port}", texts))
        load_after = os.getloadavg()
    finally:
        server.stop()
    summary = summarize(rows)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit(), "machine": f"{platform.machine()} {os.cpu_count()} cores",
              "loadavg_before": load_before, "loadavg_after": load_after,
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "model": "all-MiniLM-L6-v2 (bundled)",
              "server_args": args.server_args, "rows": rows, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
