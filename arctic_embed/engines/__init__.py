"""Engines: turn token ids into pooled embeddings on a device. Selected by name (`--engine`)."""

from __future__ import annotations

from arctic_embed.engines.base import Engine, EngineInfo


def create_engine(name: str, vllm_kv_cache_bytes: int = 64 * 2**20) -> Engine:
    if name == "torch":
        from arctic_embed.engines.torch_encoder import TorchEncoderEngine

        return TorchEncoderEngine()
    if name == "vllm":
        from arctic_embed.engines.vllm_pooling import VllmPoolingEngine

        return VllmPoolingEngine(kv_cache_bytes=vllm_kv_cache_bytes)
    raise ValueError(f"unknown engine {name!r}: use 'torch' or 'vllm'")


__all__ = ["Engine", "EngineInfo", "create_engine"]
