"""The one table from embedding-service errors to HTTP statuses, and the two error bodies (OpenAI's and TEI's).

It follows the gRPC table (`arctic_embed.errors.STATUS_BY_ERROR`) row for row: INVALID_ARGUMENT → 400 (TEI's
routes answer 422, as TEI does), RESOURCE_EXHAUSTED → 429, UNAVAILABLE → 503, DEADLINE_EXCEEDED → 504,
CANCELLED → 499, NOT_FOUND → 404, a body over --max-message-bytes → 413; anything unexpected → 500.
"""

from __future__ import annotations

from dataclasses import dataclass

from arctic_embed.errors import Cancelled, DeadlineExceeded, EmbedError, InvalidInput, NotFound, Overloaded, Unavailable


class BodyTooLarge(InvalidInput):
    """The request body is over --max-message-bytes (gRPC answers RESOURCE_EXHAUSTED for the same)."""


@dataclass(frozen=True)
class HttpStatus:
    code: int
    openai_type: str
    """`error.type` in an OpenAI error body."""
    tei_type: str
    """`error_type` in a TEI error body."""


TOO_LARGE = HttpStatus(413, "invalid_request_error", "Validation")
HTTP_STATUS_BY_ERROR: dict[type[EmbedError], HttpStatus] = {
    BodyTooLarge: TOO_LARGE,
    InvalidInput: HttpStatus(400, "invalid_request_error", "Validation"),
    Overloaded: HttpStatus(429, "rate_limit_exceeded", "Overloaded"),
    Unavailable: HttpStatus(503, "service_unavailable", "Unhealthy"),
    DeadlineExceeded: HttpStatus(504, "timeout", "Backend"),
    Cancelled: HttpStatus(499, "cancelled", "Backend"),
    NotFound: HttpStatus(404, "not_found_error", "Validation"),
}
INTERNAL = HttpStatus(500, "internal_error", "Backend")
TEI_VALIDATION_CODE = 422
"""TEI answers validation errors with 422 Unprocessable Entity."""


def http_status_for(error: BaseException) -> HttpStatus:
    """The HTTP status of the nearest class of `error` in the table; anything else is a 500."""
    for cls in type(error).__mro__:
        status = HTTP_STATUS_BY_ERROR.get(cls)
        if status is not None:
            return status
    return INTERNAL


def openai_error_body(message: str, status: HttpStatus, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": status.openai_type, "param": param, "code": status.code}}


def tei_error_body(message: str, status: HttpStatus) -> dict:
    return {"error": message, "error_type": status.tei_type}


def tei_code(status: HttpStatus) -> int:
    return TEI_VALIDATION_CODE if status.code == 400 else status.code
