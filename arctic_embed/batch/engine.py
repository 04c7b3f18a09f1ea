"""The seam between a batch job and whatever embeds its chunks: a running server or the model loaded in-process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from arctic_embed.batch.options import EmbedOptions


@dataclass
class ChunkEmbeddings:
    """The embeddings of one chunk, in input order."""

    data: np.ndarray
    """uint8 [n, row_bytes]: each row is one vector's little-endian bytes in `dtype`."""
    dim: int
    """The vector's dimension (for binary, the number of bits; `row_bytes` is dim / 8 rounded up)."""
    dtype: str
    tokens: np.ndarray
    """int32 [n]: tokens each input was embedded with (special tokens included, after truncation)."""
    scales: np.ndarray | None
    """float32 [n] for int8/uint8 (dequantize: int8 q * scale; uint8 q / 127.5 * scale - scale), else None."""

    @property
    def rows(self) -> int:
        return int(self.data.shape[0])


class BatchEngine(Protocol):
    model_name: str
    dim: int

    async def start(self) -> None: ...

    async def embed(self, texts: list[str], options: EmbedOptions) -> ChunkEmbeddings: ...

    async def close(self) -> None: ...

    def describe(self) -> str:
        """One line for the log: what embeds (model, where)."""
