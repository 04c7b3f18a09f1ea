"""Server reflection under both names clients use: `grpc.reflection.v1` (grpcurl ≥ 1.9, Postman, current grpc
tools) and `grpc.reflection.v1alpha` (older tools). Shared by the embedding and generation servers.

grpcio-reflection ships only the v1alpha service; the v1 messages are the same messages with the same field
numbers under a new package, so the v1 method is served by the same implementation, (de)serialized with the
v1alpha message classes.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc import aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME


def enable_reflection(service_names: Iterable[str], server: aio.Server) -> None:
    """Register reflection v1 and v1alpha listing `service_names` (both reflection services are added)."""
    names = [*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME]
    servicer = reflection.aio.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),))
