"""The native encoder engine: a thin shell over the model files in `arctic_embed.models`.

It picks the model file for the checkpoint's `model_type`, runs packed batches (token-wise ops on [tokens, hidden],
attention through the shared packed-varlen `PackedAttention`), pools and applies the sentence-transformers heads.
On CUDA, small batches replay captured graphs of the padded layout (`cuda_graphs.PaddedGraphs`) and the residual
LayerNorms use the fused Triton kernel.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from arctic_embed.engines.base import EngineHealth, EngineInfo, EngineLimits, resolve_dtype
from arctic_embed.engines.kernels import triton_available
from arctic_embed.model_files import ModelSpec
from arctic_embed.models import NATIVE_MODEL_TYPES, EncoderModel, build_model
from arctic_embed.models.attention import BUCKET_PADDING_SLACK, AttentionBatch, plan_buckets, to_device
from arctic_embed.models.pooling import DenseHead, pool_packed, pool_padded

log = logging.getLogger("arctic_embed.engines.torch")
SUPPORTED_MODEL_TYPES = NATIVE_MODEL_TYPES
DEFAULT_MAX_BATCH_TOKENS = 16384

__all__ = ["BUCKET_PADDING_SLACK", "SUPPORTED_MODEL_TYPES", "TorchEncoderEngine", "plan_buckets"]


class TorchEncoderEngine:
    name = "torch"

    def __init__(self) -> None:
        self._spec: ModelSpec | None = None
        self._device = torch.device("cpu")
        self._dtype = torch.float32
        self._graphs = None
        self._model: EncoderModel | None = None
        self._last_error: str | None = None

    # ------------------------------------------------------------------------------------------------ loading
    def load(self, spec: ModelSpec, device: str, dtype: str, threads: int = 0, use_cuda_graphs: bool = True,
             fused_kernels: bool = True, use_flash: bool = True) -> None:
        if spec.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"the torch engine runs {SUPPORTED_MODEL_TYPES}, not {spec.model_type!r}; "
                             "use --engine vllm for this model")
        if threads > 0 and device == "cpu":
            torch.set_num_threads(threads)
        if not spec.include_prompt:
            log.warning("%s: the Pooling config excludes prompt tokens (include_prompt=false); this engine pools "
                        "over every token, prompts included", spec.name)
        self._spec = spec
        self._device = torch.device(device)
        self._dtype = resolve_dtype(dtype, device)
        fused = fused_kernels and triton_available(self._device)
        self._model = build_model(spec.path, spec.model_type, self._device, self._dtype, fused, use_flash)
        self._flash = self._model.attention.flash is not None  # type: ignore[attr-defined]
        self._head = DenseHead(spec.dense_layers, self._device)
        self._graphs = None
        if self._device.type == "cuda" and use_cuda_graphs:
            from arctic_embed.engines.cuda_graphs import PaddedGraphs

            self._graphs = PaddedGraphs(self.padded_forward, self._device, spec.max_input_tokens)
            self._graphs.capture()

    def info(self) -> EngineInfo:
        assert self._spec is not None
        return EngineInfo("torch", str(self._dtype).removeprefix("torch."), str(self._device), self._spec.dim,
                          architecture=self._spec.architecture, pooling=self._spec.pooling,
                          pooling_source=self._spec.pooling_source)

    def limits(self) -> EngineLimits:
        assert self._spec is not None
        return EngineLimits(max_batch_tokens=DEFAULT_MAX_BATCH_TOKENS, max_batch_size=DEFAULT_MAX_BATCH_TOKENS,
                            max_input_tokens=self._spec.max_input_tokens)

    def health(self) -> EngineHealth:
        """A two-token forward pass must finish with finite values; a device error makes the replica unhealthy."""
        if self._model is None:
            return EngineHealth(False, "not loaded")
        try:
            out = self.embed(np.zeros(2, dtype=np.int32), np.array([2], dtype=np.int32))
            if not bool(torch.isfinite(out).all()):
                return EngineHealth(False, "non-finite output on the probe batch")
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, said in the message
            self._last_error = f"{type(exc).__name__}: {exc}"
            return EngineHealth(False, self._last_error)
        return EngineHealth(True, "ok")

    # ------------------------------------------------------------------------------------------------ forward
    @torch.inference_mode()
    def embed(self, ids: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        assert self._model is not None, "load() first"
        lengths = np.asarray(lengths, dtype=np.int64)
        if self._graphs is not None:
            out = self._graphs.run(ids, lengths)
            if out is not None:
                return out
        return self._packed_forward(np.asarray(ids, dtype=np.int32), lengths)

    def _packed_forward(self, ids: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        batch = AttentionBatch.packed(lengths, self._device, flash=self._flash)
        x = self._model(to_device(ids, self._device), batch)  # type: ignore[misc]
        return self._head(pool_packed(x, lengths, self._spec.pooling))  # type: ignore[union-attr]

    def padded_forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[batch, width] ids with a boolean mask of real tokens → pooled [batch, dim] (float32).

        Static shapes only (no host sync): this is what CUDA graphs capture for small batches."""
        batch, width = ids.shape
        x = self._model(ids.reshape(-1), AttentionBatch.padded_batch(mask))  # type: ignore[misc]
        x = x.view(batch, width, -1).float()
        return self._head(pool_padded(x, mask, self._spec.pooling))  # type: ignore[union-attr]
