"""The ASGI app: OpenAI- and TEI-compatible routes translated to `EmbedCore` calls (the same core as gRPC).

Translation only, as the gRPC servicers: request JSON → `EmbedJob` → `EmbedCore.embed` → `EmbedResult` → JSON.
Vectors come back from the core as little-endian float32 bytes; `base64` sends exactly those bytes, `float`
turns them into JSON numbers with msgspec (about 20× faster than the standard library for 64×384 floats).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from arctic_embed import __version__, metrics
from arctic_embed.auth import bearer_matches
from arctic_embed.errors import Cancelled, EmbedError, InvalidInput, Unavailable
from arctic_embed.http.errors import (
    INTERNAL,
    TOO_LARGE,
    BodyTooLarge,
    HttpStatus,
    http_status_for,
    openai_error_body,
    tei_code,
    tei_error_body,
)
from arctic_embed.http.schemas import EmbedInput, OpenAIEmbeddingRequest, TEIEmbedRequest
from arctic_embed.logs import log_access
from arctic_embed.service import EmbedCore, EmbedJob, EmbedResult

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()
_incidents = itertools.count(1)
_INT32_MAX = 2**31 - 1
OPENAI_PREFIX = "/v1/"
ROUTES = ("/v1/embeddings", "/v1/models", "/embed", "/health", "/info", "/metrics")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(body), status_code=status, media_type="application/json", headers=headers)


def job_inputs(value: EmbedInput, field: str) -> tuple[list[str], list[bytes]]:
    """(texts, token_ids as little-endian int32 bytes) from an OpenAI/TEI input value."""
    if isinstance(value, str):
        return [value], []
    if not value:
        return [], []
    if isinstance(value[0], str):
        return list(value), []  # type: ignore[arg-type]
    lists = [value] if isinstance(value[0], int) else value
    out: list[bytes] = []
    for i, ids in enumerate(lists):
        try:
            arr = np.asarray(ids, dtype=np.int64)
        except OverflowError:
            raise InvalidInput(f"{field}[{i}] holds a token id outside int32") from None
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > _INT32_MAX):
            raise InvalidInput(f"{field}[{i}] holds a token id outside 0..{_INT32_MAX}")
        out.append(arr.astype("<i4").tobytes())
    return [], out


def timing_headers(result: EmbedResult) -> dict[str, str]:
    """TEI's per-stage timing headers (milliseconds)."""
    t = result.timings
    return {"x-total-time": f"{t.total_ns / 1e6:.3f}", "x-tokenization-time": f"{t.tokenize_ns / 1e6:.3f}",
            "x-queue-time": f"{t.queue_ns / 1e6:.3f}", "x-inference-time": f"{t.inference_ns / 1e6:.3f}"}


async def embed_unless_gone(core: EmbedCore, job: EmbedJob, request: Request) -> EmbedResult:
    """`core.embed(job)`, cancelled when the client disconnects first (its work is dropped, as over gRPC)."""
    work = asyncio.ensure_future(core.embed(job))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done() and gone.done():
            work.cancel()
        gone.cancel()
    if not work.done():
        metrics.HTTP_CLIENT_GONE.inc()
        raise Cancelled("the client disconnected; its work was dropped")
    return work.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def float_rows(result: EmbedResult) -> list[list[float]]:
    return np.frombuffer(result.data, dtype="<f4").reshape(result.n, result.dim).tolist()


