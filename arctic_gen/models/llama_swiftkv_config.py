"""The `llama_swiftkv` configuration (transformers) and its registration with transformers and vLLM.

SwiftKV (arXiv 2410.03960) keeps Llama's layers and adds, for every layer `i >= num_key_value_layers` (K):
`q_proj_swiftkv` (the layer's query projection in SwiftKV mode) and, on the first layer of each group of
`key_value_group_size` layers, `k_proj_swiftkv`/`v_proj_swiftkv`, which project the keys and values of the whole group
from `norm_swiftkv(h_K)`, the normalized residual stream entering layer K. Those are Snowflake's published weight
names (e.g. Snowflake/Llama-3.1-SwiftKV-8B-Instruct); the checkpoint also keeps the original `q/k/v_proj` of the later
layers, which SwiftKV inference does not use.

This module imports only transformers at import time (the training pipeline uses it without vLLM);
`register_swiftkv()` is called from the vLLM plugin in every vLLM process and is idempotent.
"""

from __future__ import annotations

import threading

from transformers import AutoConfig, LlamaConfig

MODEL_TYPE = "llama_swiftkv"
ARCHITECTURE = "LlamaSwiftKVForCausalLM"
VLLM_MODEL_CLASS = "arctic_gen.models.llama_swiftkv:LlamaSwiftKVForCausalLM"


class SwiftKVConfigError(ValueError):
    """A `llama_swiftkv` config whose SwiftKV fields do not fit the model."""


class LlamaSwiftKVConfig(LlamaConfig):
    """LlamaConfig plus `num_key_value_layers` (K) and `key_value_group_size` (AcrossKV)."""

    model_type = MODEL_TYPE

    def __init__(self, num_key_value_layers: int | None = None, key_value_group_size: int | None = None,
                 swiftkv: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_key_value_layers = int(num_key_value_layers or self.num_hidden_layers)
        """K: layers [0, K) run for every token; prompt tokens skip layers [K, L) (K = L: plain Llama)."""
        self.key_value_group_size = int(key_value_group_size or 1)
        """Layers >= K share one K/V projection (and one KV cache) per group of this many layers."""
        self.swiftkv = bool(swiftkv)
        """Snowflake's training switch (teacher pass vs student pass); inference always runs SwiftKV."""
        validate_swiftkv(self.num_hidden_layers, self.num_key_value_layers, self.key_value_group_size)


def validate_swiftkv(num_layers: int, num_key_value_layers: int, group_size: int) -> None:
    if not 1 <= num_key_value_layers <= num_layers:
        raise SwiftKVConfigError(
            f"num_key_value_layers must be between 1 and num_hidden_layers ({num_layers}), got {num_key_value_layers}"
        )
    if group_size < 1 or (num_layers - num_key_value_layers) % group_size:
        raise SwiftKVConfigError(
            f"key_value_group_size ({group_size}) must divide num_hidden_layers - num_key_value_layers "
            f"({num_layers - num_key_value_layers}); pick a group size that divides it, or 1"
        )


def swiftkv_config_from_llama(llama: LlamaConfig, num_key_value_layers: int,
                              key_value_group_size: int = 1) -> LlamaSwiftKVConfig:
    """The SwiftKV config of a plain Llama config (everything else unchanged)."""
    values = llama.to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        values.pop(key, None)
    config = LlamaSwiftKVConfig(num_key_value_layers=num_key_value_layers,
                                key_value_group_size=key_value_group_size, **values)
    config.architectures = [ARCHITECTURE]
    return config


_lock = threading.Lock()
_registered = False


def register_swiftkv() -> None:
    """Register the config with transformers' AutoConfig and the model with vLLM's ModelRegistry (once)."""
    global _registered
    with _lock:
        if _registered:
            return
        AutoConfig.register(MODEL_TYPE, LlamaSwiftKVConfig, exist_ok=True)
        from vllm import ModelRegistry

        if ARCHITECTURE not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(ARCHITECTURE, VLLM_MODEL_CLASS)
        _registered = True
