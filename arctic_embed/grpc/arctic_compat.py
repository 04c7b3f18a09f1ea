"""arctic_inference.InferenceService, wire-compatible with Arctic Inference's embedding server.

Encode embeds with the model's own defaults (its sentence-transformers normalization) and returns float32 bytes,
so existing Arctic clients work unchanged. Failures are gRPC statuses (the `error` string field stays empty).
"""

from __future__ import annotations

import json

from grpc import aio

from arctic_embed.errors import InvalidInput
from arctic_embed.service import EmbedCore, EmbedJob
from arctic_protos.arctic_inference import inference_pb2 as pb
from arctic_protos.arctic_inference import inference_pb2_grpc as pb_grpc


class ArcticInferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, core: EmbedCore) -> None:
        self._core = core

    async def Encode(self, request: pb.EncodeRequest, context: aio.ServicerContext) -> pb.EncodeResponse:
        n_given = len(request.token_id_bytes_i32) or len(request.prompts)
        if request.n_prompts and request.n_prompts != n_given:
            raise InvalidInput(f"n_prompts={request.n_prompts} but {n_given} prompts were sent")
        job = EmbedJob(
            texts=[] if request.token_id_bytes_i32 else list(request.prompts),
            token_ids=list(request.token_id_bytes_i32),
            request_id=request.request_id,
            model=request.model_name,
            normalize=self._core.spec.normalize,
            priority=request.priority,
        )
        result = await self._core.embed(job)
        return pb.EncodeResponse(request_id=request.request_id, n_prompts=result.n, embedding_dim=result.dim,
                                 embedding_bytes_fp32=result.rows())

    async def Abort(self, request: pb.AbortRequest, context: aio.ServicerContext) -> pb.AbortResponse:
        try:
            self._core.abort(request.request_id)
        except Exception as exc:  # unknown or finished request: say so, the RPC itself succeeded
            return pb.AbortResponse(success=False, message=str(exc))
        return pb.AbortResponse(success=True, message=f"request {request.request_id!r} aborted")

    async def GetReplicaInfo(self, request: pb.ReplicaInfoRequest,
                             context: aio.ServicerContext) -> pb.ReplicaInfoResponse:
        core = self._core
        infos = []
        for replica in core.replicas.replicas:
            infos.append(pb.SingleReplicaInfoResponse(
                model_name=core.model_name,
                task="embed",
                dtype=str(replica.info.get("model_dtype", core.config.replica.dtype)),
                ready=replica.state == "ready",
                parallel_config=json.dumps({"device": replica.device, "replica_index": replica.index,
                                            "pid": replica.pid, "restarts": replica.restarts,
                                            "state": replica.state}),
                decoding_config="{}",
                scheduler_config=json.dumps({"max_batch_tokens": core.config.replica.max_batch_tokens,
                                             "max_batch_size": core.config.replica.max_batch_size,
                                             "engine": core.config.replica.engine}),
                lora_config="{}",
            ))
        healthy = sum(i.ready for i in infos)
        return pb.ReplicaInfoResponse(replica_infos=infos, n_replicas=len(infos), n_healthy_replicas=healthy,
                                      message=f"{healthy}/{len(infos)} replicas ready")

    async def HealthCheck(self, request: pb.HealthCheckRequest,
                          context: aio.ServicerContext) -> pb.HealthCheckResponse:
        core = self._core
        ready, failed, total = core.replicas.n_ready, core.replicas.n_failed, len(core.replicas.replicas)
        message = f"{ready}/{total} replicas ready, {failed} failing (restarting with backoff); " \
                  f"{core.tokenizers.n_alive}/{core.tokenizers.size} tokenizer workers" + \
                  ("; draining" if core.draining else "")
        return pb.HealthCheckResponse(healthy=ready > 0 and not core.draining, message=message)


def add_to_server(core: EmbedCore, server: aio.Server) -> str:
    pb_grpc.add_InferenceServiceServicer_to_server(ArcticInferenceServicer(core), server)
    return pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
