"""DistilBERT (msmarco-distilbert, multi-qa-distilbert...): BERT's post-norm layer under other names, no token
types, fixed LayerNorm eps 1e-12. Sinusoidal position tables are stored in the checkpoint like learned ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arctic_embed.models.attention import AttentionBatch, PackedAttention
from arctic_embed.models.layers import LayerNorm, Linear, PostNormLayer, hidden_activation
from arctic_embed.models.loading import Weights

EPS = 1e-12


class DistilBertEmbeddings:
    def __init__(self, weights: Weights) -> None:
        self.word = weights.get("embeddings.word_embeddings.weight")
        self.positions = weights.get("embeddings.position_embeddings.weight")
        self.norm = LayerNorm(weights, "embeddings.LayerNorm", EPS)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.norm(F.embedding(ids, self.word) + self.positions[positions])


def distilbert_layer(config: dict, weights: Weights, prefix: str, attention: PackedAttention,
                     fused_norm: bool) -> PostNormLayer:
    return PostNormLayer(
        qkv=Linear.fused(weights, [f"{prefix}attention.{n}_lin" for n in ("q", "k", "v")]),
        out=Linear.load(weights, prefix + "attention.out_lin"),
        attn_norm=LayerNorm(weights, prefix + "sa_layer_norm", EPS),
        ffn_in=Linear.load(weights, prefix + "ffn.lin1"),
        ffn_out=Linear.load(weights, prefix + "ffn.lin2"),
        ffn_norm=LayerNorm(weights, prefix + "output_layer_norm", EPS),
        act=hidden_activation(str(config.get("activation", "gelu"))),
        attention=attention,
        fused_norm=fused_norm,
    )


class DistilBertModel:
    def __init__(self, config: dict, weights: Weights, fused_norm: bool = False, use_flash: bool = True) -> None:
        weights = weights.under("embeddings.word_embeddings.weight")
        heads = int(config["n_heads"])
        hidden = int(config["dim"])
        self.hidden_size = hidden
        self.attention = PackedAttention(heads, hidden // heads, weights.device, use_flash)
        self.embeddings = DistilBertEmbeddings(weights)
        self.layers = [distilbert_layer(config, weights, f"transformer.layer.{i}.", self.attention, fused_norm)
                       for i in range(int(config["n_layers"]))]

    def __call__(self, ids: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        x = self.embeddings(ids, batch.positions)
        for layer in self.layers:
            x = layer(x, batch)
        return x
