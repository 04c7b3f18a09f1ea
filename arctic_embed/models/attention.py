"""Bidirectional attention over packed variable-length sequences, shared by every encoder model file.

A batch is the sequences back to back: every token-wise op runs on [tokens, hidden] with no padding. Only attention
needs to know where one sequence ends. `AttentionBatch` says so once per batch (built on the host from the lengths
the host already holds, copied asynchronously: no device→host syncs) and every layer reuses it:

- GPU with flash-attn (the `flash_attn` package or vLLM's `vllm_flash_attn`): one varlen call on the packed rows.
- otherwise (CPU, or a model with an additive position bias such as MPNet): sequences grouped into length buckets
  padded at most ~20%, each bucket one fused SDPA call with a key mask.
- padded mode ([batch, width] rows, a static shape): what CUDA graphs capture for small batches.

Optional per-layer extras: a sliding window (|i - j| <= window, ModernBERT's local layers) and an additive bias of
shape [heads, L, L] for a sequence width L (MPNet's relative positions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

BUCKET_PADDING_SLACK = 1.2
BiasFn = Callable[[int], torch.Tensor]
"""Width L → additive attention bias [heads, L, L] (relative positions), in the model's dtype."""


def _find_flash_varlen() -> Callable | None:
    try:
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func
    except ImportError:
        pass
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func
    except (ImportError, AttributeError, OSError):
        return None


def plan_buckets(lengths: np.ndarray, slack: float = BUCKET_PADDING_SLACK) -> list[np.ndarray]:
    """Group sequence indices (ascending length) so each group's padded size is ≤ slack × its real tokens."""
    order = np.argsort(lengths, kind="stable")
    buckets: list[np.ndarray] = []
    start = 0
    tokens = 0
    for pos, idx in enumerate(order.tolist()):
        length = int(lengths[idx])
        count = pos - start + 1
        if pos > start and count * length > slack * (tokens + length):
            buckets.append(order[start:pos])
            start, tokens = pos, 0
        tokens += length
    if order.size:
        buckets.append(order[start:])
    return buckets


@dataclass
class AttentionBucket:
    """Sequences attended together: gather index [b, L] into packed rows, key mask, and which outputs are real."""

    gather: torch.Tensor
    key_valid: torch.Tensor | None  # bool [b, L]; None when every sequence fills the width
    keep: torch.Tensor | None  # flat indices of real rows in the [b * L] output; None when all are real
    rows: torch.Tensor  # packed row of each kept output
    width: int


@dataclass
class AttentionBatch:
    """Where each sequence of a packed batch starts and ends, prepared once per batch for every layer.

    `positions` is each token's index inside its sequence (0-based, on the device). Exactly one of the layouts is set:
    `padded` ([batch, width] rows with `valid` marking real tokens), `uniform_width` (n sequences of one length),
    or `buckets` (+ `cu_seqlens` for flash-attn)."""

    num_seqs: int
    total: int
    positions: torch.Tensor
    lengths: np.ndarray
    padded: tuple[int, int] | None = None
    valid: torch.Tensor | None = None
    uniform_width: int | None = None
    buckets: list[AttentionBucket] = field(default_factory=list)
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0

    @classmethod
    def packed(cls, lengths: np.ndarray, device: torch.device, flash: bool = False) -> AttentionBatch:
        lengths = np.asarray(lengths, dtype=np.int64)
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        positions = np.arange(total) - np.repeat(offsets[:-1], lengths)
        batch = cls(num_seqs=int(lengths.size), total=total, positions=to_device(positions, device),
                    lengths=lengths, max_seqlen=int(lengths.max()) if lengths.size else 0)
        if flash:
            batch.cu_seqlens = to_device(offsets.astype(np.int32), device)
        if lengths.size and bool((lengths == lengths[0]).all()):
            batch.uniform_width = int(lengths[0])
        else:
            batch.buckets = _buckets(lengths, offsets, device)
        return batch

    @classmethod
    def padded_batch(cls, valid: torch.Tensor) -> AttentionBatch:
        """[batch, width] rows (flattened to batch*width packed rows), `valid` bool [batch, width], left-aligned.

        Static shapes only: this is the layout CUDA graphs capture."""
        batch, width = valid.shape
        positions = torch.arange(width, device=valid.device).repeat(batch)
        return cls(num_seqs=batch, total=batch * width, positions=positions, lengths=np.zeros(0, np.int64),
                   padded=(batch, width), valid=valid, max_seqlen=width)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host → device without stalling the host: pinned staging and an async copy on CUDA."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _buckets(lengths: np.ndarray, offsets: np.ndarray, device: torch.device) -> list[AttentionBucket]:
    total = int(offsets[-1])
    out: list[AttentionBucket] = []
    for seqs in plan_buckets(lengths):
        seq_lengths = lengths[seqs]
        width = int(seq_lengths.max())
        steps = np.arange(width)
        valid = steps[None, :] < seq_lengths[:, None]
        gather = np.minimum(offsets[seqs][:, None] + steps[None, :], total - 1)
        if bool(valid.all()):
            out.append(AttentionBucket(to_device(gather, device), None, None,
                                       to_device(gather.reshape(-1), device), width))
            continue
        out.append(AttentionBucket(
            gather=to_device(gather, device),
            key_valid=to_device(valid, device),
            keep=to_device(np.flatnonzero(valid.reshape(-1)), device),
            rows=to_device(gather[valid], device),
            width=width,
        ))
    return out


