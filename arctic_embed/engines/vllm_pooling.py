"""The vLLM engine: `AsyncLLM` with runner="pooling", for every architecture vLLM can embed.

The engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0: the replica already is its own process) on a private
event loop thread; `embed` submits every sequence of the batch at once and vLLM schedules them together.
vLLM's own normalization is switched off: normalization, Matryoshka dims and dtypes are ours (arctic_embed.encoding),
the same for every engine. The pooling mode is the one `ModelSpec` read (sentence-transformers config, or the family
default: last-token for decoder embedders such as Qwen3-Embedding); instruction prefixes are the spec's prompts,
applied by the gateway's tokenizer like for every engine.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import threading

import numpy as np
import torch

from arctic_embed.engines.base import EngineHealth, EngineInfo, EngineLimits
from arctic_embed.model_files import ModelSpec

VLLM_POOLING = {"mean": "MEAN", "cls": "CLS", "lasttoken": "LAST"}


class VllmPoolingEngine:
    name = "vllm"

    def __init__(self, kv_cache_bytes: int = 64 * 2**20) -> None:
        self._kv_cache_bytes = kv_cache_bytes
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-loop", daemon=True)
        self._ids = itertools.count()
        self._llm = None
        self._spec: ModelSpec | None = None
        self._dtype = "auto"
        self._device = "cpu"

    def load(self, spec: ModelSpec, device: str, dtype: str, threads: int = 0) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if threads > 0 and device == "cpu":
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
            torch.set_num_threads(threads)
        from vllm import AsyncEngineArgs, PoolingParams
        from vllm.config import PoolerConfig
        from vllm.v1.engine.async_llm import AsyncLLM

        if spec.pooling not in VLLM_POOLING:
            raise ValueError(f"the vllm engine pools with {sorted(VLLM_POOLING)}, not {spec.pooling!r}")
        if spec.dense_layers:
            raise ValueError(f"{spec.path}: sentence-transformers Dense heads are applied by the torch engine only")
        self._spec = spec
        self._device = device
        self._dtype = "float32" if dtype == "auto" and device == "cpu" else dtype
        pooler = PoolerConfig(seq_pooling_type=VLLM_POOLING[spec.pooling])  # type: ignore[arg-type]
        args = AsyncEngineArgs(model=str(spec.path), runner="pooling", dtype=self._dtype,
                               max_model_len=spec.max_input_tokens, enforce_eager=device == "cpu",
                               kv_cache_memory_bytes=self._kv_cache_bytes, disable_log_stats=True,
                               pooler_config=pooler)
        self._thread.start()
        self._llm = self._call(self._create(AsyncLLM, args))
        fields = inspect.signature(PoolingParams).parameters
        # The switch for vLLM's normalization changed name across versions (normalize → use_activation).
        off = {"use_activation": False} if "use_activation" in fields else {"normalize": False}
        self._params = PoolingParams(task="embed", **off)

    @staticmethod
    async def _create(cls, args):  # noqa: ANN001, ANN205 - vLLM types stay out of our signatures
        return cls.from_engine_args(args)

    def _call(self, coro):  # noqa: ANN001, ANN202
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _embed_one(self, ids: list[int]) -> torch.Tensor:
        result = None
        async for output in self._llm.encode({"prompt_token_ids": ids}, self._params,  # type: ignore[union-attr]
                                             request_id=f"embed-{next(self._ids)}"):
            result = output
        assert result is not None
        return result.outputs.data

    async def _embed_all(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        return await asyncio.gather(*(self._embed_one(s) for s in sequences))

    def embed(self, ids: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        sequences = [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(lengths.size)]
        return torch.stack([t.float() for t in self._call(self._embed_all(sequences))])

    def info(self) -> EngineInfo:
        assert self._spec is not None
        return EngineInfo("vllm", self._dtype, self._device, self._spec.dim, architecture=self._spec.architecture,
                          pooling=self._spec.pooling, pooling_source=self._spec.pooling_source)

    def limits(self) -> EngineLimits:
        assert self._llm is not None and self._spec is not None
        scheduler = self._llm.vllm_config.scheduler_config
        return EngineLimits(max_batch_tokens=int(scheduler.max_num_batched_tokens),
                            max_batch_size=int(scheduler.max_num_seqs), max_input_tokens=self._spec.max_input_tokens)

    def health(self) -> EngineHealth:
        """vLLM's own engine check, then a two-token probe that must come back finite."""
        if self._llm is None:
            return EngineHealth(False, "not loaded")
        try:
            self._call(self._llm.check_health())
            out = self.embed(np.zeros(2, dtype=np.int32), np.array([2], dtype=np.int32))
            if not bool(torch.isfinite(out).all()):
                return EngineHealth(False, "non-finite output on the probe batch")
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, said in the message
            return EngineHealth(False, f"{type(exc).__name__}: {exc}")
        return EngineHealth(True, "ok")
