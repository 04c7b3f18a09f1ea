"""The engine seam: load a model, embed a packed batch of token ids, describe yourself, say whether you are healthy
and how big a batch you take (TEI's backend trait: health, max batch, embed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from arctic_embed.model_files import ModelSpec


@dataclass(frozen=True)
class EngineInfo:
    engine: str
    model_dtype: str
    device: str
    dim: int
    architecture: str = ""
    pooling: str = ""
    pooling_source: str = ""
    """"modules.json", or the family default that applied (see `arctic_embed.model_files`)."""


@dataclass(frozen=True)
class EngineHealth:
    ok: bool
    message: str = ""


@dataclass(frozen=True)
class EngineLimits:
    """What one `embed` call may hold; the replica's batcher should stay within these."""

    max_batch_tokens: int
    max_batch_size: int
    max_input_tokens: int


class Engine(Protocol):
    def load(self, spec: ModelSpec, device: str, dtype: str, threads: int = 0) -> None:
        """Load weights onto `device` in `dtype` ("auto" picks per device)."""

    def embed(self, ids: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """Pooled embeddings [n, dim] (float32 or the model dtype, not normalized) for n packed sequences.

        `ids` is int32 [sum(lengths)], the sequences back to back; the result stays on the engine's device.
        """

    def info(self) -> EngineInfo: ...

    def health(self) -> EngineHealth:
        """Run a tiny probe batch; unhealthy when it raises or returns non-finite values (take the replica out)."""

    def limits(self) -> EngineLimits: ...


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
