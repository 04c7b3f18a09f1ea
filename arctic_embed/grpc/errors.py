"""The interceptor that turns domain errors into precise gRPC statuses (and the unexpected into INTERNAL).

Shared by both servers: each passes its own error→status table lookup and the base class of its expected errors
(`arctic_embed` here, `arctic_gen.server` for generation); anything else is logged with its traceback and reaches
the client as a bare INTERNAL with an incident id (no exception names, paths or PIDs leave the server).

It also makes every RPC robust to bytes that are not the method's protobuf: the request deserializer is wrapped so a
message that does not decode becomes INVALID_ARGUMENT with one log line (unary calls), or ends the stream with
INVALID_ARGUMENT once the items before it are answered (streams never hang). Without this grpc answers UNKNOWN
with the Python exception in its details and logs a traceback per call.

Every failure is counted by status code, including deadlines and client cancels (the handler is cancelled then).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

log = logging.getLogger(__name__)

StatusFor = Callable[[BaseException], grpc.StatusCode]
_incidents = itertools.count(1)


class MalformedMessage(Exception):
    """A request message that is not valid protobuf for its method."""


class _Undecodable:
    """Stands in for a request message that did not decode (grpc would otherwise answer UNKNOWN)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, but any failure means "bad bytes"
            return _Undecodable(type(exc).__name__)

    return decode


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise MalformedMessage("a request message could not be decoded as this method's protobuf type")
        yield request


def _ended_code(context: aio.ServicerContext) -> grpc.StatusCode:
    """Why a handler was cancelled: its deadline passed, or the client went away."""
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 \
        else grpc.StatusCode.CANCELLED


class StatusInterceptor(aio.ServerInterceptor):
    def __init__(self, status_for: StatusFor, expected: type[Exception],
                 on_request: Callable[[str], None] | None = None,
                 on_failure: Callable[[str, grpc.StatusCode, float], None] | None = None) -> None:
        self._status_for = status_for
        self._expected = expected
        self._on_request = on_request
        self._on_failure = on_failure

    def _failed(self, method: str, code: grpc.StatusCode, started: float) -> None:
        if self._on_failure:
            self._on_failure(method, code, time.perf_counter() - started)

    async def _abort(self, context: aio.ServicerContext, method: str, exc: Exception, started: float) -> None:
        if isinstance(exc, MalformedMessage):
            self._failed(method, grpc.StatusCode.INVALID_ARGUMENT, started)
            log.warning("%s: malformed request message from %s", method, context.peer())
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        code = self._status_for(exc)
        self._failed(method, code, started)
        if not isinstance(exc, self._expected):
            incident = f"{os.getpid():x}-{next(_incidents)}"
            log.exception("unexpected error in %s (incident %s)", method, incident)
            await context.abort(code, f"internal error (incident {incident}); the server log has the details")
        await context.abort(code, str(exc) or code.name)

    def _unary(self, method: str, behavior: Callable[..., Awaitable[Any]], streaming_in: bool
               ) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Any, context: aio.ServicerContext) -> Any:
            started = time.perf_counter()
            if self._on_request:
                self._on_request(method)
            try:
                if streaming_in:
                    request = _checked(request)
                elif isinstance(request, _Undecodable):
                    raise MalformedMessage("the request message could not be decoded as this method's protobuf type")
                return await behavior(request, context)
            except aio.AbortError:
                raise
            except asyncio.CancelledError:
                self._failed(method, _ended_code(context), started)
                raise
            except Exception as exc:
                await self._abort(context, method, exc, started)

        return handler

    def _stream(self, method: str, behavior: Callable[..., AsyncIterator[Any]], streaming_in: bool
                ) -> Callable[..., AsyncIterator[Any]]:
        async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            if self._on_request:
                self._on_request(method)
            try:
                if streaming_in:
                    request = _checked(request)
                elif isinstance(request, _Undecodable):
                    raise MalformedMessage("the request message could not be decoded as this method's protobuf type")
                async for item in behavior(request, context):
                    yield item
            except aio.AbortError:
                raise
            except asyncio.CancelledError:
                self._failed(method, _ended_code(context), started)
                raise
            except Exception as exc:
                await self._abort(context, method, exc, started)

        return handler

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        decode, encode = _tolerant(handler.request_deserializer), handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary, False), decode, encode)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(self._unary(method, handler.stream_unary, True), decode,
                                                        encode)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._stream(method, handler.unary_stream, False), decode,
                                                        encode)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(self._stream(method, handler.stream_stream, True), decode,
                                                         encode)
        return handler


def embed_error_interceptor() -> StatusInterceptor:
    """The embedding server's: EmbedError table, request and failure counters in Prometheus."""
    from arctic_embed import metrics
    from arctic_embed.errors import EmbedError, status_code_for

    return StatusInterceptor(status_code_for, EmbedError,
                             on_request=lambda method: metrics.REQUESTS.labels(method).inc(),
                             on_failure=metrics.record_failure)
