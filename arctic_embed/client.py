"""Python clients (sync and asyncio) for arctic.embed.v1.EmbedService, returning numpy arrays.

    from arctic_embed.client import EmbedClient
    with EmbedClient("localhost:50050") as client:
        vectors = client.embed(["hello", "world"])                    # float32 [2, 384]
        small = client.embed(["hello"], dimensions=128, dtype="float16")

Large inputs are split into requests of `batch_size` and sent `concurrency` at a time; the result keeps the order.
bfloat16 outputs come back as float32 arrays (numpy has no bfloat16); binary as packed uint8 bits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from grpc import aio

from arctic_protos.arctic.embed.v1 import embed_pb2 as pb
from arctic_protos.arctic.embed.v1 import embed_pb2_grpc as pb_grpc

_DTYPES = {"float32": pb.OUTPUT_DTYPE_FLOAT32, "float16": pb.OUTPUT_DTYPE_FLOAT16,
           "bfloat16": pb.OUTPUT_DTYPE_BFLOAT16, "int8": pb.OUTPUT_DTYPE_INT8, "uint8": pb.OUTPUT_DTYPE_UINT8,
           "binary": pb.OUTPUT_DTYPE_BINARY}
_NUMPY = {pb.OUTPUT_DTYPE_FLOAT32: "<f4", pb.OUTPUT_DTYPE_FLOAT16: "<f2", pb.OUTPUT_DTYPE_BFLOAT16: "<u2",
          pb.OUTPUT_DTYPE_INT8: "i1", pb.OUTPUT_DTYPE_UINT8: "u1", pb.OUTPUT_DTYPE_BINARY: "u1"}
DEFAULT_BATCH_SIZE = 256
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 2**20),
                   ("grpc.max_send_message_length", 256 * 2**20)]

Inputs = Sequence[str] | Sequence[np.ndarray]


@dataclass
class Embeddings:
    """A response decoded: `vectors` [n, dim] (or [n, ceil(dim/8)] for binary), plus what came with it."""

    vectors: np.ndarray
    token_counts: np.ndarray
    scales: np.ndarray | None
    timings: pb.StageTimings


def _clean(text: str) -> str:
    """Lone surrogates cannot travel in a protobuf string: replace them (as any UTF-8 encoder would)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def build_request(inputs: Inputs, *, normalize: bool = True, dimensions: int | None = None, dtype: str = "float32",
                  truncate: bool = True, truncation_side: str = "right", prompt_name: str = "", prefix: str = "",
                  model: str = "", request_id: str = "", priority: int = 0) -> pb.EmbedRequest:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
    options = pb.EmbedOptions(
        normalize=normalize, dimensions=dimensions, truncate=truncate, output_dtype=_DTYPES[dtype],
        truncation_side=pb.TRUNCATION_SIDE_LEFT if truncation_side == "left" else pb.TRUNCATION_SIDE_RIGHT,
        prompt_name=prompt_name, prefix=prefix)
    request = pb.EmbedRequest(model=model, options=options, request_id=request_id, priority=priority)
    if inputs and not isinstance(inputs[0], str):
        request.token_ids.extend(pb.TokenIds(ids_i32=np.asarray(a, dtype="<i4").tobytes()) for a in inputs)
    else:
        request.texts.extend(_clean(t) for t in inputs)  # type: ignore[arg-type]
    return request


def decode(response: pb.EmbedResponse) -> Embeddings:
    n = len(response.embeddings)
    raw = np.frombuffer(b"".join(response.embeddings), dtype=_NUMPY[response.dtype])
    vectors = raw.reshape(n, -1) if n else raw.reshape(0, response.dim)
    if response.dtype == pb.OUTPUT_DTYPE_BFLOAT16:
        vectors = (vectors.astype(np.uint32) << 16).view(np.float32)
    scales = np.asarray(response.scales, dtype=np.float32) if len(response.scales) else None
    return Embeddings(vectors, np.asarray(response.token_counts, dtype=np.int64), scales, response.timings)


def _chunks(inputs: Inputs, size: int) -> list[Inputs]:
    return [inputs[i:i + size] for i in range(0, len(inputs), size)]


class EmbedClient:
    """Blocking client. Thread-safe (one channel)."""

    def __init__(self, target: str = "localhost:50050", timeout_s: float | None = None) -> None:
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.EmbedServiceStub(self._channel)
        self.timeout_s = timeout_s

    def __enter__(self) -> EmbedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def info(self) -> pb.InfoResponse:
        return self._stub.Info(pb.InfoRequest(), timeout=self.timeout_s)

    def tokenize(self, texts: Sequence[str], **options: object) -> list[np.ndarray]:
        request = build_request(texts, **options)  # type: ignore[arg-type]
        response = self._stub.Tokenize(pb.TokenizeRequest(model=request.model, texts=request.texts,
                                                          options=request.options), timeout=self.timeout_s)
        return [np.frombuffer(t.ids_i32, dtype="<i4") for t in response.token_ids]

    def embed_detailed(self, inputs: Inputs, **options: object) -> Embeddings:
        """One request, as it is (no splitting)."""
        return decode(self._stub.Embed(build_request(inputs, **options), timeout=self.timeout_s))  # type: ignore

    def embed(self, inputs: Inputs, *, batch_size: int = DEFAULT_BATCH_SIZE, concurrency: int = 4,
              **options: object) -> np.ndarray:
        """Embed any number of inputs (texts, or int32 token-id arrays); returns [n, dim]."""
        chunks = _chunks(inputs, batch_size)
        if len(chunks) <= 1:
            return self.embed_detailed(inputs, **options).vectors
        results: list[np.ndarray | None] = [None] * len(chunks)
        pending: list[tuple[int, grpc.Future]] = []
        for index, chunk in enumerate(chunks):
            if len(pending) >= concurrency:
                i, future = pending.pop(0)
                results[i] = decode(future.result()).vectors
            request = build_request(chunk, **options)  # type: ignore[arg-type]
            pending.append((index, self._stub.Embed.future(request, timeout=self.timeout_s)))
        for i, future in pending:
            results[i] = decode(future.result()).vectors
        return np.concatenate(results)  # type: ignore[arg-type]


class AsyncEmbedClient:
    """asyncio client (grpc.aio)."""

    def __init__(self, target: str = "localhost:50050", timeout_s: float | None = None) -> None:
        self._channel = aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.EmbedServiceStub(self._channel)
        self.timeout_s = timeout_s

    async def __aenter__(self) -> AsyncEmbedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def info(self) -> pb.InfoResponse:
        return await self._stub.Info(pb.InfoRequest(), timeout=self.timeout_s)

    async def embed_detailed(self, inputs: Inputs, **options: object) -> Embeddings:
        response = await self._stub.Embed(build_request(inputs, **options), timeout=self.timeout_s)  # type: ignore
        return decode(response)

    async def embed(self, inputs: Inputs, *, batch_size: int = DEFAULT_BATCH_SIZE, concurrency: int = 4,
                    **options: object) -> np.ndarray:
        limit = asyncio.Semaphore(concurrency)

        async def one(chunk: Inputs) -> np.ndarray:
            async with limit:
                return (await self.embed_detailed(chunk, **options)).vectors

        parts = await asyncio.gather(*(one(c) for c in _chunks(inputs, batch_size)))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
