"""Embedding benchmark: our gRPC server end to end vs in-process baselines on the same model, in one run.

CPU (issue: embedding service v1), the bundled MiniLM, gRPC vs sentence-transformers `encode`:
    .venv/bin/python load_tests/embed_bench.py
GPU (see embed_gpu_bench.sh, which builds the bert-base-shaped model and calls this with --format gpu):
    python load_tests/embed_bench.py --format gpu --model /tmp/bert-base --configs 50:64:256,512:64:64 \
        --processes 4 --baselines hf,st --server-args "--devices cuda:0 --replicas-per-device 2 ..."

Inputs are texts of exact token lengths (checked against the tokenizer and against the server's token counts).
Writes rows to --out: CPU rows {path, input_tokens, batch, concurrency, tokens_per_s, p50_ms, p99_ms, commit};
GPU rows {device, input_tokens, batch, concurrency, tokens_per_s, p50_ms, p99_ms, hf_padded_tokens_per_s, ...}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import run_load  # noqa: E402

CPU_CONFIGS = ",".join(f"{t}:{b}:{c}" for t in (20, 128) for b in (1, 16, 64) for c in (1, 32))


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("BENCH_COMMIT", "unknown")


class GpuSampler:
    """Samples `nvidia-smi` GPU utilisation in the background while a configuration runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.check_output(["nvidia-smi", "--query-gpu=utilization.gpu",
                                               "--format=csv,noheader,nounits"], text=True, timeout=5)
                self.samples.append(float(out.split()[0]))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return
            self._stop.wait(0.25)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def st_rows(model_path: Path, texts_by_len: dict[int, list[str]], batches: list[int], duration_s: float,
            device: str) -> list[dict]:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device=device)
    if device.startswith("cuda"):
        model.half()
    rows = []
    for n_tokens, texts in texts_by_len.items():
        for batch in batches:
            chunk = (texts * (batch // len(texts) + 1))[:batch]
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
            print(json.dumps(rows[-1]), flush=True)
    return rows


def hf_padded_tokens_per_s(model_path: Path, n_tokens: int, device: str, duration_s: float) -> float:
    """Plain HF BertModel forward on padded, pre-tokenized batches (fp16 on GPU): the anchor's baseline."""
    import torch
    from transformers import AutoModel

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = AutoModel.from_pretrained(str(model_path), torch_dtype=dtype).to(device).eval()
    batch = (1024 if n_tokens <= 128 else 128) if device.startswith("cuda") else 16
    ids = torch.randint(1000, 29000, (batch, n_tokens), device=device)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        steps = 0
        started = time.perf_counter()
        while time.perf_counter() - started < duration_s or steps < 3:
            model(input_ids=ids, attention_mask=mask)
            steps += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
    del model
    return steps * batch * n_tokens / wall


def parity(target: str, model_path: Path, texts: list[str]) -> float:
    """Min cosine between the server's vectors and our torch engine in float32 on the CPU (the reference path)."""
    import torch

    from arctic_embed.client import EmbedClient
    from arctic_embed.encoding import OutputOptions, encode_rows
    from arctic_embed.engines.torch_encoder import TorchEncoderEngine
    from arctic_embed.model_files import read_model_spec
    from arctic_embed.tokenization import TextTokenizer, TokenizeOptions

    spec = read_model_spec(model_path)
    engine = TorchEncoderEngine()
    engine.load(spec, "cpu", "float32")
    batch = TextTokenizer(model_path, spec.max_input_tokens).encode(texts, TokenizeOptions())
    rows, _ = encode_rows(engine.embed(batch.ids, batch.lengths), OutputOptions())
    ref = rows.view(torch.float32).numpy()
    with EmbedClient(target) as client:
        together = client.embed(texts, dtype="float16").astype(np.float32)  # one big batch: the packed path
        alone = np.concatenate([client.embed([t], dtype="float16") for t in texts]).astype(np.float32)  # graphs
    cosines = [((v / np.linalg.norm(v, axis=1, keepdims=True)) * ref).sum(axis=1).min() for v in (together, alone)]
    return float(min(cosines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="model directory (default: bundled MiniLM)")
    parser.add_argument("--target", default="", help="a running server; default: start one")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per configuration")
    parser.add_argument("--configs", default=CPU_CONFIGS, help="tokens:batch:concurrency,...")
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    parser.add_argument("--baselines", default="st", help="comma list of st,hf (in-process baselines)")
    parser.add_argument("--st-batches", default="1,16,64")
    parser.add_argument("--server-args", default="--replicas-per-device 1 --tokenizer-workers 1")
    parser.add_argument("--format", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--device-name", default="cpu")
    parser.add_argument("--parity-texts", type=int, default=0, help="GPU: check N texts against the CPU path")
    parser.add_argument("--server-log", default=None, help="where the started server logs")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tokenizers import Tokenizer

    from arctic_embed.client import build_request
    from arctic_embed.config import default_model_path
    from arctic_embed.testing import start_server, texts_of_token_length, varied_texts

    model_path = Path(args.model) if args.model else default_model_path()
    tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    configs = [tuple(int(x) for x in c.split(":")) for c in args.configs.split(",")]
    lengths = sorted({c[0] for c in configs})
    texts_by_len = {n: texts_of_token_length(tokenizer, n, 1024, seed=n) for n in lengths}
    device = "cuda" if args.format == "gpu" else "cpu"
    baselines = set(filter(None, args.baselines.split(",")))
    out = Path(args.out or HERE / "results" / f"embed_{args.format}_{datetime.date.today():%Y%m%d}.json")

    server_args = args.server_args.split() + (["--model", str(model_path)] if args.model else [])
    server = None if args.target else start_server(server_args, timeout_s=600, log_path=args.server_log)
    target = args.target or server.target
    rows: list[dict] = []
    extra: dict = {}
    try:
        if args.parity_texts:
            extra["parity_min_cos_fp16_vs_cpu_fp32"] = parity(target, model_path, varied_texts(args.parity_texts))
            print(json.dumps(extra), flush=True)
        for n_tokens, batch, concurrency in configs:
            texts = texts_by_len[n_tokens]
            payloads = [build_request(texts[i:i + batch]).SerializeToString()
                        for i in range(0, len(texts) - batch + 1, batch)]
            with GpuSampler() if device == "cuda" else _NullSampler() as sampler:
                summary = run_load(target, payloads, concurrency, args.duration, args.processes)
            assert summary["tokens"] == summary["requests"] * batch * n_tokens, "token count mismatch"
            rows.append({"path": "grpc", "device": args.device_name, "input_tokens": n_tokens, "batch": batch,
                         "concurrency": concurrency, "gpu_util_pct": sampler.mean,
                         **{k: summary[k] for k in ("tokens_per_s", "requests_per_s", "p50_ms", "p99_ms", "failed",
                                                    "failures", "server_mean_ms")}})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        if server is not None:
            server.stop()

    if "hf" in baselines:
        hf = {n: hf_padded_tokens_per_s(model_path, n, device, args.duration) for n in lengths}
        extra["hf_padded_tokens_per_s"] = hf
        print(json.dumps({"hf_padded_tokens_per_s": hf}), flush=True)
        for row in rows:
            row["hf_padded_tokens_per_s"] = hf[row["input_tokens"]]
    if "st" in baselines:
        rows += st_rows(model_path, texts_by_len, [int(b) for b in args.st_batches.split(",")], args.duration, device)
    sha = commit()
    for row in rows:
        row["commit"] = sha
    for row in rows:  # the run-wide figures travel on every row: the file stays a plain list of rows
        row.update({k: v for k, v in extra.items() if k != "hf_padded_tokens_per_s"})
    out.write_text(json.dumps(rows, indent=1) + "\n")
    _print_table(rows, lengths)
    print(f"wrote {out}")


class _NullSampler:
    mean = None

    def __enter__(self) -> _NullSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _print_table(rows: list[dict], lengths: list[int]) -> None:
    print(f"\n{'path':10} {'tokens':>6} {'batch':>5} {'conc':>5} {'tok/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'fail':>4}")
    for r in rows:
        print(f"{r['path']:10} {r['input_tokens']:>6} {r['batch']:>5} {r['concurrency']:>5} "
              f"{r['tokens_per_s']:>10.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r.get('failed', 0):>4}")
    for n_tokens in lengths:
        ours = max((r["tokens_per_s"] for r in rows if r["path"] == "grpc" and r["input_tokens"] == n_tokens
                    and r["batch"] == 64), default=None)
        st = next((r["tokens_per_s"] for r in rows if r["path"] == "st_encode" and r["input_tokens"] == n_tokens
                   and r["batch"] == 64), None)
        if ours and st:
            print(f"{n_tokens}-token inputs, batch 64: gRPC {ours:.0f} tok/s = {ours / st:.0%} of st_encode {st:.0f}")


if __name__ == "__main__":
    main()
