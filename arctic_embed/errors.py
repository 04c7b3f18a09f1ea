"""Domain errors of the embedding service and the one table that maps them to gRPC status codes.

The core (tokenization, batching, replicas, engines, encoding) raises these; only the gRPC layer translates them.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc


class EmbedError(Exception):
    """Base class: a request failed for a reason the client should hear about."""


class InvalidInput(EmbedError):
    """The request itself is wrong (bad option, empty input, too long, bad token ids, unknown model)."""


class Overloaded(EmbedError):
    """Backpressure: the server's queue is full; retry later."""


class Unavailable(EmbedError):
    """No healthy replica can take the work right now."""


class DeadlineExceeded(EmbedError):
    """The request's deadline passed before its work finished."""


class Cancelled(EmbedError):
    """The client went away or aborted the request; its work was dropped."""


class NotFound(EmbedError):
    """A request id that the server does not know (Abort)."""


class EngineFailed(EmbedError):
    """The model failed on this work on every replica it was tried on (details only in the server log)."""


class StartupError(Exception):
    """The server cannot start (model cannot load, port taken): one line for the operator, then exit 1."""


STATUS_BY_ERROR: dict[type[EmbedError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    EngineFailed: grpc.StatusCode.INTERNAL,
}


def lookup_status(error: BaseException, table: Mapping[type, grpc.StatusCode]) -> grpc.StatusCode:
    """The status of the nearest class of `error` in `table`; anything unexpected is INTERNAL."""
    for cls in type(error).__mro__:
        code = table.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def status_code_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC status for an embedding-service error."""
    return lookup_status(error, STATUS_BY_ERROR)
