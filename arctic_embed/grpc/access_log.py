"""One access-log line per gRPC call (method, status, duration, peer), for either server; off unless asked for.

Goes first in the interceptor list so it sees the final status set by the status interceptor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from arctic_embed.logs import log_access


def _status(context: aio.ServicerContext, failed: bool) -> str:
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class AccessLogInterceptor(aio.ServerInterceptor):
    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger

    def _done(self, method: str, context: aio.ServicerContext, started: float, failed: bool) -> None:
        log_access(self._log, "grpc", method, _status(context, failed), time.perf_counter() - started,
                   context.peer() or "")

    def _unary(self, method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Any, context: aio.ServicerContext) -> Any:
            started, failed = time.perf_counter(), True
            try:
                result = await behavior(request, context)
                failed = False
                return result
            finally:
                self._done(method, context, started, failed)

        return handler

    def _stream(self, method: str, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            started, failed = time.perf_counter(), True
            try:
                async for item in behavior(request, context):
                    yield item
                failed = False
            finally:
                self._done(method, context, started, failed)

        return handler

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, handler.stream_stream), handler.request_deserializer,
                handler.response_serializer)
        return handler
