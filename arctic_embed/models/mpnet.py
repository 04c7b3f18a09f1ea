"""MPNet (all-mpnet-base-v2, multi-qa-mpnet): BERT-like post-norm layers plus a T5-style relative position bias
(32 buckets, max distance 128) added to every layer's attention scores; positions numbered from 2 (padding_idx 1).

The bias depends only on the sequence width, so it goes through the SDPA bucket path as an additive mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from arctic_embed.models.attention import AttentionBatch, PackedAttention
from arctic_embed.models.layers import LayerNorm, Linear, PostNormLayer, hidden_activation
from arctic_embed.models.loading import Weights

PADDING_IDX = 1
NUM_BUCKETS = 32
MAX_DISTANCE = 128


def relative_position_bucket(relative: torch.Tensor, num_buckets: int = NUM_BUCKETS,
                             max_distance: int = MAX_DISTANCE) -> torch.Tensor:
    """T5's bidirectional bucketing of (key - query) distances, as MPNet computes it."""
    n = -relative
    half = num_buckets // 2
    out = (n < 0).to(torch.long) * half
    n = n.abs()
    max_exact = half // 2
    large = max_exact + (torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
                         * (half - max_exact)).to(torch.long)
    large = large.clamp(max=half - 1)
    return out + torch.where(n < max_exact, n, large)


class MPNetEmbeddings:
    def __init__(self, config: dict, weights: Weights) -> None:
        self.word = weights.get("embeddings.word_embeddings.weight")
        self.positions = weights.get("embeddings.position_embeddings.weight")[PADDING_IDX + 1:].contiguous()
        self.norm = LayerNorm(weights, "embeddings.LayerNorm", float(config.get("layer_norm_eps", 1e-12)))

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.norm(F.embedding(ids, self.word) + self.positions[positions])


def mpnet_layer(config: dict, weights: Weights, prefix: str, attention: PackedAttention,
                fused_norm: bool) -> PostNormLayer:
    eps = float(config.get("layer_norm_eps", 1e-12))
    return PostNormLayer(
        qkv=Linear.fused(weights, [f"{prefix}attention.attn.{n}" for n in ("q", "k", "v")]),
        out=Linear.load(weights, prefix + "attention.attn.o"),
        attn_norm=LayerNorm(weights, prefix + "attention.LayerNorm", eps),
        ffn_in=Linear.load(weights, prefix + "intermediate.dense"),
        ffn_out=Linear.load(weights, prefix + "output.dense"),
        ffn_norm=LayerNorm(weights, prefix + "output.LayerNorm", eps),
        act=hidden_activation(str(config.get("hidden_act", "gelu"))),
        attention=attention,
        fused_norm=fused_norm,
    )


class MPNetEncoder:
    def __init__(self, config: dict, weights: Weights, attention: PackedAttention, fused_norm: bool) -> None:
        self.layers = [mpnet_layer(config, weights, f"encoder.layer.{i}.", attention, fused_norm)
                       for i in range(int(config["num_hidden_layers"]))]
        self.bias_table = weights.get("encoder.relative_attention_bias.weight")  # [buckets, heads]

    def position_bias(self, width: int) -> torch.Tensor:
        steps = torch.arange(width, device=self.bias_table.device)
        buckets = relative_position_bucket(steps[None, :] - steps[:, None])
        return self.bias_table[buckets].permute(2, 0, 1).contiguous()  # [heads, L, L]

    def __call__(self, x: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        cache: dict[int, torch.Tensor] = {}  # one bias per width, shared by every layer of this batch

        def bias(width: int) -> torch.Tensor:
            if width not in cache:
                cache[width] = self.position_bias(width)
            return cache[width]

        for layer in self.layers:
            x = layer(x, batch, bias)
        return x


class MPNetModel:
    def __init__(self, config: dict, weights: Weights, fused_norm: bool = False, use_flash: bool = True) -> None:
        weights = weights.under("embeddings.word_embeddings.weight")
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        self.hidden_size = hidden
        self.attention = PackedAttention(heads, hidden // heads, weights.device, use_flash)
        self.embeddings = MPNetEmbeddings(config, weights)
        self.encoder = MPNetEncoder(config, weights, self.attention, fused_norm)

    def __call__(self, ids: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        return self.encoder(self.embeddings(ids, batch.positions), batch)
