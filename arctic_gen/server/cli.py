"""`arctic-gen serve --model DIR [vLLM engine args]`: the Generate gRPC server."""

from __future__ import annotations

import argparse
import sys

from arctic_gen.server.app import ServerConfig

USAGE = "usage: arctic-gen serve --model DIR [--host H] [--port P] [vLLM engine arguments]"


def build_serve_parser():
    """The `serve` command's parser (vLLM's parser class, so `--config file.yaml` etc. work as in vLLM)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    serve = FlexibleArgumentParser(prog="arctic-gen serve",
                                   description="Serve arctic.gen.v1.GenerateService for one model over gRPC.")
    defaults = ServerConfig()
    group = serve.add_argument_group("server")
    group.add_argument("--host", default=defaults.host)
    group.add_argument("--port", type=int, default=defaults.port, help="0 = any free port (printed at start)")
    group.add_argument("--max-concurrent-streams", type=int, default=defaults.max_concurrent_streams,
                       help="streams in flight before RESOURCE_EXHAUSTED")
    group.add_argument("--grace-period", type=float, default=defaults.grace_period_s,
                       help="seconds running streams get at shutdown")
    group.add_argument("--max-message-bytes", type=int, default=defaults.max_message_bytes)
    AsyncEngineArgs.add_cli_args(serve)  # loads vLLM's general plugins first (ours adds its engine arguments)
    return serve


def main(argv: list[str] | None = None) -> int:
    import uvloop
    from vllm.engine.arg_utils import AsyncEngineArgs

    from arctic_gen.server.app import serve

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "serve":
        print(USAGE, file=sys.stderr)
        return 2
    # Not "serve" as argv[0]: vLLM's parser rewrites `serve --model X` into its own positional form.
    args = build_serve_parser().parse_args(argv[1:])
    config = ServerConfig(host=args.host, port=args.port, max_concurrent_streams=args.max_concurrent_streams,
                          grace_period_s=args.grace_period, max_message_bytes=args.max_message_bytes)
    if config.max_concurrent_streams < 1:
        raise SystemExit("--max-concurrent-streams must be >= 1")
    engine_args = AsyncEngineArgs.from_cli_args(argparse.Namespace(**vars(args)))
    if engine_args.speculative_config and vars(args).get("per_request_spec_decode_metrics") == "none":
        # vLLM >= 0.32 can count drafts per request: the last message's speculation stats are then exact.
        engine_args.per_request_spec_decode_metrics = "summary"
    uvloop.run(serve(engine_args, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
