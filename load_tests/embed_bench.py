"""CPU benchmark of the embedding service against sentence-transformers' own `encode`, in one run.

    .venv/bin/python load_tests/embed_bench.py            # starts `arctic-embed serve` itself (bundled MiniLM)

For 20- and 128-token inputs (exact, from the tokenizer) at batch 1/16/64 and concurrency 1/32: tok/s and p50/p99
latency over gRPC, then sentence-transformers `encode` in this process on the same model at the same batch sizes.
Writes load_tests/results/embed_cpu_<yyyymmdd>.json (rows: path, input_tokens, batch, concurrency, tokens_per_s,
p50_ms, p99_ms, commit) and prints a table and the ratio at batch 64.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import run_load  # noqa: E402


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def st_rows(model_path: Path, texts_by_len: dict[int, list[str]], batches: list[int], duration_s: float) -> list:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device="cpu")
    rows = []
    for n_tokens, texts in texts_by_len.items():
        for batch in batches:
            chunk = texts[:batch]
            model.encode(chunk, batch_size=batch)
            latencies = []
            started = time.perf_counter()
            while time.perf_counter() - started < duration_s or len(latencies) < 3:
                t0 = time.perf_counter()
                model.encode(chunk, batch_size=batch, normalize_embeddings=True)
                latencies.append((time.perf_counter() - t0) * 1e3)
            wall = time.perf_counter() - started
            rows.append({"path": "st_encode", "input_tokens": n_tokens, "batch": batch, "concurrency": 1,
                         "tokens_per_s": len(latencies) * batch * n_tokens / wall,
                         "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
                         "threads": torch.get_num_threads()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="", help="a running server; default: start one")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per configuration")
    parser.add_argument("--lengths", default="20,128")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--server-args", default="--replicas-per-device 1 --tokenizer-workers 1")
    parser.add_argument("--out", default=str(HERE / "results" / f"embed_cpu_{datetime.date.today():%Y%m%d}.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tokenizers import Tokenizer

    from arctic_embed.client import build_request
    from arctic_embed.config import default_model_path
    from arctic_embed.testing import start_server, texts_of_token_length

    model_path = default_model_path()
    tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    lengths = [int(x) for x in args.lengths.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    texts_by_len = {n: texts_of_token_length(tokenizer, n, 64 * 8, seed=n) for n in lengths}

    server = None if args.target else start_server(args.server_args.split())
    target = args.target or server.target
    rows: list[dict] = []
    try:
        for n_tokens in lengths:
            texts = texts_by_len[n_tokens]
            for batch in batches:
                payloads = [build_request(texts[i:i + batch]).SerializeToString()
                            for i in range(0, len(texts) - batch + 1, batch)]
                for concurrency in concurrencies:
                    summary = run_load(target, payloads, concurrency, args.duration)
                    assert summary["tokens"] == summary["requests"] * batch * n_tokens, "token count mismatch"
                    rows.append({"path": "grpc", "input_tokens": n_tokens, "batch": batch,
                                 "concurrency": concurrency, **{k: summary[k] for k in
                                                                ("tokens_per_s", "p50_ms", "p99_ms", "failed")}})
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        if server is not None:
            server.stop()
    for row in st_rows(model_path, texts_by_len, batches, args.duration):
        rows.append(row)
        print(json.dumps(row), flush=True)
    sha = commit()
    for row in rows:
        row["commit"] = sha
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")

    print(f"\n{'path':10} {'tokens':>6} {'batch':>5} {'conc':>4} {'tok/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r['path']:10} {r['input_tokens']:>6} {r['batch']:>5} {r['concurrency']:>4} "
              f"{r['tokens_per_s']:>9.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")
    for n_tokens in lengths:
        st = next(r["tokens_per_s"] for r in rows if r["path"] == "st_encode" and r["input_tokens"] == n_tokens
                  and r["batch"] == 64)
        ours = max(r["tokens_per_s"] for r in rows if r["path"] == "grpc" and r["input_tokens"] == n_tokens
                   and r["batch"] == 64)
        print(f"{n_tokens}-token inputs, batch 64: gRPC {ours:.0f} tok/s = {ours / st:.0%} of st_encode {st:.0f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
