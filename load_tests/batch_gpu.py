"""Batch job throughput vs the server, in one run: N documents of exactly T tokens, Parquet → Parquet in-process,
and the server's throughput at batch 64 with T-token inputs (the same model, devices, replicas and tokenizer
workers), measured just before it.

GPU (the lead's H200 run; bert-base shape with random weights + the MiniLM tokenizer, built in the run):
    python3 load_tests/batch_gpu.py --rows 1000000 --tokens 128 --devices cuda:0 --out-dir $OUT
CPU smoke test (toy size, the bundled MiniLM):
    .venv/bin/python load_tests/batch_gpu.py --rows 3000 --tokens 32 --devices cpu --model bundled \
        --server-seconds 5 --tokenizer-workers 1 --replicas-per-device 1 --out-dir /tmp/batch-gpu

Needs pyarrow (and tqdm) next to the package. Writes `$OUT/batch_<yyyymmdd>.json`: rows {engine (server |
in_process), rows, input_tokens, tokens_per_s, server_tokens_per_s, device, commit, ...} and prints a summary.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("BENCH_COMMIT", "unknown")


def device_name(devices: str) -> str:
    if "cuda" not in devices:
        return "cpu"
    try:
        return subprocess.check_output(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], text=True,
                                       timeout=10).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "cuda"


def single_token_words(tokenizer) -> list[str]:
    special = len(tokenizer.encode("").ids)
    vocab = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and w.islower() and len(w) >= 3)
    return [w for w in vocab if len(tokenizer.encode(w).ids) == special + 1]


def write_documents(path: Path, tokenizer, rows: int, n_tokens: int, seed: int = 0) -> int:
    """`rows` distinct documents of exactly `n_tokens` tokens (special tokens included): each is two halves of
    single-token words, so 1M of them take seconds, not a tokenizer pass each. Returns the checked token count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    words = single_token_words(tokenizer)
    special = len(tokenizer.encode("").ids)
    body = n_tokens - special
    first, second = body // 2, body - body // 2
    n_halves = 1024
    left = [" ".join(rng.choices(words, k=first)) for _ in range(n_halves)]
    right = [" ".join(rng.choices(words, k=second)) for _ in range(n_halves)]
    for i in rng.sample(range(rows), min(rows, 500)):  # spot-check the exact length
        text = f"{left[i % n_halves]} {right[(i // n_halves) % n_halves]}"
        assert len(tokenizer.encode(text).ids) == n_tokens, text
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 65536):
            end = min(rows, start + 65536)
            texts = [f"{left[i % n_halves]} {right[(i // n_halves) % n_halves]}" for i in range(start, end)]
            writer.write_table(pa.table({"id": pa.array(range(start, end), pa.int64()), "text": texts}, schema))
    return rows * n_tokens


