"""arctic.gen.v1.GenerateService: protobuf <-> core translation only, plus the error-mapping interceptor."""

from __future__ import annotations

import logging

from prometheus_client import Counter

from arctic_embed.grpc.errors import StatusInterceptor
from arctic_gen.server.core import ChatMessage, Delta, GenerateInput, GenerationCore, Sampling
from arctic_gen.server.errors import GenerateError, InvalidArgument, status_code
from arctic_protos.arctic.gen.v1 import generate_pb2, generate_pb2_grpc

logger = logging.getLogger(__name__)

FINISH_REASONS = {
    "stop": generate_pb2.FINISH_REASON_STOP,
    "length": generate_pb2.FINISH_REASON_LENGTH,
    "abort": generate_pb2.FINISH_REASON_ABORT,
}


def _opt(message, name: str):
    return getattr(message, name) if message.HasField(name) else None


def sampling_from_proto(s: generate_pb2.SamplingOptions) -> Sampling:
    return Sampling(
        temperature=_opt(s, "temperature"),
        top_p=_opt(s, "top_p"),
        top_k=_opt(s, "top_k"),
        min_p=_opt(s, "min_p"),
        seed=_opt(s, "seed"),
        max_tokens=_opt(s, "max_tokens"),
        stop=tuple(s.stop),
        stop_token_ids=tuple(s.stop_token_ids),
        ignore_eos=s.ignore_eos,
        logprobs=_opt(s, "logprobs"),
        presence_penalty=_opt(s, "presence_penalty"),
        frequency_penalty=_opt(s, "frequency_penalty"),
        repetition_penalty=_opt(s, "repetition_penalty"),
        min_tokens=s.min_tokens,
        skip_special_tokens=_opt(s, "skip_special_tokens"),
    )


def input_from_proto(request: generate_pb2.GenerateRequest) -> GenerateInput:
    kind = request.WhichOneof("prompt")
    common = {"request_id": request.request_id, "model": request.model,
              "sampling": sampling_from_proto(request.sampling)}
    if kind == "text":
        return GenerateInput(text=request.text, **common)
    if kind == "token_ids":
        return GenerateInput(token_ids=list(request.token_ids.ids), **common)
    if kind == "chat":
        chat = request.chat
        add = chat.add_generation_prompt if chat.HasField("add_generation_prompt") else True
        return GenerateInput(chat=[ChatMessage(m.role, m.content) for m in chat.messages],
                             add_generation_prompt=add, **common)
    raise InvalidArgument("prompt: set one of text, token_ids, chat")


def delta_to_proto(delta: Delta) -> generate_pb2.GenerateResponse:
    response = generate_pb2.GenerateResponse(request_id=delta.request_id, token_ids=delta.token_ids, text=delta.text)
    if delta.logprobs:
        for (token_id, logprob), top in delta.logprobs:
            position = response.logprobs.add()
            position.sampled.token_id, position.sampled.logprob = token_id, logprob
            for alt_id, alt_logprob in top:
                position.top.add(token_id=alt_id, logprob=alt_logprob)
    final = delta.final
    if final is not None:
        response.finish_reason = FINISH_REASONS.get(final.finish_reason, generate_pb2.FINISH_REASON_STOP)
        response.stop_reason = final.stop_reason
        response.usage.prompt_tokens = final.prompt_tokens
        response.usage.completion_tokens = final.completion_tokens
        response.usage.cached_prompt_tokens = final.cached_prompt_tokens
        spec = final.speculation
        response.speculation.enabled = spec.enabled
        response.speculation.decode_steps = spec.decode_steps
        response.speculation.draft_tokens = spec.draft_tokens
        response.speculation.accepted_tokens = spec.accepted_tokens
        response.speculation.mean_tokens_per_step = spec.mean_tokens_per_step
        response.speculation.exact = spec.exact
        response.timings.queue_ns = final.queue_ns
        response.timings.time_to_first_token_ns = final.ttft_ns
        response.timings.total_ns = final.total_ns
    return response


class GenerateServicer(generate_pb2_grpc.GenerateServiceServicer):
    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    async def Generate(self, request, context):
        async for delta in self.core.generate(input_from_proto(request)):
            yield delta_to_proto(delta)

    async def Abort(self, request, context):
        return generate_pb2.AbortResponse(aborted=await self.core.abort(request.request_id))

    async def Info(self, request, context):
        return generate_pb2.InfoResponse(**await self.core.info_with_layout())


REQUESTS = Counter("arctic_gen_requests_total", "gRPC calls received, by method", ["rpc"])
FAILURES = Counter("arctic_gen_request_failures_total",
                   "Calls that ended with an error, by method and status code (deadlines and cancels included)",
                   ["rpc", "code"])


def error_interceptor() -> StatusInterceptor:
    """Maps `GenerateError`s to their status (errors.STATUS_CODES); anything else is INTERNAL with a log line.
    Calls and failures by status code go to Prometheus (`--metrics-port`)."""
    return StatusInterceptor(status_code, GenerateError, on_request=lambda method: REQUESTS.labels(method).inc(),
                             on_failure=lambda method, code, _seconds: FAILURES.labels(method, code.name).inc())
