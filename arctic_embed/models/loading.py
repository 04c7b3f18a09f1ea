"""One weight-loading path for every native model file: checkpoint → named tensors on the device, names checked.

Checkpoints come as `model.safetensors`, sharded safetensors (`model.safetensors.index.json`) or `pytorch_model.bin`.
Names may carry a task prefix (`bert.`, `roberta.`, `model.`...): `Weights.under(anchor)` finds the prefix from a name
every checkpoint of the family has, so model files use the base model's names only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class MissingWeight(KeyError):
    """The checkpoint lacks a tensor the model file needs (wrong architecture, or a truncated download)."""


def read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file() or index.is_file():
        from safetensors.torch import load_file

        if single.is_file():
            return load_file(str(single))
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(model_dir / shard)))
        return state
    binary = model_dir / "pytorch_model.bin"
    if binary.is_file():
        return torch.load(str(binary), map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{model_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


class Weights:
    """Tensors of one checkpoint, handed out by name, cast to the serving device and dtype."""

    def __init__(self, state: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype,
                 prefix: str = "") -> None:
        self._state = state
        self.device = device
        self.dtype = dtype
        self._prefix = prefix

    @classmethod
    def from_dir(cls, model_dir: Path, device: torch.device, dtype: torch.dtype) -> Weights:
        return cls(read_state_dict(model_dir), device, dtype)

    def under(self, anchor: str) -> Weights:
        """The same checkpoint with the prefix before `anchor` (e.g. `bert.` before `embeddings.word_...`) stripped."""
        for key in self._state:
            if key.endswith(anchor) and (key == anchor or key[-len(anchor) - 1] == "."):
                return Weights(self._state, self.device, self.dtype, key[: -len(anchor)])
        raise MissingWeight(f"no tensor named *{anchor} in the checkpoint: not the architecture its config says")

    def has(self, name: str) -> bool:
        return self._prefix + name in self._state

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        key = self._prefix + name
        if key not in self._state:
            raise MissingWeight(f"checkpoint tensor {key!r} is missing")
        return self._state[key].to(device=self.device, dtype=dtype or self.dtype).contiguous()

    def optional(self, name: str) -> torch.Tensor | None:
        return self.get(name) if self.has(name) else None

    def cat(self, names: list[str]) -> torch.Tensor:
        return torch.cat([self.get(n) for n in names]).contiguous()
