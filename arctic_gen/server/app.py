"""Server assembly: AsyncLLM + GenerationCore + gRPC (Generate, health, reflection) on one port, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from arctic_embed.grpc.access_log import AccessLogInterceptor
from arctic_embed.grpc.reflection import enable_reflection
from arctic_embed.grpc.transport import server_options
from arctic_embed.logs import access_logger
from arctic_gen.server.core import EngineStats, GenerationCore
from arctic_gen.server.servicer import GenerateServicer, error_interceptor
from arctic_protos.arctic.gen.v1 import generate_pb2, generate_pb2_grpc

logger = logging.getLogger(__name__)

DRAIN_MAX_S = 600.0
"""SIGTERM drain: running streams get at most this long in all."""
SERVICE_NAME = generate_pb2.DESCRIPTOR.services_by_name["GenerateService"].full_name


@dataclass(frozen=True)
class ServerConfig:
    """Transport options of `arctic-gen serve` (engine options are vLLM's AsyncEngineArgs)."""

    host: str = "0.0.0.0"
    """Interface to listen on."""
    port: int = 50051
    """gRPC port; 0 = any free port (the bound port is printed)."""
    max_concurrent_streams: int = 256
    """Generate streams in flight before new ones get RESOURCE_EXHAUSTED."""
    grace_period_s: float = 5.0
    """On SIGTERM/SIGINT: health NOT_SERVING and new streams refused at once; running streams go on to the end
    while they keep streaming (cancelled after this many seconds without any message, or DRAIN_MAX_S in all)."""
    max_message_bytes: int = 16 * 2**20
    """Largest request/response message."""
    metrics_port: int = 0
    """Prometheus metrics over HTTP on this port (vLLM's `vllm:*` engine metrics); 0 = off."""
    access_log: bool = False
    """One log line per RPC: method, status, duration, peer."""


class GenerateServer:
    """Owns the engine, the core and the gRPC server."""

    def __init__(self, engine: Any, core: GenerationCore, config: ServerConfig, reuse_port: bool = False) -> None:
        """`reuse_port`: bind with SO_REUSEPORT, for front ends sharing one port (`--api-server-count`)."""
        self.engine, self.core, self.config = engine, core, config
        self.health = health.aio.HealthServicer()
        options = server_options(config.max_message_bytes, reuse_port=reuse_port)
        interceptors: list[grpc.aio.ServerInterceptor] = [error_interceptor()]
        access = access_logger(config.access_log)
        if access is not None:
            interceptors.insert(0, AccessLogInterceptor(access))
        self.server = grpc.aio.server(interceptors=interceptors, options=options)
        generate_pb2_grpc.add_GenerateServiceServicer_to_server(GenerateServicer(core), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection((SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), self.server)
        self.port = self.server.add_insecure_port(f"{config.host}:{config.port}")
        self._watch: asyncio.Task | None = None

    @classmethod
    def from_engine_args(cls, engine_args: Any, config: ServerConfig) -> GenerateServer:
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        stats = EngineStats()
        engine = AsyncLLM.from_engine_args(engine_args, usage_context=UsageContext.OPENAI_API_SERVER,
                                           stat_loggers=[stats.stat_logger_factory()])
        core = GenerationCore(engine, max_concurrent_streams=config.max_concurrent_streams, stats=stats)
        return cls(engine, core, config)

    async def start(self) -> None:
        await self.server.start()
        if self.config.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(self.config.metrics_port, addr=self.config.host)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._watch = asyncio.create_task(self._watch_engine())

    async def _watch_engine(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.engine.errored:
                logger.error("engine is dead: reporting NOT_SERVING")
                for service in ("", SERVICE_NAME):
                    await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
                return

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        left = await self.core.drain(stall_s=self.config.grace_period_s, cap_s=DRAIN_MAX_S)
        if left:
            logger.warning("drain ends with %d streams still running: they are cancelled", left)
        await self.server.stop(1.0)
        if self._watch is not None:
            self._watch.cancel()
        self.engine.shutdown()


async def serve(engine_args: Any, config: ServerConfig) -> None:
    """One process: engine client and gRPC server. Runs until SIGINT/SIGTERM."""
    server = GenerateServer.from_engine_args(engine_args, config)
    await server.start()
    print(f"arctic-gen: serving {server.core.model_config.model} on {config.host}:{server.port}", flush=True)
    await run_until_signal(server)


async def run_until_signal(server: GenerateServer) -> None:
    """Serve until SIGINT/SIGTERM, then drain and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
