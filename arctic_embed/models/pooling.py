"""Pooling and the sentence-transformers heads that follow it (Dense with its configured activation).

Normalization is not here: it is a per-request option applied by `arctic_embed.encoding` for every engine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from arctic_embed.model_files import DenseLayer
from arctic_embed.models.attention import to_device
from arctic_embed.models.loading import Weights

ACTIVATIONS = {
    "Identity": lambda x: x,
    "Tanh": torch.tanh,
    "ReLU": F.relu,
    "GELU": F.gelu,
    "Sigmoid": torch.sigmoid,
    "SiLU": F.silu,
    "LeakyReLU": F.leaky_relu,
    "Softplus": F.softplus,
}


class UnsupportedActivation(ValueError):
    """A Dense module names an activation this engine does not implement."""


def pool_packed(x: torch.Tensor, lengths: np.ndarray, mode: str) -> torch.Tensor:
    """Pool [tokens, hidden] rows of back-to-back sequences into [n, hidden] float32 (no host syncs)."""
    device = x.device
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if mode == "cls":
        return x[to_device(offsets[:-1], device)].float()
    if mode == "lasttoken":
        return x[to_device(offsets[1:] - 1, device)].float()
    lengths_t = to_device(lengths.astype(np.int64), device)
    if mode == "max":
        return torch.segment_reduce(x.float(), "max", lengths=lengths_t)
    segments = to_device(np.repeat(np.arange(lengths.size), lengths), device)
    sums = torch.zeros(lengths.size, x.shape[1], device=device, dtype=torch.float32)
    if mode == "weightedmean":  # token i of a sequence weighs i + 1
        weights = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], lengths) + 1.0
        sums.index_add_(0, segments, x.float() * to_device(weights.astype(np.float32), device)[:, None])
        return sums / to_device((lengths * (lengths + 1) / 2).astype(np.float32), device)[:, None]
    sums.index_add_(0, segments, x.float())
    denom = lengths_t.to(torch.float32).unsqueeze(1)
    return sums / (denom.sqrt() if mode == "mean_sqrt_len" else denom)


def pool_padded(x: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pooling over [batch, width, hidden] with a mask of real tokens (left-aligned sequences)."""
    counts = mask.sum(dim=1)
    if mode == "cls":
        return x[:, 0]
    if mode == "lasttoken":
        return x[torch.arange(x.shape[0], device=x.device), counts - 1]
    if mode == "max":
        return x.masked_fill(~mask[:, :, None], float("-inf")).amax(dim=1)
    if mode == "weightedmean":
        weights = mask * torch.arange(1, mask.shape[1] + 1, device=x.device)[None, :]
        return (x * weights[:, :, None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)
    sums = (x * mask[:, :, None]).sum(dim=1)
    denom = counts.to(torch.float32).unsqueeze(1)
    return sums / (denom.sqrt() if mode == "mean_sqrt_len" else denom)


class DenseHead:
    """sentence-transformers `Dense` modules in order: linear, then the activation its config names (float32)."""

    def __init__(self, layers: tuple[DenseLayer, ...], device: torch.device) -> None:
        self._layers = []
        for layer in layers:
            name = layer.activation.rsplit(".", 1)[-1]
            if name not in ACTIVATIONS:
                raise UnsupportedActivation(f"{layer.path}: activation {layer.activation!r} is not supported "
                                            f"(one of {sorted(ACTIVATIONS)})")
            weights = Weights.from_dir(layer.path, device, torch.float32)
            residual = None
            if layer.residual:  # identity, or a bias-free projection when the sizes differ
                residual = weights.get("residual.weight") if layer.in_features != layer.out_features else "identity"
            self._layers.append((weights.get("linear.weight"),
                                 weights.get("linear.bias") if layer.bias else None, ACTIVATIONS[name], residual))

    def __call__(self, pooled: torch.Tensor) -> torch.Tensor:
        for weight, bias, activation, residual in self._layers:
            out = activation(F.linear(pooled, weight, bias))
            if residual is not None:
                out = out + (pooled if isinstance(residual, str) else F.linear(pooled, residual))
            pooled = out
        return pooled
