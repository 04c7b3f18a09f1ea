"""Domain errors of the Generate service and the one table that maps them to gRPC status codes."""

from __future__ import annotations

import grpc

from arctic_embed.errors import lookup_status


class GenerateError(Exception):
    """Base of the errors a client can cause or see."""


class InvalidArgument(GenerateError):
    """A bad prompt or sampling option; the message says which field."""


class Overloaded(GenerateError):
    """Too many streams in flight; retry later (or on another replica)."""


class Unavailable(GenerateError):
    """The engine is not ready, shutting down or dead."""


class NotFound(GenerateError):
    """No such request or model."""


STATUS_CODES: dict[type[GenerateError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    NotFound: grpc.StatusCode.NOT_FOUND,
}


def status_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status for an error; anything unexpected is INTERNAL."""
    return lookup_status(error, STATUS_CODES)
