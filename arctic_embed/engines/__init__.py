"""Engines: turn token ids into pooled embeddings on a device. Selected by name (`--engine`)."""

from __future__ import annotations

from arctic_embed.engines.base import Engine, EngineInfo


def create_engine(name: str) -> Engine:
    if name == "torch":
        from arctic_embed.engines.torch_encoder import TorchEncoderEngine

        return TorchEncoderEngine()
    if name == "vllm":
        from arctic_embed.engines.vllm_pooling import VllmPoolingEngine

        return VllmPoolingEngine()
    raise ValueError(f"unknown engine {name!r}: use 'torch' or 'vllm'")


__all__ = ["Engine", "EngineInfo", "create_engine"]
