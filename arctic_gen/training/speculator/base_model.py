"""The frozen base model: its final hidden states (after the final norm, what vLLM hands a speculator) on the fly."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_base(model_dir: str, device: torch.device) -> nn.Module:
    """HF causal LM, frozen, eval mode; bf16 on GPU, float32 on CPU."""
    import transformers
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    major_minor = tuple(int(p) for p in transformers.__version__.split(".")[:2])
    key = "dtype" if major_minor >= (4, 56) else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(model_dir, **{key: dtype})
    model.requires_grad_(False)
    return model.to(device).eval()


def base_info(base: nn.Module) -> dict[str, Any]:
    config = base.config
    return {"hidden_size": int(config.hidden_size), "vocab_size": int(base.get_output_embeddings().weight.shape[0]),
            "architectures": list(getattr(config, "architectures", None) or [])}


@torch.no_grad()
def final_hidden_states(base: nn.Module, input_ids: Tensor) -> Tensor:
    """[B, L, H] last hidden states (after the final norm). Right padding needs no attention mask: causal
    attention keeps every real position independent of the padding after it."""
    return base.base_model(input_ids=input_ids, use_cache=False).last_hidden_state


@torch.no_grad()
def init_from_base(speculator: nn.Module, base: nn.Module) -> list[str]:
    """Start the speculator's heads from the base model's output head and its token embeddings from the base
    model's input embeddings (rescaled to the speculator's init scale) wherever the shapes match; returns the
    names initialized this way. Head i predicts a token a few places later, so the base head is a warm start."""
    done = []
    lm_head = base.get_output_embeddings().weight
    embeddings = base.get_input_embeddings().weight
    for name, param in speculator.named_parameters():
        if name.startswith("head.") and param.shape == lm_head.shape:
            param.copy_(lm_head.to(param.dtype))
            done.append(name)
        elif "emb" in name and param.dim() == 2 and param.shape == embeddings.shape:
            scaled = embeddings.float() * (param.float().std() / embeddings.float().std().clamp_min(1e-12))
            param.copy_(scaled.to(param.dtype))
            done.append(name)
    return done
