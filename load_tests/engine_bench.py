"""Engine-only throughput (no serving): our torch engine's `embed` on pre-tokenized batches, synchronized.

    python load_tests/engine_bench.py --model /tmp/bert-base --device cuda

Separates the engine's speed from the serving path's in the GPU figures (compare with the HF padded baseline).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from arctic_embed.engines.torch_encoder import TorchEncoderEngine
from arctic_embed.model_files import read_model_spec


def measure(engine: TorchEncoderEngine, n: int, length: int, device: str, duration_s: float) -> float:
    ids = np.random.default_rng(0).integers(1000, 29000, n * length).astype(np.int32)
    lengths = np.full(n, length, dtype=np.int64)
    engine.embed(ids, lengths)
    if device == "cuda":
        torch.cuda.synchronize()
    steps = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration_s or steps < 3:
        engine.embed(ids, lengths)
        steps += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * n * length / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--shapes", default="1024x50,128x512,1x50")
    args = parser.parse_args()
    spec = read_model_spec(Path(args.model))
    engines = {}
    for fused in (False, True):
        engine = TorchEncoderEngine()
        engine.load(spec, args.device, args.dtype, fused_kernels=fused)
        engines[fused] = engine
        for shape in args.shapes.split(","):
            n, length = (int(x) for x in shape.split("x"))
            value = measure(engine, n, length, args.device, args.duration)
            print(json.dumps({"engine_tokens_per_s": shape, "fused_kernels": fused, "value": value}), flush=True)
    lengths = np.minimum(np.array([300] * 4 + [100, 500, 700, 200], dtype=np.int64), spec.max_input_tokens)
    ids = np.random.default_rng(1).integers(1000, 29000, int(lengths.sum())).astype(np.int32)
    a, b = (engines[f].embed(ids, lengths).float() for f in (False, True))
    print(json.dumps({"fused_vs_unfused_min_cos": float(torch.nn.functional.cosine_similarity(a, b).min())}))


if __name__ == "__main__":
    main()
