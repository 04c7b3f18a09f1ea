"""`arctic-embed`: serve the embedding service, or run a batch job against one.

    arctic-embed serve [--model DIR] [--engine torch|vllm] [--port 50050] ...
    arctic-embed batch --input docs.jsonl --output vectors/ [--target HOST:PORT] ...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from arctic_embed.config import ENGINES, MODEL_DTYPES, ReplicaConfig, ServerConfig
from arctic_embed.envargs import EnvError, HelpFormatter, apply_env
from arctic_embed.logs import LOG_FORMATS
from arctic_embed.logs import configure as configure_logging

ENV_PREFIX = "ARCTIC_EMBED_"


SERVE_DESCRIPTION = """Serve one embedding model over gRPC (arctic.embed.v1.EmbedService, Arctic's InferenceService,
grpc.health.v1, reflection v1/v1alpha) and HTTP (OpenAI POST /v1/embeddings, TEI POST /embed, /health, /info,
/metrics) from the same core. Every option can also be set from the environment variable named in its help."""


def _serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d = ServerConfig()
    r = ReplicaConfig()
    p = sub.add_parser("serve", help="run the embedding server (gRPC and HTTP)", description=SERVE_DESCRIPTION,
                       formatter_class=HelpFormatter)
    p.add_argument("--model", default=d.model_path,
                   help="model directory or Hugging Face Hub id (downloaded into / found in the HF cache); "
                        "empty = the bundled all-MiniLM-L6-v2")
    p.add_argument("--model-name", default=d.model_name,
                   help="name clients send in `model` (empty = the Hub id, or the directory's name)")
    p.add_argument("--engine", choices=ENGINES, default=r.engine,
                   help="torch: native encoder (BERT family, the speed path); vllm: vLLM pooling runner")
    p.add_argument("--dtype", choices=MODEL_DTYPES, default=r.dtype,
                   help="model dtype (auto = float16 on CUDA, float32 on CPU)")
    p.add_argument("--host", default=d.host, help="interface for gRPC and HTTP")
    p.add_argument("--port", type=int, default=d.port, help="gRPC port (0 = any free port)")
    p.add_argument("--http-port", type=int, default=d.http_port,
                   help="HTTP port: OpenAI /v1/embeddings, TEI /embed, /health, /info, /metrics (0 = off)")
    p.add_argument("--metrics-port", type=int, default=d.metrics_port,
                   help="separate Prometheus port (0 = off; HTTP's /metrics serves the same registry)")
    p.add_argument("--devices", default="",
                   help="comma-separated, e.g. cuda:0,cuda:1 or cpu (empty = every GPU, else the CPU)")
    p.add_argument("--replicas-per-device", type=int, default=d.replicas_per_device,
                   help="replica processes per device (several per GPU overlap host and GPU work)")
    p.add_argument("--tokenizer-workers", type=int, default=d.tokenizer_workers, help="tokenizer processes")
    p.add_argument("--max-inputs-per-request", type=int, default=d.max_inputs_per_request,
                   help="inputs in one request before INVALID_ARGUMENT / HTTP 400")
    p.add_argument("--max-queued-tokens", type=int, default=d.max_queued_tokens,
                   help="backpressure: tokens admitted and not answered before RESOURCE_EXHAUSTED / HTTP 429")
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes,
                   help="largest gRPC message or HTTP body (HTTP 413 past it)")
    p.add_argument("--max-batch-tokens", type=int, default=r.max_batch_tokens, help="token budget of one engine batch")
    p.add_argument("--max-batch-size", type=int, default=r.max_batch_size, help="most sequences in one engine batch")
    p.add_argument("--torch-threads", type=int, default=r.torch_threads,
                   help="intra-op threads per CPU replica (0 = split the cores between replicas)")
    p.add_argument("--replica-startup-timeout", type=float, default=d.replica_startup_timeout_s,
                   help="seconds a replica gets to load its model")
    p.add_argument("--drain-grace", type=float, default=d.drain_grace_s,
                   help="on SIGTERM: admission stops at once and admitted requests run to the end; the drain "
                        "gives up after this many seconds without any request finishing (600 s at most in all)")
    p.add_argument("--gateways", type=int, default=1,
                   help="gateway processes sharing the ports (SO_REUSEPORT); each runs its own tokenizer workers and "
                        "replicas. Scales request handling past one Python process (needs an explicit --port)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper,
                   help="log level of every process of the server")
    p.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="text lines, or one JSON object per line (time, level, logger, pid, role, message, fields)")
    p.add_argument("--access-log", action="store_true", default=d.access_log,
                   help="one log line per request, gRPC and HTTP: method, status, duration, peer")
    p.add_argument("--metrics-host", default=d.metrics_host,
                   help="interface of the --metrics-port server (empty = the same as --host)")
    p.add_argument("--reuse-port", action="store_true",
                   help="SO_REUSEPORT on the gRPC port (--gateways sets it for its children; off otherwise, so a "
                        "second server on a taken port fails to start instead of silently sharing it)")
    p.add_argument("--api-key", default=d.api_key,
                   help="require `authorization: Bearer KEY` on every call except health checks")
    p.add_argument("--tls-cert", default=d.tls_cert_file, help="PEM certificate chain: serve gRPC over TLS")
    p.add_argument("--tls-key", default=d.tls_key_file, help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", default=d.tls_client_ca_file,
                   help="PEM CA bundle: require client certificates signed by it (mutual TLS)")
    apply_env(p, ENV_PREFIX)
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    replica = ReplicaConfig(engine=args.engine, dtype=args.dtype, max_batch_tokens=args.max_batch_tokens,
                            max_batch_size=args.max_batch_size, torch_threads=args.torch_threads)
    return ServerConfig(
        model_path=args.model, model_name=args.model_name, host=args.host, port=args.port,
        metrics_port=args.metrics_port, devices=[d for d in args.devices.split(",") if d],
        replicas_per_device=args.replicas_per_device, tokenizer_workers=args.tokenizer_workers,
        max_inputs_per_request=args.max_inputs_per_request, max_queued_tokens=args.max_queued_tokens,
        max_message_bytes=args.max_message_bytes, replica_startup_timeout_s=args.replica_startup_timeout,
        drain_grace_s=args.drain_grace, http_port=args.http_port, access_log=args.access_log, replica=replica,
        metrics_host=args.metrics_host, reuse_port=args.reuse_port, api_key=args.api_key,
        tls_cert_file=args.tls_cert, tls_key_file=args.tls_key, tls_client_ca_file=args.tls_client_ca,
    )


def _serve(args: argparse.Namespace, argv: list[str]) -> int:
    configure_logging(args.log_level, args.log_format)
    os.environ["ARCTIC_EMBED_LOG_LEVEL"] = args.log_level
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.gateways > 1:
        from arctic_embed.gateways import run_gateways

        return run_gateways(args.gateways, argv, args.port, args.metrics_port)
    config = config_from_args(args)
    if config.model_path:
        from arctic_embed.hub import ModelNotFound, looks_like_repo_id, resolve_model

        try:
            local = resolve_model(config.model_path)
        except ModelNotFound as exc:
            print(f"arctic-embed: {exc}", file=sys.stderr)
            return 2
        if not config.model_name and not Path(config.model_path).expanduser().exists() \
                and looks_like_repo_id(config.model_path):
            config.model_name = config.model_path
        config.model_path = str(local)
    # Everything below reads a local directory: no process of the server needs the Hub from here on.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from arctic_embed.grpc.server import run

    run(config)
    return 0


def _batch_parser(sub: argparse._SubParsersAction) -> None:
    from arctic_embed.batch.cli import add_parser

    add_parser(sub)


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(the `arctic-embed` parser, its `serve` subparser)."""
    parser = argparse.ArgumentParser(prog="arctic-embed", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,batch}")
    serve = _serve_parser(sub)
    _batch_parser(sub)
    return parser, serve


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser, _ = build_parser()
    except EnvError as exc:
        print(f"arctic-embed: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args, argv)
    from arctic_embed.batch.cli import main as run_batch

    return run_batch(args)


if __name__ == "__main__":
    raise SystemExit(main())
