"""The interceptor that turns core errors into precise gRPC statuses (and the unexpected into INTERNAL)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from arctic_embed import metrics
from arctic_embed.errors import EmbedError, status_code_for

log = logging.getLogger(__name__)


async def _abort(context: aio.ServicerContext, method: str, exc: Exception) -> None:
    code = status_code_for(exc)
    metrics.FAILURES.labels(method, code.name).inc()
    if not isinstance(exc, EmbedError):
        log.exception("unexpected error in %s", method)
        await context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
    await context.abort(code, str(exc))


def _wrap_unary(method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> Any:
        metrics.REQUESTS.labels(method).inc()
        try:
            return await behavior(request, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, method, exc)

    return handler


def _wrap_stream(method: str, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        metrics.REQUESTS.labels(method).inc()
        try:
            async for item in behavior(request, context):
                yield item
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, method, exc)

    return handler


class ErrorInterceptor(aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(method, handler.stream_stream), handler.request_deserializer,
                handler.response_serializer)
        return handler
