"""`arctic-embed batch`: argv → BatchConfig → run_batch, with one-line errors and the summary line on stdout."""

from __future__ import annotations

import argparse
import os
import sys

from arctic_embed.batch.options import (
    INPUT_FORMATS,
    OUTPUT_DTYPES,
    OUTPUT_FORMATS,
    VECTOR_FORMATS,
    BatchConfig,
    BatchError,
    EmbedOptions,
    EngineOptions,
)
from arctic_embed.config import ENGINES, MODEL_DTYPES

EPILOG = """examples:
  arctic-embed batch --input docs.jsonl --text-field body --id-field doc_id --output vectors/
  arctic-embed batch --input docs.parquet --output vectors/ --dtype int8 --devices cuda:0,cuda:1
  arctic-embed batch --target localhost:50050 --input lines.txt --output vectors.npy

Parquet output is a directory of part files plus _manifest.json. A job stopped by Ctrl-C, SIGKILL or a crash
resumes from its last committed chunk when the same command runs again (no row twice, none lost)."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    c, e, o = BatchConfig(), EngineOptions(), EmbedOptions()
    p = sub.add_parser("batch", help="embed a file (text, JSONL, CSV, Parquet) into Parquet or .npy; resumable",
                       description="Embed every row of a file, in chunks, with a progress bar; resumable.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input and output")
    io.add_argument("--input", required=True, help="text (one input per line), .jsonl, .csv or .parquet file")
    io.add_argument("--input-format", choices=INPUT_FORMATS, default=c.input_format)
    io.add_argument("--text-field", default=c.text_field, help="jsonl/csv/parquet: the field holding the text")
    io.add_argument("--id-field", default=c.id_field,
                    help="jsonl/csv/parquet: field carried to the output as `id` (default: the row number)")
    io.add_argument("--output", required=True, help="directory for Parquet parts, or FILE.npy")
    io.add_argument("--output-format", choices=OUTPUT_FORMATS, default=c.output_format)
    io.add_argument("--vector-format", choices=VECTOR_FORMATS, default=c.vector_format,
                    help="Parquet `vector` column: fixed-size list of the dtype, or fixed-size bytes")
    io.add_argument("--chunk-rows", type=int, default=c.chunk_rows, help="rows per committed part")
    io.add_argument("--in-flight", type=int, default=c.in_flight, help="chunks embedded at once")
    io.add_argument("--overwrite", action="store_true", help="start over, replacing what the output holds")
    io.add_argument("--no-progress", action="store_true", help="no progress bar (the summary line stays)")
    emb = p.add_argument_group("embedding options (as in a request)")
    emb.add_argument("--dtype", choices=OUTPUT_DTYPES, default=o.dtype, help="output dtype")
    emb.add_argument("--dimensions", type=int, default=None, help="Matryoshka truncation (default: full)")
    emb.add_argument("--no-normalize", action="store_true")
    emb.add_argument("--prefix", default=o.prefix, help='text put before every input, e.g. "query: "')
    emb.add_argument("--prompt-name", default=o.prompt_name, help="a prompt of the model's config instead")
    emb.add_argument("--no-truncate", action="store_true", help="fail on inputs over the model's limit")
    emb.add_argument("--truncation-side", choices=("right", "left"), default="right")
    eng = p.add_argument_group("engine: a running server (--target) or in-process (the default)")
    eng.add_argument("--target", default=e.target, help="host:port of a running `arctic-embed serve`")
    eng.add_argument("--request-batch-size", "--batch-size", type=int, default=e.request_batch_size,
                     help="server: inputs per request")
    eng.add_argument("--concurrency", type=int, default=e.concurrency, help="server: requests in flight")
    eng.add_argument("--model", default=e.model_path, help="in-process: model directory (default: bundled MiniLM)")
    eng.add_argument("--engine", choices=ENGINES, default=e.engine)
    eng.add_argument("--model-dtype", choices=MODEL_DTYPES, default=e.model_dtype)
    eng.add_argument("--devices", default="", help="in-process: e.g. cuda:0,cuda:1 or cpu (default: all GPUs)")
    eng.add_argument("--replicas-per-device", type=int, default=e.replicas_per_device)
    eng.add_argument("--tokenizer-workers", type=int, default=e.tokenizer_workers, help="0 = pick from the cores")
    eng.add_argument("--max-batch-tokens", type=int, default=e.max_batch_tokens)
    eng.add_argument("--max-batch-size", type=int, default=e.max_batch_size)
    eng.add_argument("--torch-threads", type=int, default=e.torch_threads)
    return p


def config_from_args(args: argparse.Namespace) -> BatchConfig:
    embed = EmbedOptions(dtype=args.dtype, dimensions=args.dimensions, normalize=not args.no_normalize,
                         prefix=args.prefix, prompt_name=args.prompt_name, truncate=not args.no_truncate,
                         truncate_left=args.truncation_side == "left")
    engine = EngineOptions(target=args.target, model_path=args.model, engine=args.engine,
                           model_dtype=args.model_dtype, devices=[d for d in args.devices.split(",") if d],
                           replicas_per_device=args.replicas_per_device, tokenizer_workers=args.tokenizer_workers,
                           max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size,
                           torch_threads=args.torch_threads, request_batch_size=args.request_batch_size,
                           concurrency=args.concurrency)
    return BatchConfig(input=args.input, output=args.output, input_format=args.input_format,
                       text_field=args.text_field, id_field=args.id_field, output_format=args.output_format,
                       vector_format=args.vector_format, chunk_rows=args.chunk_rows, in_flight=args.in_flight,
                       overwrite=args.overwrite, progress=not args.no_progress, embed=embed, engine=engine)


def main(args: argparse.Namespace) -> int:
    """Run the job; returns the exit code (0 done, 1 error, 130 interrupted)."""
    try:
        from arctic_embed.batch.job import Interrupted, run_batch
    except ImportError as exc:
        print(f"arctic-embed batch: error: {exc.name or exc} is missing; pip install 'arctic-serve[batch]'",
              file=sys.stderr)
        return 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        summary = run_batch(config_from_args(args))
    except Interrupted as exc:
        print(f"arctic-embed batch: {exc}", file=sys.stderr)
        return 130
    except BatchError as exc:
        print(f"arctic-embed batch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("arctic-embed batch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(summary.line(), flush=True)
    return 0
