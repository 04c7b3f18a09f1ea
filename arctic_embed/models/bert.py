"""BERT (bert-base, all-MiniLM, arctic-embed-m/-s, bge, e5, gte-base...): learned positions, post-norm layers.

embeddings (word + position + token type 0, LayerNorm) → N × PostNormLayer → last hidden state [tokens, hidden].
Checkpoint names are transformers' `BertModel` names, with or without a task prefix (`bert.`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arctic_embed.models.attention import AttentionBatch, PackedAttention
from arctic_embed.models.layers import LayerNorm, Linear, PostNormLayer, hidden_activation
from arctic_embed.models.loading import Weights


class BertEmbeddings:
    def __init__(self, config: dict, weights: Weights, position_offset: int = 0) -> None:
        self.word = weights.get("embeddings.word_embeddings.weight")
        positions = weights.get("embeddings.position_embeddings.weight")
        if weights.has("embeddings.token_type_embeddings.weight"):
            # Every token is type 0: fold that row into the position table once.
            positions = positions + weights.get("embeddings.token_type_embeddings.weight")[0]
        # RoBERTa-style models number positions from padding_idx + 1: slice the table instead of adding per batch.
        self.positions = positions[position_offset:].contiguous()
        self.norm = LayerNorm(weights, "embeddings.LayerNorm", float(config.get("layer_norm_eps", 1e-12)))

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.norm(F.embedding(ids, self.word) + self.positions[positions])


def bert_layer(config: dict, weights: Weights, prefix: str, attention: PackedAttention,
               fused_norm: bool) -> PostNormLayer:
    eps = float(config.get("layer_norm_eps", 1e-12))
    return PostNormLayer(
        qkv=Linear.fused(weights, [f"{prefix}attention.self.{n}" for n in ("query", "key", "value")]),
        out=Linear.load(weights, prefix + "attention.output.dense"),
        attn_norm=LayerNorm(weights, prefix + "attention.output.LayerNorm", eps),
        ffn_in=Linear.load(weights, prefix + "intermediate.dense"),
        ffn_out=Linear.load(weights, prefix + "output.dense"),
        ffn_norm=LayerNorm(weights, prefix + "output.LayerNorm", eps),
        act=hidden_activation(str(config.get("hidden_act", "gelu"))),
        attention=attention,
        fused_norm=fused_norm,
    )


class BertEncoder:
    def __init__(self, config: dict, weights: Weights, attention: PackedAttention, fused_norm: bool) -> None:
        self.layers = [bert_layer(config, weights, f"encoder.layer.{i}.", attention, fused_norm)
                       for i in range(int(config["num_hidden_layers"]))]

    def __call__(self, x: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, batch)
        return x


class BertModel:
    """Token ids of a packed batch → last hidden state. `position_offset` is 0 for BERT."""

    position_offset = 0

    def __init__(self, config: dict, weights: Weights, fused_norm: bool = False, use_flash: bool = True) -> None:
        weights = weights.under("embeddings.word_embeddings.weight")
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        self.hidden_size = hidden
        self.attention = PackedAttention(heads, hidden // heads, weights.device, use_flash)
        self.embeddings = BertEmbeddings(config, weights, self._position_offset(config))
        self.encoder = BertEncoder(config, weights, self.attention, fused_norm)

    def _position_offset(self, config: dict) -> int:
        return self.position_offset

    def __call__(self, ids: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        return self.encoder(self.embeddings(ids, batch.positions), batch)