def server_throughput(model: Path, server_args: list[str], n_tokens: int, tokenizer, seconds: float,
                      concurrency: int, processes: int, log_path: str) -> dict:
    from loadgen import run_load

    from arctic_embed.client import build_request
    from arctic_embed.testing import start_server, texts_of_token_length

    texts = texts_of_token_length(tokenizer, n_tokens, 1024, seed=n_tokens)
    payloads = [build_request(texts[i:i + 64]).SerializeToString() for i in range(0, len(texts) - 63, 64)]
    server = start_server([*server_args, "--model", str(model)], timeout_s=600, log_path=log_path)
    try:
        summary = run_load(server.target, payloads, concurrency, seconds, processes)
    finally:
        server.stop()
    assert summary["tokens"] == summary["requests"] * 64 * n_tokens, "token count mismatch"
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--devices", default="cuda:0")
    parser.add_argument("--model", default="", help="model dir; 'bundled' = MiniLM; default: build bert-base")
    parser.add_argument("--replicas-per-device", type=int, default=2)
    parser.add_argument("--tokenizer-workers", type=int, default=10)
    parser.add_argument("--max-batch-tokens", type=int, default=65536)
    parser.add_argument("--max-batch-size", type=int, default=2048)
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--dtype", default="float32", help="output dtype of both paths")
    parser.add_argument("--server-seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=256, help="server load: requests of 64 in flight")
    parser.add_argument("--processes", type=int, default=4, help="load generator processes")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--out-dir", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from tokenizers import Tokenizer

    from arctic_embed.batch import BatchConfig, EmbedOptions, EngineOptions, run_batch
    from arctic_embed.config import default_model_path

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="batch-gpu-"))
    t0 = time.perf_counter()
    if args.model == "bundled":
        model = default_model_path()
    elif args.model:
        model = Path(args.model)
    else:
        from make_bert_base import build, default_tokenizer_dir

        model = build(work / "bert-base", default_tokenizer_dir(), max_seq_length=512)
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    docs = work / "docs.parquet"
    expected_tokens = write_documents(docs, tokenizer, args.rows, args.tokens)
    print(f"model {model}, {args.rows:,} docs of {args.tokens} tokens in {time.perf_counter() - t0:.1f}s",
          flush=True)

    devices = [d for d in args.devices.split(",") if d]
    device = device_name(args.devices)
    sha = commit()
    rows: list[dict] = []
    server_tps = None
    if not args.skip_server:
        server_args = ["--devices", args.devices, "--replicas-per-device", str(args.replicas_per_device),
                       "--tokenizer-workers", str(args.tokenizer_workers), "--max-batch-tokens",
                       str(args.max_batch_tokens), "--max-batch-size", str(args.max_batch_size),
                       "--max-queued-tokens", "50000000", "--max-inputs-per-request", "4096"]
        s = server_throughput(model, server_args, args.tokens, tokenizer, args.server_seconds, args.concurrency,
                              args.processes, str(out_dir / "batch_server.log"))
        server_tps = s["tokens_per_s"]
        rows.append({"engine": "server", "rows": s["requests"] * 64, "input_tokens": s["tokens"],
                     "tokens_per_s": server_tps, "server_tokens_per_s": server_tps, "device": device,
                     "commit": sha, "batch": 64, "concurrency": args.concurrency, "failed": s["failed"],
                     "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "wall_s": s["wall_s"]})
        print(json.dumps(rows[-1]), flush=True)

    config = BatchConfig(input=str(docs), output=str(work / "vectors"), chunk_rows=args.chunk_rows,
                         in_flight=args.in_flight, progress=sys.stderr.isatty(),
                         embed=EmbedOptions(dtype=args.dtype),
                         engine=EngineOptions(model_path=str(model), devices=devices,
                                              replicas_per_device=args.replicas_per_device,
                                              tokenizer_workers=args.tokenizer_workers,
                                              max_batch_tokens=args.max_batch_tokens,
                                              max_batch_size=args.max_batch_size))
    summary = run_batch(config)
    print(summary.line(), flush=True)
    assert summary.rows == args.rows and summary.input_tokens == expected_tokens, "row or token count mismatch"
    steady = summary.seconds - summary.startup_seconds
    tps = summary.run_tokens / steady
    rows.append({"engine": "in_process", "rows": summary.rows, "input_tokens": summary.input_tokens,
                 "tokens_per_s": tps, "server_tokens_per_s": server_tps, "device": device, "commit": sha,
                 "ratio_to_server": tps / server_tps if server_tps else None,
                 "tokens_per_s_with_startup": summary.run_tokens / summary.seconds, "wall_s": summary.seconds,
                 "startup_s": summary.startup_seconds, "output_dtype": args.dtype, "chunk_rows": args.chunk_rows,
                 "in_flight": args.in_flight, "replicas_per_device": args.replicas_per_device,
                 "tokenizer_workers": args.tokenizer_workers, "input_tokens_per_doc": args.tokens})
    print(json.dumps(rows[-1]), flush=True)
    out = out_dir / f"batch_{datetime.date.today():%Y%m%d}.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    ratio = f"{tps / server_tps:.1%} of the server's {server_tps:,.0f}" if server_tps else "no server figure"
    print(f"in-process: {args.rows:,} docs × {args.tokens} tokens at {tps:,.0f} tok/s ({ratio}); "
          f"total {time.perf_counter() - t0:.0f}s; wrote {out}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
