"""Building blocks the encoder model files share: activations, LayerNorm, the post-norm (BERT-style) layer, rotary.

Weights are plain tensors on the serving device; every op runs on packed [tokens, hidden] rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from arctic_embed.engines.kernels import add_layer_norm
from arctic_embed.models.attention import AttentionBatch, BiasFn, PackedAttention
from arctic_embed.models.loading import Weights

HIDDEN_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


class UnsupportedConfig(ValueError):
    """The checkpoint's config asks for something this model file does not implement."""


def hidden_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in HIDDEN_ACTIVATIONS:
        raise UnsupportedConfig(f"hidden activation {name!r} is not supported (one of {sorted(HIDDEN_ACTIVATIONS)})")
    return HIDDEN_ACTIVATIONS[name]


class LayerNorm:
    def __init__(self, weights: Weights, prefix: str, eps: float) -> None:
        self.weight = weights.get(prefix + ".weight")
        self.bias = weights.optional(prefix + ".bias")
        self.eps = eps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)

    def add(self, x: torch.Tensor, residual: torch.Tensor, fused: bool) -> torch.Tensor:
        """LayerNorm(x + residual), one fused kernel on the GPU when the norm has a bias."""
        if self.bias is None:
            return self(x + residual)
        return add_layer_norm(x, residual, self.weight, self.bias, self.eps, fused)


class Linear:
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = weight
        self.bias = bias

    @classmethod
    def load(cls, weights: Weights, prefix: str) -> Linear:
        return cls(weights.get(prefix + ".weight"), weights.optional(prefix + ".bias"))

    @classmethod
    def fused(cls, weights: Weights, prefixes: list[str]) -> Linear:
        """Several projections of the same input (q, k, v) as one matrix multiply."""
        biases = [weights.optional(p + ".bias") for p in prefixes]
        bias = torch.cat(biases).contiguous() if all(b is not None for b in biases) else None
        return cls(weights.cat([p + ".weight" for p in prefixes]), bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class PostNormLayer:
    """x = LN(x + O·attn(QKV·x)); x = LN(x + W2·act(W1·x)): the BERT / RoBERTa / DistilBERT / MPNet layer."""

    def __init__(self, qkv: Linear, out: Linear, attn_norm: LayerNorm, ffn_in: Linear, ffn_out: Linear,
                 ffn_norm: LayerNorm, act: Callable[[torch.Tensor], torch.Tensor], attention: PackedAttention,
                 fused_norm: bool) -> None:
        self.qkv, self.out, self.attn_norm = qkv, out, attn_norm
        self.ffn_in, self.ffn_out, self.ffn_norm = ffn_in, ffn_out, ffn_norm
        self.act = act
        self.attention = attention
        self.fused_norm = fused_norm

    def __call__(self, x: torch.Tensor, batch: AttentionBatch, bias: BiasFn | None = None) -> torch.Tensor:
        a = self.attention
        ctx = a(self.qkv(x).view(-1, 3, a.num_heads, a.head_dim), batch, bias=bias)
        x = self.attn_norm.add(self.out(ctx), x, self.fused_norm)
        return self.ffn_norm.add(self.ffn_out(self.act(self.ffn_in(x))), x, self.fused_norm)


class Rotary:
    """Rotary position embedding (rotate-half layout, as in GPT-NeoX / ModernBERT) for packed rows."""

    def __init__(self, head_dim: int, theta: float, device: torch.device) -> None:
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [tokens, 1, head_dim] for each row's position; computed once per batch, shared by layers."""
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin
