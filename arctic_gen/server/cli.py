"""`arctic-gen serve --model DIR|HUB_ID [options] [vLLM engine arguments]`: the Generate gRPC server.

Every option, vLLM's included, can also come from an `ARCTIC_GEN_<OPTION>` environment variable (the command
line wins). On a CPU-only machine the KV cache is sized from free memory unless you set it.
"""

from __future__ import annotations

import argparse
import os
import sys

from arctic_embed.envargs import EnvError, apply_env
from arctic_embed.logs import LOG_FORMATS
from arctic_gen.server.app import ServerConfig

ENV_PREFIX = "ARCTIC_GEN_"
CPU_KV_FRACTION = 0.25
"""Share of the memory free at start that the CPU KV cache takes by default."""
CPU_KV_MAX_BYTES = 8 * 2**30
CPU_KV_MIN_BYTES = 64 * 2**20
DESCRIPTION = """Serve arctic.gen.v1.GenerateService (streaming Generate, Abort, Info), grpc.health.v1 and reflection
for one model, on vLLM with the arctic_gen plugin. vLLM's engine arguments follow ours."""


class CpuMemoryError(RuntimeError):
    """Not enough free memory for a KV cache on a CPU-only machine."""


def build_serve_parser():
    """The `serve` command's parser (vLLM's parser class, so `--config file.yaml` etc. work as in vLLM)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    serve = FlexibleArgumentParser(prog="arctic-gen serve", description=DESCRIPTION)
    d = ServerConfig()
    group = serve.add_argument_group("server")
    group.add_argument("--host", default=d.host, help=f"interface to listen on (default: {d.host})")
    group.add_argument("--port", type=int, default=d.port,
                       help=f"gRPC port; 0 = any free port, printed at start (default: {d.port})")
    group.add_argument("--metrics-port", type=int, default=d.metrics_port,
                       help=f"Prometheus port for vLLM's engine metrics; 0 = off (default: {d.metrics_port})")
    group.add_argument("--max-concurrent-streams", type=int, default=d.max_concurrent_streams,
                       help=f"streams in flight before RESOURCE_EXHAUSTED (default: {d.max_concurrent_streams})")
    group.add_argument("--grace-period", type=float, default=d.grace_period_s,
                       help=f"seconds running streams get at shutdown (default: {d.grace_period_s})")
    group.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes,
                       help=f"largest gRPC message (default: {d.max_message_bytes})")
    group.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                       help="text, or one JSON object per line for every logger, vLLM's included (default: text)")
    group.add_argument("--access-log", action="store_true", default=d.access_log,
                       help="one log line per RPC: method, status, duration, peer (default: off)")
    group.add_argument("--api-server-count", type=int, default=1,
                       help="front-end processes on the one engine, sharing the port (SO_REUSEPORT), as vLLM's "
                            "option of the same name: each does its streams' detokenization and gRPC work; raise it "
                            "when one front-end process saturates a CPU core; --max-concurrent-streams applies to "
                            "each front end (default: 1)")
    AsyncEngineArgs.add_cli_args(serve)  # loads vLLM's general plugins first (ours adds its engine arguments)
    apply_env(serve, ENV_PREFIX)
    return serve


def free_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (what the kernel can hand out without swapping)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def default_cpu_kv_cache_bytes(free_bytes: int) -> int:
    """A quarter of free memory, at most 8 GiB; CpuMemoryError when not even 64 MiB would fit."""
    size = min(int(free_bytes * CPU_KV_FRACTION), CPU_KV_MAX_BYTES)
    if size < CPU_KV_MIN_BYTES:
        raise CpuMemoryError(
            f"only {free_bytes / 2**20:.0f} MiB of memory is free: not enough for the model and a KV cache; "
            "free memory or pass --kv-cache-memory-bytes explicitly")
    return size


def apply_cpu_defaults(engine_args, environ=os.environ) -> str | None:
    """On a CPU-only vLLM: size the KV cache from free memory unless the user did. Returns the message to print."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    if engine_args.kv_cache_memory_bytes is not None or environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return None
    free = free_memory_bytes()
    engine_args.kv_cache_memory_bytes = default_cpu_kv_cache_bytes(free)
    return (f"arctic-gen: CPU: KV cache {engine_args.kv_cache_memory_bytes / 2**30:.2f} GiB "
            f"({CPU_KV_FRACTION:.0%} of {free / 2**30:.1f} GiB free; --kv-cache-memory-bytes sets it)")


def _wants_json_logs(argv: list[str]) -> bool:
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            return argv[i + 1] == "json"
        if arg.startswith("--log-format="):
            return arg.split("=", 1)[1] == "json"
    return os.environ.get(ENV_PREFIX + "LOG_FORMAT", "") == "json"


def main(argv: list[str] | None = None) -> int:
    """`argv` = the arguments after `serve` (a leading `serve` is accepted too)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "serve":
        argv = argv[1:]
    if _wants_json_logs(argv):
        os.environ["VLLM_CONFIGURE_LOGGING"] = "0"  # before vLLM is imported: our JSON handler gets its records
    import uvloop
    from vllm.engine.arg_utils import AsyncEngineArgs

    from arctic_embed.logs import configure as configure_logging
    from arctic_gen.server.app import serve

    try:
        parser = build_serve_parser()
    except EnvError as exc:
        print(f"arctic-gen: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    configure_logging("INFO", args.log_format, role="arctic-gen")
    config = ServerConfig(host=args.host, port=args.port, max_concurrent_streams=args.max_concurrent_streams,
                          grace_period_s=args.grace_period, max_message_bytes=args.max_message_bytes,
                          metrics_port=args.metrics_port, access_log=args.access_log)
    if config.max_concurrent_streams < 1:
        print("arctic-gen: --max-concurrent-streams must be >= 1", file=sys.stderr)
        return 2
    if args.api_server_count < 1:
        print("arctic-gen: --api-server-count must be >= 1", file=sys.stderr)
        return 2
    engine_args = AsyncEngineArgs.from_cli_args(argparse.Namespace(**vars(args)))
    if engine_args.speculative_config and vars(args).get("per_request_spec_decode_metrics") == "none":
        # vLLM >= 0.32 can count drafts per request: the last message's speculation stats are then exact.
        engine_args.per_request_spec_decode_metrics = "summary"
    try:
        message = apply_cpu_defaults(engine_args)
    except CpuMemoryError as exc:
        print(f"arctic-gen: {exc}", file=sys.stderr)
        return 2
    if message:
        print(message, flush=True)
    if args.api_server_count > 1:
        from arctic_gen.server.front_ends import run_front_ends

        return run_front_ends(engine_args, config, args.api_server_count, args.log_format, engine_args.model)
    uvloop.run(serve(engine_args, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
