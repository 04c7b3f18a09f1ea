"""Server assembly: tokenizer pool + replicas + core + gRPC (ours, Arctic's, health, reflection) + metrics."""

from __future__ import annotations

import asyncio
import logging
import signal

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from arctic_embed import metrics
from arctic_embed.config import ServerConfig
from arctic_embed.errors import StartupError
from arctic_embed.grpc import arctic_compat, servicer
from arctic_embed.grpc.access_log import AccessLogInterceptor
from arctic_embed.grpc.errors import embed_error_interceptor
from arctic_embed.grpc.reflection import enable_reflection
from arctic_embed.grpc.transport import ApiKeyInterceptor, bind, server_credentials, server_options
from arctic_embed.logs import access_logger
from arctic_embed.model_files import read_model_spec
from arctic_embed.replicas import ReplicaManager
from arctic_embed.service import EmbedCore
from arctic_embed.tokenizer_pool import TokenizerPool

log = logging.getLogger(__name__)
BUNDLED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


DRAIN_MAX_S = 600.0
"""SIGTERM drain: admitted requests get this long in all (and `drain_grace_s` without any completing)."""


def grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    return server_options(config.max_message_bytes, config.reuse_port)


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
                                   config.tokenizer_workers, max_retries=config.max_retries,
                                   backoff_max_s=config.restart_backoff_max_s)
        self._replicas = ReplicaManager(config, str(model_path))
        started = await asyncio.gather(self._pool.start(), self._replicas.start(), return_exceptions=True)
        failure = next((r for r in started if isinstance(r, BaseException)), None)
        if failure is not None:
            await self._replicas.close()
            await self._pool.close()
            if isinstance(failure, StartupError):
                raise failure
            raise StartupError(f"could not start: {failure}") from failure
        self.core = EmbedCore(config, spec, self._pool, self._replicas)

        access = access_logger(config.access_log)
        interceptors = [embed_error_interceptor()]
        if access is not None:
            interceptors.insert(0, AccessLogInterceptor(access))
        if config.api_key:
            interceptors.insert(len(interceptors) - 1, ApiKeyInterceptor(config.api_key))
        server = aio.server(interceptors=interceptors, options=grpc_options(config))
        self._service_names = [servicer.add_to_server(self.core, server),
                               arctic_compat.add_to_server(self.core, server)]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        enable_reflection([*self._service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
                          server)
        credentials = server_credentials(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file) \
            if config.tls_cert_file else None
        self.port = bind(server, f"{config.host}:{config.port}", credentials)
        await server.start()
        self._server = server
        await self._set_health(True)
        self._watch = asyncio.create_task(self._watch_replicas())
        metrics.serve_metrics(config.metrics_port, config.metrics_host or config.host)
        if config.http_port:
            from arctic_embed.http.app import build_app
            from arctic_embed.http.server import HttpServer

            app = build_app(self.core, lambda: bool(self._replicas and self._replicas.n_ready) and not self._draining,
                            config.max_message_bytes, access, config.api_key)
            self._http = HttpServer(app, config.host, config.http_port, config.drain_grace_s, config.reuse_port)
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
        if self.core is not None:  # new requests get UNAVAILABLE at once; admitted ones run to the end
            await self.core.drain(stall_s=grace, cap_s=DRAIN_MAX_S)
        stops = [self._server.stop(min(grace, 1.0))] if self._server else []
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
    """Serve until SIGTERM/SIGINT; a server that cannot start says why in one line and exits with status 1."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(config))
    except (StartupError, OSError) as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(1) from None
