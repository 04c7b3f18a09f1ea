"""The llama_swiftkv config, its registration, and the student's initialization from the teacher (no vLLM engine)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from arctic_gen.models.llama_swiftkv_config import (
    LlamaSwiftKVConfig,
    SwiftKVConfigError,
    swiftkv_config_from_llama,
)
from arctic_gen.training.swiftkv.checkpoint import init_swiftkv_tensors, swiftkv_names


def _llama(layers: int = 6) -> LlamaConfig:
    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=64)


def test_defaults_and_validation():
    assert LlamaSwiftKVConfig(num_hidden_layers=4).num_key_value_layers == 4  # K defaults to L: plain Llama
    config = swiftkv_config_from_llama(_llama(), 2, 2)
    assert (config.model_type, config.num_key_value_layers, config.key_value_group_size) == ("llama_swiftkv", 2, 2)
    assert config.architectures == ["LlamaSwiftKVForCausalLM"] and config.hidden_size == 32
    with pytest.raises(SwiftKVConfigError, match="between 1 and"):
        swiftkv_config_from_llama(_llama(), 7)
    with pytest.raises(SwiftKVConfigError, match="must divide"):
        swiftkv_config_from_llama(_llama(), 3, 2)


def test_registration_is_idempotent():
    from transformers import AutoConfig

    from arctic_gen.models.llama_swiftkv_config import register_swiftkv

    register_swiftkv()
    register_swiftkv()
    assert AutoConfig.for_model("llama_swiftkv").__class__ is LlamaSwiftKVConfig
    from vllm import ModelRegistry

    assert "LlamaSwiftKVForCausalLM" in ModelRegistry.get_supported_archs()


def test_init_copies_the_teacher_with_snowflake_names():
    config = swiftkv_config_from_llama(_llama(), 2, 2)
    torch.manual_seed(0)
    teacher = {}
    for i in range(6):
        teacher[f"model.layers.{i}.input_layernorm.weight"] = torch.randn(32)
        teacher[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(32, 32)
        teacher[f"model.layers.{i}.self_attn.k_proj.weight"] = torch.randn(16, 32)
        teacher[f"model.layers.{i}.self_attn.v_proj.weight"] = torch.randn(16, 32)
    out = init_swiftkv_tensors(teacher, config)
    assert sorted(out) == sorted(swiftkv_names(config))
    assert "model.layers.3.self_attn.k_proj_swiftkv.weight" not in out  # second layer of the group 2-3
    assert torch.equal(out["model.norm_swiftkv.weight"], teacher["model.layers.2.input_layernorm.weight"])
    assert torch.equal(out["model.layers.5.self_attn.q_proj_swiftkv.weight"],
                       teacher["model.layers.5.self_attn.q_proj.weight"])
    mean = (teacher["model.layers.4.self_attn.k_proj.weight"] + teacher["model.layers.5.self_attn.k_proj.weight"]) / 2
    torch.testing.assert_close(out["model.layers.4.self_attn.k_proj_swiftkv.weight"], mean)
    assert init_swiftkv_tensors(teacher, swiftkv_config_from_llama(_llama(), 6)) == {}
