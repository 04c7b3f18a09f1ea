"""The interceptor that turns domain errors into precise gRPC statuses (and the unexpected into INTERNAL).

Shared by both servers: each passes its own error→status table lookup and the base class of its expected errors
(`arctic_embed` here, `arctic_gen.server` for generation); anything else is logged with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

log = logging.getLogger(__name__)

StatusFor = Callable[[BaseException], grpc.StatusCode]


class StatusInterceptor(aio.ServerInterceptor):
    def __init__(self, status_for: StatusFor, expected: type[Exception],
                 on_request: Callable[[str], None] | None = None,
                 on_failure: Callable[[str, grpc.StatusCode], None] | None = None) -> None:
        self._status_for = status_for
        self._expected = expected
        self._on_request = on_request
        self._on_failure = on_failure

    async def _abort(self, context: aio.ServicerContext, method: str, exc: Exception) -> None:
        code = self._status_for(exc)
        if self._on_failure:
            self._on_failure(method, code)
        if not isinstance(exc, self._expected):
            log.exception("unexpected error in %s", method)
            await context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
        await context.abort(code, str(exc) or type(exc).__name__)

    def _unary(self, method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Any, context: aio.ServicerContext) -> Any:
            if self._on_request:
                self._on_request(method)
            try:
                return await behavior(request, context)
            except aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, method, exc)

        return handler

    def _stream(self, method: str, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            if self._on_request:
                self._on_request(method)
            try:
                async for item in behavior(request, context):
                    yield item
            except aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, method, exc)

        return handler

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, handler.stream_stream), handler.request_deserializer,
                handler.response_serializer)
        return handler


def embed_error_interceptor() -> StatusInterceptor:
    """The embedding server's: EmbedError table, request and failure counters in Prometheus."""
    from arctic_embed import metrics
    from arctic_embed.errors import EmbedError, status_code_for

    return StatusInterceptor(status_code_for, EmbedError,
                             on_request=lambda method: metrics.REQUESTS.labels(method).inc(),
                             on_failure=lambda method, code: metrics.FAILURES.labels(method, code.name).inc())
