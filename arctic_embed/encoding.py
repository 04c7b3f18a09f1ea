"""Embeddings → output bytes: normalize, Matryoshka truncation, dtype conversion, all on the engine's device.

A batch mixes requests with different options; `encode_batch` handles each group of rows with its own options
and joins everything into ONE uint8 tensor, so there is a single device→host copy per batch.
All multi-byte values are little-endian (the byte order of every host we run on; checked at import).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

if sys.byteorder != "little":  # pragma: no cover - no big-endian host runs this
    raise ImportError("arctic_embed writes little-endian outputs and only runs on little-endian hosts")

OUTPUT_DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8", "binary")
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


@dataclass(frozen=True)
class OutputOptions:
    normalize: bool = True
    dimensions: int = 0
    """0 = the model's full dimension."""
    dtype: str = "float32"


def row_bytes(dim: int, dtype: str) -> int:
    """Bytes of one output vector."""
    if dtype == "binary":
        return (dim + 7) // 8
    return dim * {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1}[dtype]


def has_scales(dtype: str) -> bool:
    return dtype in ("int8", "uint8")


def _prepare(x: torch.Tensor, options: OutputOptions) -> torch.Tensor:
    x = x.float()
    if options.dimensions:
        x = x[:, :options.dimensions]
    if options.normalize:
        x = torch.nn.functional.normalize(x, p=2.0, dim=-1)
    return x


def _to_bytes(x: torch.Tensor, dtype: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[n, dim] float32 → ([n, row_bytes] uint8, per-row scales or None)."""
    if dtype == "float32":
        return x.contiguous().view(torch.uint8), None
    if dtype == "float16":
        return x.half().contiguous().view(torch.uint8), None
    if dtype == "bfloat16":
        return x.bfloat16().contiguous().view(torch.uint8), None
    if dtype == "binary":
        bits = (x > 0).to(torch.uint8)
        pad = (-bits.shape[1]) % 8
        if pad:
            bits = torch.nn.functional.pad(bits, (0, pad))
        weights = _BIT_WEIGHTS.to(bits.device)
        packed = (bits.view(bits.shape[0], -1, 8) * weights).sum(dim=-1, dtype=torch.int32)
        return packed.to(torch.uint8), None
    peak = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    if dtype == "int8":
        q = torch.round(x * (127.0 / peak)).clamp_(-127, 127).to(torch.int8)
        return q.view(torch.uint8), (peak / 127.0).squeeze(-1)
    if dtype == "uint8":
        q = torch.round((x + peak) * (127.5 / peak)).clamp_(0, 255).to(torch.uint8)
        return q, peak.squeeze(-1)
    raise ValueError(f"unknown output dtype {dtype!r}")


def encode_rows(x: torch.Tensor, options: OutputOptions) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode a block of rows that share options: ([n, row_bytes] uint8, scales [n] or None), still on device."""
    return _to_bytes(_prepare(x, options), options.dtype)


@dataclass
class EncodedBatch:
    """Host-side result of one batch: `data[offsets[g]:offsets[g+1]]` holds group g's rows back to back."""

    data: memoryview
    group_offsets: list[int]
    scales: list[memoryview | None]


@dataclass
class PendingBatch:
    """An encoded batch whose device→host copy may still be running; `result()` waits for it."""

    host: torch.Tensor
    event: torch.cuda.Event | None
    group_offsets: list[int]
    scale_spans: list[tuple[int, int] | None]

    def result(self) -> EncodedBatch:
        if self.event is not None:
            self.event.synchronize()
        view = memoryview(self.host.numpy()).cast("B")
        scales = [None if span is None else view[span[0]:span[1]] for span in self.scale_spans]
        return EncodedBatch(view, self.group_offsets, scales)


def encode_batch_async(embeddings: torch.Tensor, groups: list[tuple[int, int, OutputOptions]]) -> PendingBatch:
    """Encode row ranges [start, end) of `embeddings` with their options into one buffer and start ONE copy to the
    host (pinned, asynchronous on CUDA), so the caller can launch the next batch while this one finishes."""
    blocks: list[torch.Tensor] = []
    scale_blocks: list[torch.Tensor] = []
    scale_slots: list[int | None] = []
    for start, end, options in groups:
        rows, scales = encode_rows(embeddings[start:end], options)
        blocks.append(rows.reshape(-1))
        if scales is None:
            scale_slots.append(None)
        else:
            scale_slots.append(len(scale_blocks))
            scale_blocks.append(scales.float().contiguous())
    flat = torch.cat(blocks + [s.view(torch.uint8) for s in scale_blocks])
    offsets = [0]
    for block in blocks:
        offsets.append(offsets[-1] + block.numel())
    spans: list[tuple[int, int]] = []
    cursor = offsets[-1]
    for block in scale_blocks:
        spans.append((cursor, cursor + block.numel() * 4))
        cursor += block.numel() * 4
    scale_spans = [None if slot is None else spans[slot] for slot in scale_slots]
    if flat.device.type != "cuda":
        return PendingBatch(flat, None, offsets, scale_spans)
    host = torch.empty(flat.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(flat, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return PendingBatch(host, event, offsets, scale_spans)


def encode_batch(embeddings: torch.Tensor, groups: list[tuple[int, int, OutputOptions]]) -> EncodedBatch:
    """`encode_batch_async` and wait: one host copy for the whole batch."""
    return encode_batch_async(embeddings, groups).result()
