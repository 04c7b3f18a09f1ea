"""A SwiftKV checkpoint in plain torch (the distillation's student): load it, decode greedily (tests, checks)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def load_student(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """`SwiftKVStudent` of a saved `llama_swiftkv` directory (teacher: its Llama weights; params: its SwiftKV ones)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    from arctic_gen.models.llama_swiftkv_config import register_swiftkv
    from arctic_gen.training.swiftkv.model import SwiftKVParams, SwiftKVStudent

    register_swiftkv()
    config = AutoConfig.from_pretrained(model_dir)
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    values = {k: v for k, v in config.to_dict().items()
              if k not in ("model_type", "architectures", "num_key_value_layers", "key_value_group_size", "swiftkv")}
    teacher = LlamaForCausalLM(LlamaConfig(**values)).to(dtype)
    missing, _ = teacher.load_state_dict({k: v for k, v in tensors.items() if "swiftkv" not in k}, strict=False)
    if [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]:
        raise ValueError(f"{model_dir}: missing Llama tensors {missing[:5]}")
    if config.tie_word_embeddings:
        teacher.tie_weights()
    params = SwiftKVParams(config, {k: v.to(dtype) for k, v in tensors.items() if "swiftkv" in k})
    return SwiftKVStudent(teacher, config, params).eval()


@torch.no_grad()
def greedy(model_dir: str | os.PathLike, prompt_ids: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Greedy continuation of each prompt (full recomputation per token: meant for tiny models)."""
    student = load_student(model_dir)
    out = []
    for ids in prompt_ids:
        seq = list(ids)
        for _ in range(max_tokens):
            x = torch.tensor([seq])
            _, hidden = student.teacher_forward(x)
            seq.append(int(student.student_forward(x, hidden).logits[0, -1].argmax()))
        out.append(seq[len(ids):])
    return out
