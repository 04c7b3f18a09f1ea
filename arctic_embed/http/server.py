"""Uvicorn inside the gateway's event loop, next to the gRPC server (one process, one core, one loop).

The embedding server owns SIGTERM/SIGINT (it drains both transports); uvicorn's own signal capture is off.
The socket is bound here; with `reuse_port` (only for `--gateways N` children, as for gRPC) SO_REUSEPORT lets the
gateway processes share the HTTP port; otherwise a busy port is an error, not a silent share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

log = logging.getLogger(__name__)


class _InLoopServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpServer:
    """`start()` binds and serves `app` in the running loop and returns the port; `stop()` drains."""

    def __init__(self, app: Any, host: str, port: int, grace_s: float = 10.0, reuse_port: bool = False) -> None:
        self.host, self.port, self.grace_s, self.reuse_port = host, port, grace_s, reuse_port
        config = uvicorn.Config(app, loop="none", lifespan="off", log_config=None, access_log=False,
                                server_header=False, timeout_graceful_shutdown=max(1, int(grace_s)))
        self._server = _InLoopServer(config)
        self._task: asyncio.Task | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> int:
        self._socket = bind_socket(self.host, self.port, self.reuse_port)
        self.port = self._socket.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("HTTP (OpenAI /v1/embeddings, TEI /embed) on %s:%d", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the grace period), close connections."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.grace_s + 5)
        except asyncio.TimeoutError:
            self._server.force_exit = True
            await self._task
        finally:
            if self._socket is not None:
                self._socket.close()
