"""arctic.embed.v1.EmbedService: protobuf ↔ EmbedCore, nothing else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from grpc import aio

from arctic_embed import __version__
from arctic_embed.errors import EmbedError, status_code_for
from arctic_embed.service import EmbedCore, EmbedJob, EmbedResult
from arctic_protos.arctic.embed.v1 import embed_pb2 as pb
from arctic_protos.arctic.embed.v1 import embed_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
DTYPE_NAMES = {
    pb.OUTPUT_DTYPE_UNSPECIFIED: "float32",
    pb.OUTPUT_DTYPE_FLOAT32: "float32",
    pb.OUTPUT_DTYPE_FLOAT16: "float16",
    pb.OUTPUT_DTYPE_BFLOAT16: "bfloat16",
    pb.OUTPUT_DTYPE_INT8: "int8",
    pb.OUTPUT_DTYPE_UINT8: "uint8",
    pb.OUTPUT_DTYPE_BINARY: "binary",
}
DTYPE_ENUMS = {name: value for value, name in DTYPE_NAMES.items() if value != pb.OUTPUT_DTYPE_UNSPECIFIED}


def job_from_request(request: pb.EmbedRequest) -> EmbedJob:
    o = request.options
    if o.output_dtype not in DTYPE_NAMES:
        dtype = f"unknown({o.output_dtype})"
    else:
        dtype = DTYPE_NAMES[o.output_dtype]
    return EmbedJob(
        texts=list(request.texts),
        token_ids=[t.ids_i32 for t in request.token_ids],
        request_id=request.request_id,
        model=request.model,
        normalize=o.normalize if o.HasField("normalize") else True,
        dimensions=o.dimensions if o.HasField("dimensions") else None,
        truncate=o.truncate if o.HasField("truncate") else True,
        truncate_left=o.truncation_side == pb.TRUNCATION_SIDE_LEFT,
        prompt_name=o.prompt_name,
        prefix=o.prefix,
        dtype=dtype,
        priority=request.priority,
    )


def response_from_result(request_id: str, model: str, result: EmbedResult) -> pb.EmbedResponse:
    t = result.timings
    return pb.EmbedResponse(
        request_id=request_id,
        model=model,
        embeddings=result.rows(),
        dim=result.dim,
        dtype=DTYPE_ENUMS[result.dtype],
        token_counts=result.token_counts.tolist(),
        total_tokens=int(result.token_counts.sum()),
        scales=result.scales.tolist() if result.scales is not None else [],
        timings=pb.StageTimings(queue_ns=t.queue_ns, tokenize_ns=t.tokenize_ns, inference_ns=t.inference_ns,
                                total_ns=t.total_ns),
    )


class EmbedServicer(pb_grpc.EmbedServiceServicer):
    def __init__(self, core: EmbedCore) -> None:
        self._core = core

    async def Embed(self, request: pb.EmbedRequest, context: aio.ServicerContext) -> pb.EmbedResponse:
        result = await self._core.embed(job_from_request(request))
        return response_from_result(request.request_id, self._core.model_name, result)

    async def EmbedStream(self, request_iterator: AsyncIterator[pb.EmbedRequest],
                          context: aio.ServicerContext) -> AsyncIterator[pb.EmbedStreamResponse]:
        """Runs up to `stream_max_in_flight` requests of the stream at once; answers in completion order."""
        limit = asyncio.Semaphore(self._core.config.stream_max_in_flight)
        done: asyncio.Queue[pb.EmbedStreamResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task] = set()

        async def one(request: pb.EmbedRequest) -> None:
            try:
                result = await self._core.embed(job_from_request(request))
                response = response_from_result(request.request_id, self._core.model_name, result)
                await done.put(pb.EmbedStreamResponse(request_id=request.request_id, response=response))
            except EmbedError as exc:
                error = pb.ItemError(code=status_code_for(exc).value[0], message=str(exc))
                await done.put(pb.EmbedStreamResponse(request_id=request.request_id, error=error))
            except Exception:  # noqa: BLE001 - one item's surprise must not leave it unanswered
                log.exception("unexpected error in an EmbedStream item")
                error = pb.ItemError(code=grpc.StatusCode.INTERNAL.value[0], message="internal error")
                await done.put(pb.EmbedStreamResponse(request_id=request.request_id, error=error))
            finally:
                limit.release()

        async def feed() -> None:
            # Whatever ends the input (its end, a malformed message, a broken transport), the items already
            # admitted are answered and then the stream ends: with OK, or with the error re-raised below.
            try:
                async for request in request_iterator:
                    await limit.acquire()
                    task = asyncio.create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            finally:
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
                done.put_nowait(None)

        feeder = asyncio.create_task(feed())
        try:
            while (item := await done.get()) is not None:
                yield item
            await feeder  # re-raises why the input ended early (e.g. MalformedMessage → INVALID_ARGUMENT)
        finally:
            feeder.cancel()
            for task in list(tasks):
                task.cancel()

    async def Tokenize(self, request: pb.TokenizeRequest, context: aio.ServicerContext) -> pb.TokenizeResponse:
        job = job_from_request(pb.EmbedRequest(model=request.model, texts=request.texts, options=request.options))
        batch = await self._core.tokenize(job)
        return pb.TokenizeResponse(token_ids=[pb.TokenIds(ids_i32=a.tobytes()) for a in batch.split()],
                                   token_counts=batch.lengths.tolist())

    async def Info(self, request: pb.InfoRequest, context: aio.ServicerContext) -> pb.InfoResponse:
        core = self._core
        ready = [r for r in core.replicas.replicas if r.state == "ready"]
        info = ready[0].info if ready else {}
        return pb.InfoResponse(
            model=core.model_name, dim=core.spec.dim, max_input_tokens=core.spec.max_input_tokens,
            engine=str(info.get("engine") or core.config.replica.engine), model_dtype=str(info.get("model_dtype", "")),
            prompt_names=sorted(core.spec.prompts), max_inputs_per_request=core.config.max_inputs_per_request,
            n_replicas=len(core.replicas.replicas), n_healthy_replicas=len(ready), vocab_size=core.vocab_size,
            version=__version__, pooling=core.spec.pooling, pooling_source=core.spec.pooling_source,
            architecture=core.spec.architecture,
        )


def add_to_server(core: EmbedCore, server: aio.Server) -> str:
    pb_grpc.add_EmbedServiceServicer_to_server(EmbedServicer(core), server)
    return pb.DESCRIPTOR.services_by_name["EmbedService"].full_name


