"""ModernBERT (gte-modernbert, nomic-embed-text-v2-style encoders, modernbert-embed): pre-norm layers, rotary
positions, GLU feed-forward, optional biases, and alternating attention: every `global_attn_every_n_layers`-th layer
attends globally (rope theta `global_rope_theta`), the others within a sliding window of `local_attention` tokens
(|i - j| <= local_attention / 2, rope theta `local_rope_theta`).

embeddings (tok_embeddings, norm) → N × layer (attn_norm [identity in layer 0] → Wqkv → rotary → attention → Wo;
mlp_norm → Wi → act(input) * gate → Wo) → final_norm.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from arctic_embed.models.attention import AttentionBatch, PackedAttention
from arctic_embed.models.layers import LayerNorm, Linear, Rotary, hidden_activation
from arctic_embed.models.loading import Weights


def layer_types(config: dict) -> list[str]:
    """"full_attention" / "sliding_attention" per layer, from either config format (old keys or `layer_types`)."""
    if config.get("layer_types"):
        return [str(t) for t in config["layer_types"]]
    every = int(config.get("global_attn_every_n_layers", 3))
    return ["sliding_attention" if i % every else "full_attention" for i in range(int(config["num_hidden_layers"]))]


def rope_thetas(config: dict) -> dict[str, float]:
    params = config.get("rope_parameters") or {}
    global_theta = (params.get("full_attention") or {}).get("rope_theta", config.get("global_rope_theta", 160_000.0))
    local_theta = (params.get("sliding_attention") or {}).get("rope_theta", config.get("local_rope_theta", 10_000.0))
    return {"full_attention": float(global_theta), "sliding_attention": float(local_theta)}


class ModernBertAttention:
    def __init__(self, weights: Weights, prefix: str, attention: PackedAttention, window: int | None) -> None:
        self.qkv = Linear.load(weights, prefix + "Wqkv")
        self.out = Linear.load(weights, prefix + "Wo")
        self.attention = attention
        self.window = window

    def __call__(self, x: torch.Tensor, batch: AttentionBatch, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        a = self.attention
        q, k, v = self.qkv(x).view(-1, 3, a.num_heads, a.head_dim).unbind(1)
        qkv = torch.stack((Rotary.apply(q, cos, sin), Rotary.apply(k, cos, sin), v), dim=1)
        return self.out(a(qkv, batch, window=self.window))


class ModernBertMLP:
    def __init__(self, weights: Weights, prefix: str, act: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.wi = Linear.load(weights, prefix + "Wi")
        self.wo = Linear.load(weights, prefix + "Wo")
        self.act = act

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        inputs, gate = self.wi(x).chunk(2, dim=-1)
        return self.wo(self.act(inputs) * gate)


class ModernBertLayer:
    def __init__(self, config: dict, weights: Weights, index: int, kind: str, attention: PackedAttention) -> None:
        eps = float(config.get("norm_eps", 1e-5))
        prefix = f"layers.{index}."
        self.kind = kind
        self.attn_norm = LayerNorm(weights, prefix + "attn_norm", eps) if weights.has(prefix + "attn_norm.weight") \
            else None
        window = int(config.get("local_attention", 128)) // 2 if kind == "sliding_attention" else None
        self.attn = ModernBertAttention(weights, prefix + "attn.", attention, window)
        self.mlp_norm = LayerNorm(weights, prefix + "mlp_norm", eps)
        self.mlp = ModernBertMLP(weights, prefix + "mlp.",
                                 hidden_activation(str(config.get("hidden_activation", "gelu"))))

    def __call__(self, x: torch.Tensor, batch: AttentionBatch, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x) if self.attn_norm is not None else x, batch, cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class ModernBertModel:
    def __init__(self, config: dict, weights: Weights, fused_norm: bool = False, use_flash: bool = True) -> None:
        weights = weights.under("embeddings.tok_embeddings.weight")
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        eps = float(config.get("norm_eps", 1e-5))
        self.hidden_size = hidden
        self.attention = PackedAttention(heads, hidden // heads, weights.device, use_flash)
        self.word = weights.get("embeddings.tok_embeddings.weight")
        self.embed_norm = LayerNorm(weights, "embeddings.norm", eps)
        kinds = layer_types(config)
        self.layers = [ModernBertLayer(config, weights, i, kinds[i], self.attention) for i in range(len(kinds))]
        self.final_norm = LayerNorm(weights, "final_norm", eps)
        self.rotary = {kind: Rotary(hidden // heads, theta, weights.device)
                       for kind, theta in rope_thetas(config).items()}

    def __call__(self, ids: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        x = self.embed_norm(F.embedding(ids, self.word))
        rope = {kind: r.cos_sin(batch.positions, x.dtype) for kind, r in self.rotary.items()}
        for layer in self.layers:
            x = layer(x, batch, *rope[layer.kind])
        return self.final_norm(x)
