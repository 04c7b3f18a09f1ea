"""Native encoder model files, one per architecture, built like vLLM's (embeddings → attention → layer → encoder).

Every model maps the token ids of a packed batch plus its `AttentionBatch` to the last hidden state
[tokens, hidden]; pooling and heads (`arctic_embed.models.pooling`) are shared. Architectures not listed here are
served by the vLLM engine (`arctic_embed.engines.create_engine` routes them there with a log line).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch

from arctic_embed.models.attention import AttentionBatch
from arctic_embed.models.loading import Weights


class EncoderModel(Protocol):
    hidden_size: int

    def __call__(self, ids: torch.Tensor, batch: AttentionBatch) -> torch.Tensor: ...


def _registry() -> dict[str, type]:
    from arctic_embed.models.bert import BertModel
    from arctic_embed.models.distilbert import DistilBertModel
    from arctic_embed.models.modernbert import ModernBertModel
    from arctic_embed.models.mpnet import MPNetModel
    from arctic_embed.models.roberta import RobertaModel

    return {"bert": BertModel, "roberta": RobertaModel, "xlm-roberta": RobertaModel, "camembert": RobertaModel,
            "distilbert": DistilBertModel, "mpnet": MPNetModel, "modernbert": ModernBertModel}


NATIVE_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "mpnet", "modernbert")


def is_native(model_type: str) -> bool:
    return model_type in NATIVE_MODEL_TYPES


def build_model(model_dir: Path, model_type: str, device: torch.device, dtype: torch.dtype,
                fused_norm: bool = False, use_flash: bool = True) -> EncoderModel:
    """Read config.json and the checkpoint of `model_dir` into the model file of `model_type`."""
    if not is_native(model_type):
        raise ValueError(f"no native model file for model_type {model_type!r} (native: {NATIVE_MODEL_TYPES})")
    config = json.loads((model_dir / "config.json").read_text())
    weights = Weights.from_dir(model_dir, device, dtype)
    return _registry()[model_type](config, weights, fused_norm=fused_norm, use_flash=use_flash)


__all__ = ["NATIVE_MODEL_TYPES", "AttentionBatch", "EncoderModel", "build_model", "is_native"]
