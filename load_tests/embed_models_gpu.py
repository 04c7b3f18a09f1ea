"""Each native family's base-size shape at 128 tokens: our torch engine vs plain transformers, same run, same weights.

For every family (BERT, XLM-R, DistilBERT, MPNet, ModernBERT) a random-weight base-size checkpoint is built on the
fly (no hub), then:
- speed: batches of `--batch` sequences × 128 tokens through our engine (`TorchEncoderEngine.embed`, pooled) and
  through transformers' AutoModel (fp16, SDPA, forward + mean pooling), tokens/s each;
- parity: min cosine of the pooled vectors, ours vs transformers, on the uniform batch and on a mixed-length batch
  (8..128 tokens: the packed variable-length path; transformers pads with an attention mask).

Writes `$OUT/embed_models_<yyyymmdd>.json` (rows {arch, tokens_per_s, hf_tokens_per_s, min_cosine, commit, ...}) and
prints a summary table. CPU smoke run at toy size:
    python load_tests/embed_models_gpu.py --device cpu --shape tiny --batch 8 --iters 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from arctic_embed.engines.torch_encoder import TorchEncoderEngine
from arctic_embed.model_files import read_model_spec
from arctic_embed.models.random_models import BASE, TINY, SentenceTransformersFiles, Shape, build_random_model

# family → (shape changes from bert-base, vocabulary size of the real base model)
FAMILIES: dict[str, tuple[dict, int]] = {
    "bert": ({}, 30522),
    "xlm-roberta": ({}, 250002),
    "distilbert": ({"layers": 6}, 30522),
    "mpnet": ({}, 30527),
    "modernbert": ({"layers": 22, "intermediate": 1152}, 50368),
}
SEQ = 128


def _commit() -> str:
    if os.environ.get("ARCTIC_COMMIT"):
        return os.environ["ARCTIC_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, iters: int, device: str) -> float:  # noqa: ANN001
    fn()
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def _hf_pooled(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    m = mask[:, :, None].float()
    return (hidden * m).sum(1) / m.sum(1)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a = torch.nn.functional.normalize(a.float(), dim=1)
    b = torch.nn.functional.normalize(b.float(), dim=1)
    return float((a * b).sum(1).min())


def run_family(family: str, shape: Shape, vocab: int, root: Path, args: argparse.Namespace) -> dict:
    from transformers import AutoModel

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    built = time.perf_counter()
    path = build_random_model(family, root / family, shape, st=SentenceTransformersFiles(max_seq_length=512),
                              vocab_size=vocab, dtype=dtype, with_tokenizer=False, scale=0.5)
    build_s = time.perf_counter() - built
    spec = read_model_spec(path)
    loaded = time.perf_counter()
    engine = TorchEncoderEngine()
    engine_dtype = "float16" if dtype == torch.float16 else "float32"
    attention_note = ""
    try:
        engine.load(spec, args.device, engine_dtype, use_flash=not args.no_flash)
        engine.embed(np.arange(1000, 1064, dtype=np.int32), np.array([24, 40], dtype=np.int32))
    except Exception as exc:  # noqa: BLE001 - the flash kernel of this install refused: record it, measure SDPA
        attention_note = f" (flash-varlen failed: {type(exc).__name__}: {str(exc)[:120]})"
        engine = TorchEncoderEngine()
        engine.load(spec, args.device, engine_dtype, use_flash=False)
    load_s = time.perf_counter() - loaded
    hf = AutoModel.from_pretrained(str(path), dtype=dtype).to(args.device).eval()

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, min(vocab, 20000), size=(args.batch, SEQ)).astype(np.int32)
    ids[:, 0] = 0 if family in ("xlm-roberta", "mpnet") else 2  # a CLS/BOS-like first token, not the pad id
    lengths = np.full(args.batch, SEQ, dtype=np.int32)
    flat = ids.reshape(-1)
    ids_t = torch.from_numpy(ids).long().to(args.device)
    mask_t = torch.ones_like(ids_t)

    with torch.inference_mode():
        ours = engine.embed(flat, lengths)
        ref = _hf_pooled(hf, ids_t, mask_t)
        min_cos = _cosine(ours, ref)
        # Mixed lengths: the packed variable-length path against transformers' padded batch.
        var = rng.integers(8, SEQ + 1, size=args.batch).astype(np.int32)
        var_ids = np.concatenate([ids[i, :n] for i, n in enumerate(var)])
        var_mask = torch.from_numpy(np.arange(SEQ)[None, :] < var[:, None]).to(args.device)
        var_cos = _cosine(engine.embed(var_ids, var), _hf_pooled(hf, ids_t * var_mask, var_mask.long()))
        ours_s = _timed(lambda: engine.embed(flat, lengths), args.iters, args.device)
        hf_s = _timed(lambda: _hf_pooled(hf, ids_t, mask_t), args.iters, args.device)
    tokens = args.batch * SEQ
    row = {"arch": family, "tokens_per_s": round(tokens / ours_s), "hf_tokens_per_s": round(tokens / hf_s),
           "min_cosine": round(min_cos, 6), "min_cosine_mixed_lengths": round(var_cos, 6), "commit": args.commit,
           "seq_len": SEQ, "batch": args.batch, "dtype": str(dtype).removeprefix("torch."), "device": args.device,
           "shape": {"hidden": shape.hidden, "layers": shape.layers, "heads": shape.heads,
                     "intermediate": shape.intermediate, "vocab": vocab},
           "attention": ("flash-varlen" if engine._flash else "sdpa") + attention_note, "build_s": round(build_s, 1),
           "load_s": round(load_s, 1)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=("base", "tiny"), default="base")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--batch", type=int, default=256, help="sequences per forward (× 128 tokens)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--commit", default=_commit())
    parser.add_argument("--no-flash", action="store_true", help="SDPA attention even where flash-attn is installed")
    args = parser.parse_args()
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="embed-models-") as tmp:
        for family in args.families.split(","):
            changes, vocab = FAMILIES[family]
            shape = replace(BASE, **changes) if args.shape == "base" else replace(TINY, max_positions=SEQ + 2)
            if args.shape == "tiny":
                vocab = min(vocab, 30522)
            rows.append(run_family(family, shape, vocab, Path(tmp), args))
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            r = rows[-1]
            print(f"{r['arch']:12s} ours {r['tokens_per_s']:>11,} tok/s   "
                  f"transformers {r['hf_tokens_per_s']:>11,} tok/s   x{r['tokens_per_s'] / r['hf_tokens_per_s']:.2f}"
                  f"   min cos {r['min_cosine']:.6f}"
                  f" (mixed lengths {r['min_cosine_mixed_lengths']:.6f})   {r['attention']}", flush=True)
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
    out = Path(args.out) / f"embed_models_{day}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "torch": torch.__version__, "wall_s": round(time.perf_counter() - started, 1)}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out} in {meta['wall_s']} s")


if __name__ == "__main__":
    main()