def build_app(core: EmbedCore, ready: Callable[[], bool], max_body_bytes: int,
              access_log: logging.Logger | None = None, api_key: str = "") -> FastAPI:
    """The app for one core. `ready()` says whether the server can take work (replicas up, not draining).
    With `api_key`, every route but /health needs `authorization: Bearer <key>` (what the openai client sends)."""
    app = FastAPI(title="arctic-embed", version=__version__, docs_url="/docs", redoc_url=None)

    def error(request: Request, message: str, status: HttpStatus) -> Response:
        if request.url.path.startswith(OPENAI_PREFIX):
            return json_response(openai_error_body(message, status), status.code)
        return json_response(tei_error_body(message, status), tei_code(status))

    @app.exception_handler(EmbedError)
    async def embed_error(request: Request, exc: EmbedError) -> Response:
        return error(request, str(exc) or type(exc).__name__, http_status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for item in exc.errors()[:5]:
            where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {item.get('msg', 'invalid')}")
        return error(request, "invalid request body: " + "; ".join(problems), http_status_for(InvalidInput()))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        incident = f"{os.getpid():x}-{next(_incidents)}"
        log.exception("unexpected error in %s %s (incident %s)", request.method, request.url.path, incident)
        return error(request, f"internal error (incident {incident}); the server log has the details", INTERNAL)

    @app.post("/v1/embeddings", summary="OpenAI-compatible embeddings")
    async def openai_embeddings(body: OpenAIEmbeddingRequest, request: Request) -> Response:
        texts, ids = job_inputs(body.input, "input")
        job = EmbedJob(texts=texts, token_ids=ids, model=body.model, normalize=body.normalize,
                       dimensions=body.dimensions, truncate=body.truncate)
        result = await embed_unless_gone(core, job, request)
        if body.encoding_format == "base64":
            view = memoryview(result.data)
            size = result.row_bytes
            vectors: list[Any] = [base64.b64encode(view[i * size:(i + 1) * size]).decode("ascii")
                                  for i in range(result.n)]
        else:
            vectors = float_rows(result)
        tokens = int(result.token_counts.sum())
        payload = {"object": "list",
                   "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                   "model": core.model_name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return json_response(payload, headers=timing_headers(result))

    @app.get("/v1/models", summary="OpenAI-compatible model list")
    async def openai_models() -> Response:
        return json_response({"object": "list", "data": [
            {"id": core.model_name, "object": "model", "created": 0, "owned_by": "arctic-serve"}]})

    @app.post("/embed", summary="text-embeddings-inference-compatible embeddings")
    async def tei_embed(body: TEIEmbedRequest, request: Request) -> Response:
        side = body.truncation_direction.lower()
        if side not in ("right", "left"):
            raise InvalidInput(f"truncation_direction {body.truncation_direction!r}: right or left")
        texts, ids = job_inputs(body.inputs, "inputs")
        job = EmbedJob(texts=texts, token_ids=ids, normalize=body.normalize, dimensions=body.dimensions,
                       truncate=True if body.truncate is None else body.truncate, truncate_left=side == "left",
                       prompt_name=body.prompt_name or "")
        result = await embed_unless_gone(core, job, request)
        return json_response(float_rows(result), headers=timing_headers(result))

    @app.get("/health", summary="200 when the server can take work, 503 otherwise")
    async def health(request: Request) -> Response:
        if ready():
            return Response(status_code=200)
        return error(request, "no replica ready (starting, restarting or draining)",
                     http_status_for(Unavailable()))

    @app.get("/info", summary="what this server serves (TEI's /info fields, plus ours)")
    async def info() -> Response:
        spec = core.spec
        return json_response({
            "model_id": core.model_name, "model_sha": None, "model_dtype": core.config.replica.dtype,
            "model_type": {"embedding": {"pooling": spec.pooling}}, "dim": spec.dim,
            "max_input_length": spec.max_input_tokens, "max_client_batch_size": core.config.max_inputs_per_request,
            "max_batch_tokens": core.config.replica.max_batch_tokens, "engine": core.config.replica.engine,
            "prompt_names": sorted(spec.prompts), "tokenization_workers": core.config.tokenizer_workers,
            "n_replicas": len(core.replicas.replicas), "n_ready_replicas": core.replicas.n_ready,
            "version": __version__,
        })

    @app.get("/metrics", summary="Prometheus metrics (the same registry as --metrics-port)")
    async def prometheus() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    inner: Any = BodyLimit(app, max_body_bytes, error_for=_too_large_body)
    if api_key:
        inner = RequireApiKey(inner, api_key)
    return RequestLog(inner, access_log)  # type: ignore[return-value]


def _too_large_body(path: str, message: str) -> tuple[int, bytes]:
    if path.startswith(OPENAI_PREFIX):
        return TOO_LARGE.code, _encoder.encode(openai_error_body(message, TOO_LARGE))
    return TOO_LARGE.code, _encoder.encode(tei_error_body(message, TOO_LARGE))


UNAUTHORIZED = HttpStatus(401, "authentication_error", "Unauthorized")


async def _send_json(send: Callable, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RequireApiKey:
    """ASGI middleware: 401 unless `authorization: Bearer <key>`; /health stays open for probes."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("path") == "/health":
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        if bearer_matches(header, self.api_key):
            await self.app(scope, receive, send)
            return
        message = "missing or wrong API key: send `authorization: Bearer <key>`"
        path = scope.get("path", "")
        body = openai_error_body(message, UNAUTHORIZED) if path.startswith(OPENAI_PREFIX) \
            else tei_error_body(message, UNAUTHORIZED)
        await _send_json(send, UNAUTHORIZED.code, _encoder.encode(body))


class BodyLimit:
    """ASGI middleware: a request whose Content-Length is over the limit gets 413 before its body is read;
    a chunked body that grows past it is cut off the same way."""

    def __init__(self, app: Any, limit: int, error_for: Callable[[str, str], tuple[int, bytes]]) -> None:
        self.app, self.limit, self.error_for = app, limit, error_for

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._reject(scope, send, f"request body of {int(value)} bytes is over the limit of "
                                                f"{self.limit} (--max-message-bytes)")
                return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(f"request body is over the limit of {self.limit} bytes (--max-message-bytes)")
            return message

        await self.app(scope, counted, send)

    async def _reject(self, scope: dict, send: Callable, message: str) -> None:
        status, body = self.error_for(scope.get("path", ""), message)
        await _send_json(send, status, body)


class RequestLog:
    """ASGI middleware: Prometheus counter per route and status, and the access log line when it is on."""

    def __init__(self, app: Any, access_log: logging.Logger | None) -> None:
        self.app, self.access_log = app, access_log

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            route = path if path in ROUTES else "other"
            metrics.HTTP_REQUESTS.labels(route, str(status)).inc()
            if self.access_log is not None:
                client = scope.get("client")
                peer = f"{client[0]}:{client[1]}" if client else ""
                log_access(self.access_log, "http", f"{scope.get('method', '')} {path}", status,
                           time.perf_counter() - started, peer)
