"""A/B engine throughput on one machine: the torch engine of a git revision vs the working tree, interleaved.

    python load_tests/engine_ab_bench.py --baseline-rev e4c2d44 --rounds 5

Both engines load the same model (default: the bundled MiniLM) and embed the same pre-tokenized batches: a mixed-length
batch of `varied_texts` (the bucketed packed path) and a uniform batch. Rounds alternate A and B so that load from
other processes hits both alike; the figure per engine is the median over rounds. Prints JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from arctic_embed.config import default_model_path
from arctic_embed.engines.torch_encoder import TorchEncoderEngine
from arctic_embed.model_files import read_model_spec
from arctic_embed.testing import varied_texts
from arctic_embed.tokenization import TextTokenizer, TokenizeOptions

ROOT = Path(__file__).resolve().parents[1]


def _baseline_class(rev: str) -> type:
    source = subprocess.run(["git", "show", f"{rev}:arctic_embed/engines/torch_encoder.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_torch_encoder.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_torch_encoder", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.TorchEncoderEngine


def _rate(engine, ids: np.ndarray, lengths: np.ndarray, repeats: int) -> float:  # noqa: ANN001
    engine.embed(ids, lengths)
    started = time.perf_counter()
    for _ in range(repeats):
        engine.embed(ids, lengths)
    return repeats * int(lengths.sum()) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline-rev", default="e4c2d44")
    parser.add_argument("--model", default="")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--texts", type=int, default=64, help="sequences per batch (mixed and uniform)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.model) if args.model else default_model_path()
    spec = read_model_spec(path)
    batch = TextTokenizer(path, spec.max_input_tokens).encode(varied_texts(args.texts, seed=1), TokenizeOptions())
    uniform_ids = np.resize(batch.ids, args.texts * 128).astype(np.int32)
    uniform_lengths = np.full(args.texts, 128, dtype=np.int64)
    engines = {"baseline": _baseline_class(args.baseline_rev)(), "current": TorchEncoderEngine()}
    for engine in engines.values():
        engine.load(spec, "cpu", "float32")
    rates: dict[str, dict[str, list[float]]] = {k: {"mixed": [], "uniform": []} for k in engines}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            rates[name]["mixed"].append(_rate(engine, batch.ids, batch.lengths.astype(np.int64), args.repeats))
            rates[name]["uniform"].append(_rate(engine, uniform_ids, uniform_lengths, args.repeats))
    result = {name: {k: round(statistics.median(v)) for k, v in r.items()} for name, r in rates.items()}
    result["ratio_current_over_baseline"] = {k: round(result["current"][k] / result["baseline"][k], 3)
                                             for k in ("mixed", "uniform")}
    result["model"] = spec.name
    result["baseline_rev"] = args.baseline_rev
    result["mixed_tokens"] = int(batch.lengths.sum())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
