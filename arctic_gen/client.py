"""Python clients for arctic.gen.v1.GenerateService: `GenerateClient` (sync) and `AsyncGenerateClient` (grpc.aio).

    with GenerateClient("localhost:50051") as client:
        for chunk in client.stream(text="Hello", max_tokens=32, temperature=0):
            print(chunk.text, end="")
        result = client.generate(chat=[{"role": "user", "content": "Hi"}], max_tokens=64)   # whole text

    async with AsyncGenerateClient("localhost:50051") as client:
        async for chunk in client.stream(token_ids=[1, 2, 3], max_tokens=8):
            ...

`stream` yields the raw `GenerateResponse` messages (deltas; the last one has finish_reason, usage, speculation);
`generate` collects them into a `GenerationResult`. Breaking out of a stream cancels the RPC, which aborts the request
in the engine. Errors surface as `grpc.RpcError` / `grpc.aio.AioRpcError` with the server's status code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from arctic_protos.arctic.gen.v1 import generate_pb2, generate_pb2_grpc

_SAMPLING_FIELDS = {f.name for f in generate_pb2.SamplingOptions.DESCRIPTOR.fields}


def build_request(*, text: str | None = None, token_ids: Iterable[int] | None = None,
                  chat: Iterable[Mapping[str, str]] | None = None, request_id: str = "", model: str = "",
                  add_generation_prompt: bool | None = None, **sampling: Any) -> generate_pb2.GenerateRequest:
    """A GenerateRequest from keyword arguments; sampling keywords are SamplingOptions' fields."""
    unknown = set(sampling) - _SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"unknown sampling option(s) {sorted(unknown)}; known: {sorted(_SAMPLING_FIELDS)}")
    request = generate_pb2.GenerateRequest(request_id=request_id, model=model,
                                           sampling=generate_pb2.SamplingOptions(**sampling))
    if text is not None:
        request.text = text
    elif token_ids is not None:
        request.token_ids.ids.extend(int(t) for t in token_ids)
    elif chat is not None:
        request.chat.SetInParent()
        for message in chat:
            request.chat.messages.add(role=message["role"], content=message["content"])
        if add_generation_prompt is not None:
            request.chat.add_generation_prompt = add_generation_prompt
    return request


@dataclass
class GenerationResult:
    """A whole generation, collected from its stream."""

    request_id: str = ""
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    stop_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    speculation: generate_pb2.SpeculationStats | None = None
    timings: generate_pb2.Timings | None = None
    messages: int = 0

    def add(self, response: generate_pb2.GenerateResponse) -> None:
        self.request_id = response.request_id
        self.text += response.text
        self.token_ids.extend(response.token_ids)
        self.messages += 1
        if response.finish_reason != generate_pb2.FINISH_REASON_UNSPECIFIED:
            self.finish_reason = generate_pb2.FinishReason.Name(response.finish_reason).removeprefix(
                "FINISH_REASON_").lower()
            self.stop_reason = response.stop_reason
            self.prompt_tokens = response.usage.prompt_tokens
            self.completion_tokens = response.usage.completion_tokens
            self.speculation = response.speculation
            self.timings = response.timings


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]


class GenerateClient:
    """Blocking client."""

    def __init__(self, target: str, *, timeout: float | None = None, max_message_bytes: int = 16 * 2**20,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        """`options`: extra gRPC channel arguments, e.g. ("grpc.use_local_subchannel_pool", 1) for a connection
        of this client's own (several clients then spread over `--api-server-count` front ends)."""
        self.timeout = timeout
        self.channel = grpc.insecure_channel(target, options=[*_channel_options(max_message_bytes), *options])
        self.stub = generate_pb2_grpc.GenerateServiceStub(self.channel)

    def stream(self, *, timeout: float | None = None, **kwargs: Any) -> Iterator[generate_pb2.GenerateResponse]:
        call = self.stub.Generate(build_request(**kwargs), timeout=timeout or self.timeout)
        try:
            yield from call
        finally:
            call.cancel()  # no-op when finished; aborts the request when the caller stops early

    def generate(self, **kwargs: Any) -> GenerationResult:
        result = GenerationResult()
        for response in self.stream(**kwargs):
            result.add(response)
        return result

    def abort(self, request_id: str) -> bool:
        return self.stub.Abort(generate_pb2.AbortRequest(request_id=request_id), timeout=self.timeout).aborted

    def info(self) -> generate_pb2.InfoResponse:
        return self.stub.Info(generate_pb2.InfoRequest(), timeout=self.timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GenerateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGenerateClient:
    """grpc.aio client; `stream` is an async iterator."""

    def __init__(self, target: str, *, timeout: float | None = None, max_message_bytes: int = 16 * 2**20,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        """`options`: extra gRPC channel arguments, e.g. ("grpc.use_local_subchannel_pool", 1) for a connection
        of this client's own (several clients then spread over `--api-server-count` front ends)."""
        self.timeout = timeout
        self.channel = grpc.aio.insecure_channel(target, options=[*_channel_options(max_message_bytes), *options])
        self.stub = generate_pb2_grpc.GenerateServiceStub(self.channel)

    async def stream(self, *, timeout: float | None = None,
                     **kwargs: Any) -> AsyncIterator[generate_pb2.GenerateResponse]:
        call = self.stub.Generate(build_request(**kwargs), timeout=timeout or self.timeout)
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()

    async def generate(self, **kwargs: Any) -> GenerationResult:
        result = GenerationResult()
        async for response in self.stream(**kwargs):
            result.add(response)
        return result

    async def abort(self, request_id: str) -> bool:
        response = await self.stub.Abort(generate_pb2.AbortRequest(request_id=request_id), timeout=self.timeout)
        return response.aborted

    async def info(self) -> generate_pb2.InfoResponse:
        return await self.stub.Info(generate_pb2.InfoRequest(), timeout=self.timeout)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncGenerateClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
