"""Engines: turn token ids into pooled embeddings on a device. Selected by name (`--engine`)."""

from __future__ import annotations

import logging

from arctic_embed.engines.base import Engine, EngineHealth, EngineInfo, EngineLimits
from arctic_embed.model_files import ModelSpec

log = logging.getLogger("arctic_embed.engines")


def engine_for(name: str, spec: ModelSpec | None) -> str:
    """The engine that will serve `spec`: the native `torch` engine has model files for encoder architectures only;
    any other architecture (decoder embedders such as Qwen3-Embedding, remote-code models) goes to vLLM."""
    if name == "torch" and spec is not None:
        from arctic_embed.models import NATIVE_MODEL_TYPES

        if spec.model_type not in NATIVE_MODEL_TYPES:
            log.warning("%s (%s, model_type %r) has no native model file (native: %s); serving it with the vllm "
                        "engine", spec.name, spec.architecture, spec.model_type, ", ".join(NATIVE_MODEL_TYPES))
            return "vllm"
    return name


def create_engine(name: str, vllm_kv_cache_bytes: int = 64 * 2**20, spec: ModelSpec | None = None) -> Engine:
    """An engine by name; with `spec`, an architecture the torch engine does not know goes to vLLM (logged)."""
    name = engine_for(name, spec)
    if name == "torch":
        from arctic_embed.engines.torch_encoder import TorchEncoderEngine

        return TorchEncoderEngine()
    if name == "vllm":
        from arctic_embed.engines.vllm_pooling import VllmPoolingEngine

        return VllmPoolingEngine(kv_cache_bytes=vllm_kv_cache_bytes)
    raise ValueError(f"unknown engine {name!r}: use 'torch' or 'vllm'")


__all__ = ["Engine", "EngineHealth", "EngineInfo", "EngineLimits", "create_engine", "engine_for"]
