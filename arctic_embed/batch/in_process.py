"""The in-process engine: the job loads the model itself (tokenizer pool + replica processes per device, the same
ones the server runs) and calls the embedding core directly. No gRPC, no serialization of vectors to protobuf."""

from __future__ import annotations

import asyncio
import os

import numpy as np

from arctic_embed.batch.engine import ChunkEmbeddings
from arctic_embed.batch.options import BatchError, EmbedOptions, EngineOptions
from arctic_embed.config import ReplicaConfig, ServerConfig
from arctic_embed.errors import EmbedError
from arctic_embed.model_files import read_model_spec
from arctic_embed.replicas import ReplicaManager
from arctic_embed.service import EmbedCore, EmbedJob
from arctic_embed.tokenizer_pool import TokenizerPool

PIECE_ROWS = 1024


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def server_config(options: EngineOptions) -> ServerConfig:
    """The core's configuration for a job: no request-size limit or backpressure (the job bounds its own work)."""
    replica = ReplicaConfig(engine=options.engine, dtype=options.model_dtype,
                            max_batch_tokens=options.max_batch_tokens, max_batch_size=options.max_batch_size,
                            torch_threads=options.torch_threads)
    config = ServerConfig(model_path=options.model_path, devices=list(options.devices),
                          replicas_per_device=options.replicas_per_device, tokenizer_workers=1,
                          max_inputs_per_request=1 << 30, max_queued_tokens=1 << 62, replica=replica)
    workers = options.tokenizer_workers
    if workers <= 0:
        devices = config.resolved_devices()
        gpu = any(d.startswith("cuda") for d in devices)
        replicas = len(devices) * options.replicas_per_device
        # On a GPU host the cores are for tokenizing; on the CPU the replicas need them for the model.
        workers = max(1, min(16, _cpus() - replicas - 2)) if gpu else 1
    config.tokenizer_workers = workers
    return config


class InProcessEngine:
    def __init__(self, options: EngineOptions) -> None:
        self.config = server_config(options)
        self.model_path = self.config.resolved_model_path()
        try:
            self.spec = read_model_spec(self.model_path)
        except (FileNotFoundError, ValueError) as exc:
            raise BatchError(f"cannot load model: {exc}") from None
        self.model_name = self.spec.name
        self.dim = self.spec.dim
        self._pool: TokenizerPool | None = None
        self._replicas: ReplicaManager | None = None
        self._core: EmbedCore | None = None

    def describe(self) -> str:
        devices = ",".join(self.config.resolved_devices())
        return (f"in-process {self.model_name} ({self.model_path}) on {devices}: "
                f"{self.config.replicas_per_device} replica(s)/device, {self.config.tokenizer_workers} "
                f"tokenizer worker(s), engine {self.config.replica.engine}")

    async def start(self) -> None:
        self._pool = TokenizerPool(str(self.model_path), self.spec.max_input_tokens, self.spec.do_lower_case,
                                   self.config.tokenizer_workers)
        self._replicas = ReplicaManager(self.config, str(self.model_path))
        try:
            await self._pool.start()
            await self._replicas.start()
        except RuntimeError as exc:
            await self.close()
            raise BatchError(f"the model did not start: {str(exc).splitlines()[0]}") from None
        self._core = EmbedCore(self.config, self.spec, self._pool, self._replicas)

    async def embed(self, texts: list[str], options: EmbedOptions) -> ChunkEmbeddings:
        """One chunk, as pieces of PIECE_ROWS texts sent at once: every tokenizer worker gets a share (the pool
        hands a whole request to one worker when none is idle), and the replicas batch the pieces back together."""
        core = self._core
        assert core is not None, "start() first"
        jobs = [EmbedJob(texts=texts[i:i + PIECE_ROWS], normalize=options.normalize, dimensions=options.dimensions,
                         truncate=options.truncate, truncate_left=options.truncate_left,
                         prompt_name=options.prompt_name, prefix=options.prefix, dtype=options.dtype)
                for i in range(0, len(texts), PIECE_ROWS)]
        try:
            results = await asyncio.gather(*(core.embed(job) for job in jobs))
        except EmbedError as exc:
            raise BatchError(str(exc)) from None
        first = results[0]
        blob = first.data if len(results) == 1 else b"".join(r.data for r in results)
        data = np.frombuffer(blob, dtype=np.uint8).reshape(len(texts), first.row_bytes)
        tokens = np.concatenate([r.token_counts for r in results]).astype(np.int32, copy=False)
        scales = None if first.scales is None else np.concatenate([r.scales for r in results])
        return ChunkEmbeddings(data, first.dim, first.dtype, tokens, scales)

    async def close(self) -> None:
        if self._replicas is not None:
            await self._replicas.close()
            self._replicas = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
