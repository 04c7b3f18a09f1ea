"""SwiftKV checkpoints: the student's new weights initialized from the teacher, and the HF directory layout.

Initialization (the student starts as the teacher): for every layer i >= K, `q_proj_swiftkv` = that layer's
`q_proj`; for the first layer of each AcrossKV group, `k_proj_swiftkv`/`v_proj_swiftkv` = the mean of the group's
`k_proj`/`v_proj`; `norm_swiftkv` = layer K's `input_layernorm` (so with groups of one, layer K's keys and values are
exactly the teacher's at the start). Names follow Snowflake's published checkpoints.

A saved checkpoint is a Hugging Face directory: `config.json` (`model_type: llama_swiftkv`, architectures
`LlamaSwiftKVForCausalLM`), `model.safetensors` with every teacher tensor plus the SwiftKV tensors, and the teacher's
tokenizer/generation files. vLLM with the arctic_gen plugin loads it directly.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from arctic_gen.models.llama_swiftkv_config import LlamaSwiftKVConfig

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "chat_template.jinja", "generation_config.json")


def swiftkv_names(config: LlamaSwiftKVConfig) -> list[str]:
    """Names of the tensors SwiftKV adds to a Llama checkpoint."""
    names = ["model.norm_swiftkv.weight"]
    bias = bool(getattr(config, "attention_bias", False))
    for i in range(config.num_key_value_layers, config.num_hidden_layers):
        projections = ["q_proj_swiftkv"]
        if (i - config.num_key_value_layers) % config.key_value_group_size == 0:
            projections += ["k_proj_swiftkv", "v_proj_swiftkv"]
        for p in projections:
            names.append(f"model.layers.{i}.self_attn.{p}.weight")
            if bias:
                names.append(f"model.layers.{i}.self_attn.{p}.bias")
    return names


def init_swiftkv_tensors(teacher: dict[str, torch.Tensor], config: LlamaSwiftKVConfig) -> dict[str, torch.Tensor]:
    """The SwiftKV tensors initialized from the teacher's state dict (HF names)."""
    k, layers, group = config.num_key_value_layers, config.num_hidden_layers, config.key_value_group_size
    out: dict[str, torch.Tensor] = {}
    if k == layers:
        return out
    out["model.norm_swiftkv.weight"] = teacher[f"model.layers.{k}.input_layernorm.weight"].clone()
    suffixes = ["weight"] + (["bias"] if getattr(config, "attention_bias", False) else [])
    for i in range(k, layers):
        for s in suffixes:
            q_proj = teacher[f"model.layers.{i}.self_attn.q_proj.{s}"]
            out[f"model.layers.{i}.self_attn.q_proj_swiftkv.{s}"] = q_proj.clone()
        if (i - k) % group:
            continue
        for p in ("k_proj", "v_proj"):
            for s in suffixes:
                members = [teacher[f"model.layers.{j}.self_attn.{p}.{s}"].float() for j in range(i, i + group)]
                out[f"model.layers.{i}.self_attn.{p}_swiftkv.{s}"] = (
                    (sum(members) / group).to(teacher[f"model.layers.{i}.self_attn.{p}.{s}"].dtype))
    return out


def save_checkpoint(out_dir: str | os.PathLike, config: LlamaSwiftKVConfig, tensors: dict[str, torch.Tensor],
                    tokenizer_dir: str | os.PathLike | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write an HF directory atomically (temporary sibling + rename); returns its path."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        cast = {name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).detach().contiguous().cpu()
                for name, t in tensors.items()}
        if config.tie_word_embeddings:
            cast.pop("lm_head.weight", None)
        save_file(cast, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        values = config.to_dict()
        if dtype is not None:
            values["dtype"] = str(dtype).removeprefix("torch.")
            values.pop("torch_dtype", None)
        (tmp / "config.json").write_text(json.dumps(values, indent=2, sort_keys=True, default=str) + "\n")
        if tokenizer_dir is not None:
            for name in _TOKENIZER_FILES:
                src = Path(tokenizer_dir) / name
                if src.exists():
                    shutil.copy2(src, tmp / name)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_swiftkv_checkpoint(llama_dir: str | os.PathLike, out_dir: str | os.PathLike, num_key_value_layers: int,
                             key_value_group_size: int = 1) -> Path:
    """A SwiftKV checkpoint of a plain Llama directory, initialized from the teacher (no training)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from arctic_gen.models.llama_swiftkv_config import swiftkv_config_from_llama

    llama_dir = Path(llama_dir)
    teacher: dict[str, torch.Tensor] = {}
    for shard in sorted(llama_dir.glob("*.safetensors")):
        teacher.update(load_file(str(shard)))
    config = swiftkv_config_from_llama(AutoConfig.from_pretrained(llama_dir), num_key_value_layers,
                                       key_value_group_size)
    tensors = {**teacher, **init_swiftkv_tensors(teacher, config)}
    return save_checkpoint(out_dir, config, tensors, tokenizer_dir=llama_dir)