def _window_mask(width: int, window: int, device: torch.device) -> torch.Tensor:
    steps = torch.arange(width, device=device)
    return (steps[None, :] - steps[:, None]).abs() <= window


class PackedAttention:
    """softmax(q kᵀ / √d + bias) v per sequence, on packed rows. One instance per model, stateless per batch."""

    def __init__(self, num_heads: int, head_dim: int, device: torch.device, use_flash: bool = True) -> None:
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.hidden = num_heads * head_dim
        self.flash = _find_flash_varlen() if use_flash and device.type == "cuda" else None

    def __call__(self, qkv: torch.Tensor, batch: AttentionBatch, window: int | None = None,
                 bias: BiasFn | None = None) -> torch.Tensor:
        """qkv [total, 3, heads, head_dim] → context [total, heads * head_dim]."""
        if batch.padded is not None:
            return self._padded(qkv, batch, window, bias)
        if self.flash is not None and bias is None and batch.cu_seqlens is not None and qkv.dtype != torch.float32:
            q, k, v = qkv.unbind(1)
            out = self.flash(q, k, v, max_seqlen_q=batch.max_seqlen, cu_seqlens_q=batch.cu_seqlens,
                             max_seqlen_k=batch.max_seqlen, cu_seqlens_k=batch.cu_seqlens, causal=False,
                             window_size=(window, window) if window is not None else (-1, -1))
            return out.reshape(batch.total, self.hidden)
        if batch.uniform_width is not None:
            width = batch.uniform_width
            q, k, v = qkv.view(batch.num_seqs, width, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(width, None, window, bias, q))
            return ctx.transpose(1, 2).reshape(batch.total, self.hidden)
        out = torch.empty(batch.total, self.hidden, device=qkv.device, dtype=qkv.dtype)
        for b in batch.buckets:
            q, k, v = qkv[b.gather].permute(2, 0, 3, 1, 4)
            key_valid = b.key_valid[:, None, None, :] if b.key_valid is not None else None
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(b.width, key_valid, window, bias, q))
            ctx = ctx.transpose(1, 2).reshape(-1, self.hidden)
            out[b.rows] = ctx[b.keep] if b.keep is not None else ctx
        return out

    def _padded(self, qkv: torch.Tensor, batch: AttentionBatch, window: int | None, bias: BiasFn | None
                ) -> torch.Tensor:
        n, width = batch.padded  # type: ignore[misc]
        q, k, v = qkv.view(n, width, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        allowed = batch.valid[:, None, :]  # type: ignore[index]
        # A padding query may attend to itself: no all-masked rows, so no NaNs reach the (masked) pooling.
        allowed = allowed | torch.eye(width, dtype=torch.bool, device=qkv.device)[None]
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(width, allowed[:, None], window, bias, q))
        return ctx.transpose(1, 2).reshape(batch.total, self.hidden)

    @staticmethod
    def _mask(width: int, allowed: torch.Tensor | None, window: int | None, bias: BiasFn | None,
              like: torch.Tensor) -> torch.Tensor | None:
        """Bool mask (or additive float mask when there is a bias) broadcastable to [b, heads, L, L]."""
        if window is not None and window + 1 < width:
            local = _window_mask(width, window, like.device)
            allowed = local if allowed is None else allowed & local
        if bias is None:
            return allowed
        additive = bias(width)[None]
        if allowed is None:
            return additive
        return additive.masked_fill(~allowed, float("-inf"))
