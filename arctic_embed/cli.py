"""`arctic-embed`: serve the embedding service, or run a batch job against one.

    arctic-embed serve [--model DIR] [--engine torch|vllm] [--port 50050] ...
    arctic-embed batch --target HOST:PORT --input texts.txt --output embeddings.npy
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from arctic_embed.config import ENGINES, MODEL_DTYPES, ReplicaConfig, ServerConfig
from arctic_embed.encoding import OUTPUT_DTYPES


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    d = ServerConfig()
    r = ReplicaConfig()
    p = sub.add_parser("serve", help="run the embedding gRPC server")
    p.add_argument("--model", default=d.model_path, help="model directory (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--model-name", default=d.model_name, help="name clients may send in `model`")
    p.add_argument("--engine", choices=ENGINES, default=r.engine)
    p.add_argument("--dtype", choices=MODEL_DTYPES, default=r.dtype, help="model dtype")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--metrics-port", type=int, default=d.metrics_port, help="Prometheus port (0 = off)")
    p.add_argument("--devices", default="", help="comma-separated, e.g. cuda:0,cuda:1 or cpu (default: all GPUs)")
    p.add_argument("--replicas-per-device", type=int, default=d.replicas_per_device)
    p.add_argument("--tokenizer-workers", type=int, default=d.tokenizer_workers)
    p.add_argument("--max-inputs-per-request", type=int, default=d.max_inputs_per_request)
    p.add_argument("--max-queued-tokens", type=int, default=d.max_queued_tokens)
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes)
    p.add_argument("--max-batch-tokens", type=int, default=r.max_batch_tokens)
    p.add_argument("--max-batch-size", type=int, default=r.max_batch_size)
    p.add_argument("--torch-threads", type=int, default=r.torch_threads, help="per CPU replica (0 = share cores)")
    p.add_argument("--replica-startup-timeout", type=float, default=d.replica_startup_timeout_s)
    p.add_argument("--drain-grace", type=float, default=d.drain_grace_s, help="seconds to drain on SIGTERM")
    p.add_argument("--gateways", type=int, default=1,
                   help="gateway processes sharing the port (SO_REUSEPORT); each runs its own tokenizer workers and "
                        "replicas. Scales request handling past one Python process (needs an explicit --port)")
    p.add_argument("--log-level", default=os.environ.get("ARCTIC_EMBED_LOG_LEVEL", "INFO"))


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    replica = ReplicaConfig(engine=args.engine, dtype=args.dtype, max_batch_tokens=args.max_batch_tokens,
                            max_batch_size=args.max_batch_size, torch_threads=args.torch_threads)
    return ServerConfig(
        model_path=args.model, model_name=args.model_name, host=args.host, port=args.port,
        metrics_port=args.metrics_port, devices=[d for d in args.devices.split(",") if d],
        replicas_per_device=args.replicas_per_device, tokenizer_workers=args.tokenizer_workers,
        max_inputs_per_request=args.max_inputs_per_request, max_queued_tokens=args.max_queued_tokens,
        max_message_bytes=args.max_message_bytes, replica_startup_timeout_s=args.replica_startup_timeout,
        drain_grace_s=args.drain_grace, replica=replica,
    )


def _batch_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="embed a file of texts (one per line) through a running server")
    p.add_argument("--target", default="localhost:50050")
    p.add_argument("--input", required=True, help="text file, one input per line ('-' = stdin)")
    p.add_argument("--output", required=True, help=".npy file to write")
    p.add_argument("--dtype", choices=OUTPUT_DTYPES, default="float32")
    p.add_argument("--dimensions", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--prefix", default="")


def _run_batch(args: argparse.Namespace) -> None:
    import numpy as np

    from arctic_embed.client import EmbedClient

    stream = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    with stream:
        texts = [line.rstrip("\n") for line in stream]
    with EmbedClient(args.target) as client:
        out = client.embed(texts, dtype=args.dtype, dimensions=args.dimensions, prefix=args.prefix,
                           batch_size=args.batch_size, concurrency=args.concurrency)
    np.save(args.output, out)
    print(f"wrote {out.shape} {out.dtype} to {args.output}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="arctic-embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _batch_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(level=args.log_level.upper(),
                            format="%(asctime)s gateway[%(process)d] %(levelname)s %(name)s: %(message)s")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if args.gateways > 1:
            from arctic_embed.gateways import run_gateways

            raise SystemExit(run_gateways(args.gateways, sys.argv[1:] if argv is None else argv, args.port,
                                          args.metrics_port))
        from arctic_embed.grpc.server import run

        run(config_from_args(args))
    else:
        _run_batch(args)


if __name__ == "__main__":
    main()
