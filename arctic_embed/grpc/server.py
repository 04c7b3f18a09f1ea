"""Server assembly: tokenizer pool + replicas + core + gRPC (ours, Arctic's, health, reflection) + metrics."""

from __future__ import annotations

import asyncio
import logging
import signal

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from arctic_embed import metrics
from arctic_embed.config import ServerConfig
from arctic_embed.grpc import arctic_compat, servicer
from arctic_embed.grpc.access_log import AccessLogInterceptor
from arctic_embed.grpc.errors import embed_error_interceptor
from arctic_embed.grpc.reflection import enable_reflection
from arctic_embed.logs import access_logger
from arctic_embed.model_files import read_model_spec
from arctic_embed.replicas import ReplicaManager
from arctic_embed.service import EmbedCore
from arctic_embed.tokenizer_pool import TokenizerPool

log = logging.getLogger(__name__)
BUNDLED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


class EmbedServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.port = 0
        self.core: EmbedCore | None = None
        self._server: aio.Server | None = None
        self._health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self._service_names: list[str] = []
        self._pool: TokenizerPool | None = None
        self._replicas: ReplicaManager | None = None
        self._watch: asyncio.Task | None = None
        self.http_port = 0
        self._http = None
        self._draining = False

    async def start(self) -> int:
        config = self.config
        model_path = config.resolved_model_path()
        name = config.model_name or (BUNDLED_MODEL_NAME if not config.model_path else None)
        spec = read_model_spec(model_path, name)
        self._pool = TokenizerPool(str(model_path), spec.max_input_tokens, spec.do_lower_case,
                                   config.tokenizer_workers)
        self._replicas = ReplicaManager(config, str(model_path))
        await asyncio.gather(self._pool.start(), self._replicas.start())
        self.core = EmbedCore(config, spec, self._pool, self._replicas)

        access = access_logger(config.access_log)
        interceptors = [embed_error_interceptor()]
        if access is not None:
            interceptors.insert(0, AccessLogInterceptor(access))
        server = aio.server(interceptors=interceptors, options=grpc_options(config))
        self._service_names = [servicer.add_to_server(self.core, server),
                               arctic_compat.add_to_server(self.core, server)]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        enable_reflection([*self._service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
                          server)
        self.port = server.add_insecure_port(f"{config.host}:{config.port}")
        await server.start()
        self._server = server
        await self._set_health(True)
        self._watch = asyncio.create_task(self._watch_replicas())
        metrics.serve_metrics(config.metrics_port)
        if config.http_port:
            from arctic_embed.http.app import build_app
            from arctic_embed.http.server import HttpServer

            app = build_app(self.core, lambda: bool(self._replicas and self._replicas.n_ready) and not self._draining,
                            config.max_message_bytes, access)
            self._http = HttpServer(app, config.host, config.http_port, config.drain_grace_s)
            self.http_port = await self._http.start()
        log.info("serving %s on %s:%d (%d replicas, %d tokenizer workers, engine %s)", self.core.model_name,
                 config.host, self.port, len(self._replicas.replicas), config.tokenizer_workers,
                 config.replica.engine)
        return self.port

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self._service_names]:
            await _maybe_await(self._health.set(name, status))

    async def _watch_replicas(self) -> None:
        serving = True
        while True:
            await asyncio.sleep(0.5)
            now = bool(self._replicas and self._replicas.n_ready)
            if now != serving:
                serving = now
                await self._set_health(serving)

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful drain: report NOT_SERVING, refuse new RPCs, let in-flight ones finish, then stop workers."""
        if self._watch:
            self._watch.cancel()
        self._draining = True
        await _maybe_await(self._health.enter_graceful_shutdown())
        grace = self.config.drain_grace_s if grace_s is None else grace_s
        stops = [self._server.stop(grace)] if self._server else []
        if self._http is not None:
            stops.append(self._http.stop())
        await asyncio.gather(*stops)
        if self._replicas:
            await self._replicas.close()
        if self._pool:
            await self._pool.close()

    async def wait(self) -> None:
        if self._server:
            await self._server.wait_for_termination()


async def _maybe_await(value: object) -> None:
    if asyncio.iscoroutine(value):
        await value


async def serve(config: ServerConfig) -> None:
    server = EmbedServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    waiter = asyncio.create_task(server.wait())
    await asyncio.wait([waiter, asyncio.create_task(stopping.wait())], return_when=asyncio.FIRST_COMPLETED)
    log.info("draining (grace %.1fs)", config.drain_grace_s)
    await server.stop()


def run(config: ServerConfig) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
