"""The server engine: a batch job that sends its chunks to a running `arctic-embed serve` (`--target`).

Each chunk is cut into requests of `request_batch_size` inputs, `concurrency` of them in flight; the raw vector
bytes of the responses are kept as they are (no float decoding on the way to the output file).
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from grpc import aio

from arctic_embed.batch.engine import ChunkEmbeddings
from arctic_embed.batch.options import BatchError, EmbedOptions, EngineOptions
from arctic_embed.client import CHANNEL_OPTIONS, build_request
from arctic_protos.arctic.embed.v1 import embed_pb2 as pb
from arctic_protos.arctic.embed.v1 import embed_pb2_grpc as pb_grpc

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
MAX_ATTEMPTS = 6


def _details(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'error'}: {(details or '').splitlines()[0] if details else ''}".rstrip(": ")


class ServerEngine:
    def __init__(self, options: EngineOptions) -> None:
        self.target = options.target
        self.options = options
        self.model_name = ""
        self.dim = 0
        self._channel: aio.Channel | None = None
        self._stub: pb_grpc.EmbedServiceStub | None = None
        self._limit = asyncio.Semaphore(max(1, options.concurrency))

    def describe(self) -> str:
        return f"server {self.target} ({self.model_name}, {self.dim}-d)"

    async def start(self) -> None:
        self._channel = aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.EmbedServiceStub(self._channel)
        try:
            info = await self._stub.Info(pb.InfoRequest(), timeout=self.options.connect_timeout_s)
        except grpc.RpcError as exc:
            await self.close()
            raise BatchError(f"no embedding server at {self.target} ({_details(exc)}); start one with "
                             "`arctic-embed serve` or leave out --target to embed in-process") from None
        self.model_name = info.model
        self.dim = int(info.dim)

    async def _request(self, texts: list[str], options: EmbedOptions) -> pb.EmbedResponse:
        assert self._stub is not None, "start() first"
        request = build_request(texts, normalize=options.normalize, dimensions=options.dimensions,
                                dtype=options.dtype, truncate=options.truncate,
                                truncation_side="left" if options.truncate_left else "right",
                                prompt_name=options.prompt_name, prefix=options.prefix)
        delay = 0.2
        async with self._limit:
            for attempt in range(MAX_ATTEMPTS):
                try:
                    return await self._stub.Embed(request, timeout=600)
                except grpc.RpcError as exc:
                    if exc.code() not in RETRYABLE or attempt == MAX_ATTEMPTS - 1:
                        raise BatchError(f"server {self.target}: {_details(exc)}") from None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def embed(self, texts: list[str], options: EmbedOptions) -> ChunkEmbeddings:
        size = max(1, self.options.request_batch_size)
        responses = await asyncio.gather(*(self._request(texts[i:i + size], options)
                                           for i in range(0, len(texts), size)))
        dim = int(responses[0].dim)
        width = len(responses[0].embeddings[0])
        blob = b"".join(b"".join(r.embeddings) for r in responses)
        data = np.frombuffer(blob, dtype=np.uint8).reshape(len(texts), width)
        tokens = np.fromiter((c for r in responses for c in r.token_counts), dtype=np.int32, count=len(texts))
        scales = None
        if options.dtype in ("int8", "uint8"):
            scales = np.fromiter((s for r in responses for s in r.scales), dtype=np.float32, count=len(texts))
        return ChunkEmbeddings(data, dim, options.dtype, tokens, scales)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
