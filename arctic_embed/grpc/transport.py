"""gRPC server options both servers (embed and generate) share, and why each one is set.

Why requests came back CANCELLED under concurrency (issue 15/20): grpc core keeps calls that have arrived but that
the Python server has not yet asked for (grpc.aio requests one call at a time from its event loop) in a pending
queue. Its backlog protector zombies calls at random once that queue holds `grpc.server.max_pending_requests`
(default 1,000) and all of them past `..._hard_limit` (default 3,000); it also expires calls that waited there more
than `grpc.server_max_unrequested_time_in_server` (default 30 s). A zombied call is torn down with RST_STREAM and
the client sees CANCELLED without the handler ever running. About 1,000 calls arriving at once on one channel was
enough. We raise those limits well past any concurrency we promise (4,096 per channel, many channels) and do our
own admission in the handler instead: a request the server cannot take gets RESOURCE_EXHAUSTED in milliseconds.
"""

from __future__ import annotations

import grpc
from grpc import aio

from arctic_embed.auth import bearer_matches

PENDING_CALLS_LIMIT = 1 << 17
"""Calls grpc core may hold before the Python server picks them up (the core's default is 1,000, then random
CANCELLED). Each pending call costs a few KB; our own admission control bounds the real work."""
PENDING_CALL_MAX_WAIT_S = 24 * 3600
"""A pending call is never expired by grpc core before the client's own deadline would end it."""


def server_options(max_message_bytes: int, reuse_port: bool = False) -> list[tuple[str, int]]:
    """Options for `grpc.aio.server(options=...)`.

    `reuse_port`: SO_REUSEPORT, only for several gateway processes sharing one port on purpose (`--gateways N`);
    without it a second server on the same port fails to bind instead of silently sharing it."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.server.max_pending_requests", PENDING_CALLS_LIMIT),
        ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS_LIMIT),
        ("grpc.server_max_unrequested_time_in_server", PENDING_CALL_MAX_WAIT_S),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


HEALTH_SERVICE_PREFIX = "/grpc.health.v1.Health/"


class ApiKeyInterceptor(aio.ServerInterceptor):
    """Every call except health checks must carry `authorization: Bearer <key>`; others get UNAUTHENTICATED."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        method = handler_call_details.method
        if method.startswith(HEALTH_SERVICE_PREFIX):
            return await continuation(handler_call_details)
        header = next((value for key, value in handler_call_details.invocation_metadata or ()
                       if key == "authorization"), None)
        if bearer_matches(header if isinstance(header, str) else None, self._api_key):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape that only answers UNAUTHENTICATED."""
    message = "missing or wrong API key: send metadata `authorization: Bearer <key>`"

    async def unary(request, context: aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request, context: aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    decode, encode = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, decode, encode)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, decode, encode)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, decode, encode)
    return grpc.stream_stream_rpc_method_handler(streaming, decode, encode)


def server_credentials(cert_file: str, key_file: str, client_ca_file: str = "") -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with `client_ca_file`, clients must present a certificate it signed."""
    with open(cert_file, "rb") as f:
        chain = f.read()
    with open(key_file, "rb") as f:
        key = f.read()
    root = None
    if client_ca_file:
        with open(client_ca_file, "rb") as f:
            root = f.read()
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=root,
                                       require_client_auth=bool(client_ca_file))


def bind(server: aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind `address`; a port that is taken (or any bind failure) is one clear error, not grpc's bare RuntimeError."""
    problem = f"cannot listen on {address}: the port is in use or the address is not local " \
              "(several gateways on one port: use --gateways N)"
    try:
        port = server.add_insecure_port(address) if credentials is None \
            else server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(problem) from exc
    if not port:
        raise OSError(problem)
    return port
