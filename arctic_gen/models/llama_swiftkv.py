"""Inference-only SwiftKV Llama (`model_type: llama_swiftkv`) for vLLM, laid out like vLLM's llama.py.

SwiftKV (arXiv 2410.03960): layers [0, K) are plain Llama layers and run for every token. At layer K the residual
stream is normalized once (`norm_swiftkv`) and, for every token, the keys and values of all layers >= K are
projected from it (one K/V projection per group of `key_value_group_size` layers; the other layers of a group share
the group's KV cache through vLLM's KV sharing). Layers >= K then run their query projection (`q_proj_swiftkv`),
attention, output projection and MLP only for the tokens whose output is needed: the last
`1 + num_speculative_tokens` tokens of every request in the batch (the last token of a prefill chunk, every decode
token, every token a speculative step verifies). The other prompt tokens only write their KV cache there.

Two forward paths with the same weights and the same result for the tokens that need logits:
- `LlamaSwiftKVModel.forward` (torch.compile'd like LlamaModel, CUDA-graph friendly): every token runs every layer
  in SwiftKV mode. Used whenever every token needs its output anyway (decode-only batches, CUDA graph capture,
  dummy/profile runs without attention metadata), so decode steps cost what plain Llama's cost.
- `LlamaSwiftKVModel.forward_skip` (eager): used when a batch holds prefill chunks longer than
  `1 + num_speculative_tokens`; layers >= K see only the rows that need logits. Attention in those layers still runs
  over the whole batch (queries of the skipped rows are zeros and their outputs dropped) so that any attention
  backend's metadata is reused as is (chunked prefill, prefix caching, cascade attention); the skipped rows cost
  their K/V projection and attention, not their Q/O projections or MLP.

Which rows need logits comes from the attention metadata of the first layer >= K (`query_start_loc`,
`max_query_len`: fields of vLLM's CPU_ATTN and FLASH_ATTN metadata in 0.26 and 0.32). The hidden states returned
for skipped rows are not the model's output for them: prompt logprobs and speculators that read every token's hidden
state (EAGLE/MTP) need the full path; with an EAGLE/MTP speculative config the model never skips.

Weight names: Snowflake's (`model.norm_swiftkv`, `model.layers.{i}.self_attn.{q,k,v}_proj_swiftkv`); the original
q/k/v projections of layers >= K in such checkpoints are ignored. Tensor parallelism: the K/V projection is split
by heads, so `num_key_value_heads` must be divisible by the TP size; pipeline parallelism is not supported.
vLLM 0.26.0 and 0.32.0 have the same llama building blocks used here; no version-specific code.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ColumnParallelLinear, MergedColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaMLP
from vllm.sequence import IntermediateTensors

from arctic_gen.models.llama_swiftkv_config import validate_swiftkv

# speculative methods whose drafter reads the target's hidden state at every position
_EVERY_POSITION_DRAFTERS = ("eagle", "eagle3", "mtp", "deepseek_mtp")


class SwiftKVAttention(nn.Module):
    """Attention of a layer >= K: queries from the layer's input, keys/values from `norm_swiftkv(h_K)`."""

    def __init__(self, *, vllm_config: VllmConfig, layer_idx: int, kv_leader_idx: int, prefix: str,
                 layers_prefix: str) -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        quant_config = vllm_config.quant_config
        tp_size = get_tensor_model_parallel_world_size()
        self.total_num_heads = config.num_attention_heads
        self.total_num_kv_heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
        if self.total_num_heads % tp_size or self.total_num_kv_heads % tp_size:
            raise ValueError(f"llama_swiftkv needs attention heads ({self.total_num_heads}) and KV heads "
                             f"({self.total_num_kv_heads}) divisible by the tensor parallel size ({tp_size})")
        self.num_heads = self.total_num_heads // tp_size
        self.num_kv_heads = self.total_num_kv_heads // tp_size
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.total_num_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        bias = getattr(config, "attention_bias", False) or getattr(config, "bias", False)

        self.q_proj_swiftkv = ColumnParallelLinear(config.hidden_size, self.total_num_heads * self.head_dim,
                                                   bias=bias, quant_config=quant_config,
                                                   prefix=f"{prefix}.q_proj_swiftkv")
        self.is_kv_leader = layer_idx == kv_leader_idx
        self.kv_proj_swiftkv: MergedColumnParallelLinear | None = None
        if self.is_kv_leader:
            self.kv_proj_swiftkv = MergedColumnParallelLinear(
                config.hidden_size, [self.total_num_kv_heads * self.head_dim] * 2, bias=bias,
                quant_config=quant_config, prefix=f"{prefix}.kv_proj_swiftkv")
        self.o_proj = RowParallelLinear(self.total_num_heads * self.head_dim, config.hidden_size, bias=bias,
                                        quant_config=quant_config, prefix=f"{prefix}.o_proj")
        self.rotary_emb = get_rope(self.head_dim, max_position=getattr(config, "max_position_embeddings", 8192),
                                   rope_parameters=getattr(config, "rope_parameters", None), is_neox_style=True)
        sharing = None if self.is_kv_leader else f"{layers_prefix}.{kv_leader_idx}.self_attn.attn"
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim**-0.5, num_kv_heads=self.num_kv_heads,
                              cache_config=vllm_config.cache_config, quant_config=quant_config,
                              kv_sharing_target_layer_name=sharing, prefix=f"{prefix}.attn")

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, kv_hidden: torch.Tensor,
                shared_kv: tuple[torch.Tensor, torch.Tensor] | None, rows: torch.Tensor | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """`hidden_states`: the rows that run this layer (all tokens when `rows` is None); `kv_hidden`, `positions`:
        every token. Returns the attention output of the rows and the (roped) K/V of every token."""
        q, _ = self.q_proj_swiftkv(hidden_states)
        if rows is not None:
            q = q.new_zeros((positions.shape[0], self.q_size)).index_copy_(0, rows, q)
        if self.kv_proj_swiftkv is not None:
            kv, _ = self.kv_proj_swiftkv(kv_hidden)
            k, v = kv.split([self.kv_size, self.kv_size], dim=-1)
            q, k = self.rotary_emb(positions, q, k)
        else:
            assert shared_kv is not None, "a KV-sharing layer runs after its group's first layer"
            k, v = shared_kv
            q, _ = self.rotary_emb(positions, q, None)
        out = self.attn(q, k, v)
        if rows is not None:
            out = out.index_select(0, rows)
        out, _ = self.o_proj(out)
        return out, (k, v)


class SwiftKVDecoderLayer(nn.Module):
    """A layer >= K: SwiftKV attention + Llama's MLP."""

    def __init__(self, *, vllm_config: VllmConfig, layer_idx: int, kv_leader_idx: int, prefix: str,
                 layers_prefix: str) -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.self_attn = SwiftKVAttention(vllm_config=vllm_config, layer_idx=layer_idx,
                                          kv_leader_idx=kv_leader_idx, prefix=f"{prefix}.self_attn",
                                          layers_prefix=layers_prefix)
        self.mlp = LlamaMLP(hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                            hidden_act=config.hidden_act, quant_config=vllm_config.quant_config,
                            bias=getattr(config, "mlp_bias", False), prefix=f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None,
                kv_hidden: torch.Tensor, shared_kv: tuple[torch.Tensor, torch.Tensor] | None,
                rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states, kv = self.self_attn(positions, hidden_states, kv_hidden, shared_kv, rows)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual, kv


@support_torch_compile(
    dynamic_arg_dims={
        "input_ids": {0: "b"},
        "positions": {0: "b"},
        "intermediate_tensors": {0: "b"},
        "inputs_embeds": {0: "b"},
    },
)
class LlamaSwiftKVModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        if get_pp_group().world_size > 1:
            raise ValueError("llama_swiftkv does not support pipeline parallelism")
        self.config = config
        self.num_layers = config.num_hidden_layers
        self.num_kv_layers = getattr(config, "num_key_value_layers", None) or self.num_layers
        self.group_size = getattr(config, "key_value_group_size", None) or 1
        validate_swiftkv(self.num_layers, self.num_kv_layers, self.group_size)

        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   quant_config=vllm_config.quant_config)
        layers_prefix = f"{prefix}.layers"
        layers: list[nn.Module] = []
        for i in range(self.num_layers):
            if i < self.num_kv_layers:
                layers.append(LlamaDecoderLayer(vllm_config=vllm_config, prefix=f"{layers_prefix}.{i}"))
            else:
                leader = i - (i - self.num_kv_layers) % self.group_size
                layers.append(SwiftKVDecoderLayer(vllm_config=vllm_config, layer_idx=i, kv_leader_idx=leader,
                                                  prefix=f"{layers_prefix}.{i}", layers_prefix=layers_prefix))
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.norm_swiftkv = (RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
                             if self.num_kv_layers < self.num_layers else None)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def _first_layers(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                      inputs_embeds: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        residual = None
        for layer in self.layers[: self.num_kv_layers]:
            hidden_states, residual = layer(positions, hidden_states, residual)
        return hidden_states, residual

    def _later_layers(self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor,
                      rows: torch.Tensor | None) -> torch.Tensor:
        """Layers >= K and the final norm; `rows` None: every token."""
        assert self.norm_swiftkv is not None
        kv_hidden, stream = self.norm_swiftkv(hidden_states, residual)
        hidden_states = stream if rows is None else stream.index_select(0, rows)
        residual = None
        shared_kv = None
        for layer in self.layers[self.num_kv_layers:]:
            hidden_states, residual, shared_kv = layer(positions, hidden_states, residual, kv_hidden, shared_kv,
                                                       rows)
        hidden_states, _ = self.norm(hidden_states, residual)
        if rows is None:
            return hidden_states
        # rows that skipped layers >= K return their layer-K stream (not an output: nothing reads it)
        return stream.index_copy_(0, rows, hidden_states)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Every token through every layer (the compiled, CUDA-graph path)."""
        hidden_states, residual = self._first_layers(input_ids, positions, inputs_embeds)
        if self.num_kv_layers == self.num_layers:
            hidden_states, _ = self.norm(hidden_states, residual)
            return hidden_states
        return self._later_layers(positions, hidden_states, residual, None)

    def forward_skip(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                     inputs_embeds: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        """Only `rows` run layers >= K (eager)."""
        hidden_states, residual = self._first_layers(input_ids, positions, inputs_embeds)
        return self._later_layers(positions, hidden_states, residual, rows)


class LlamaSwiftKVForCausalLM(nn.Module):
    # checkpoint name fragment -> (parameter name fragment, shard id)
    stacked_params_mapping = (
        (".qkv_proj", ".q_proj", "q"),
        (".qkv_proj", ".k_proj", "k"),
        (".qkv_proj", ".v_proj", "v"),
        (".kv_proj_swiftkv", ".k_proj_swiftkv", 0),
        (".kv_proj_swiftkv", ".v_proj_swiftkv", 1),
        (".gate_up_proj", ".gate_proj", 0),
        (".gate_up_proj", ".up_proj", 1),
    )

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.model = LlamaSwiftKVModel(vllm_config=vllm_config, prefix=_join(prefix, "model"))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, quant_config=vllm_config.quant_config,
                                      prefix=_join(prefix, "lm_head"))
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size, scale=getattr(config, "logit_scale", 1.0))

        spec = vllm_config.speculative_config
        spec_tokens = spec.num_speculative_tokens if spec is not None else 0
        self.rows_per_request = 1 + (spec_tokens or 0)
        """The last this-many tokens of every request run every layer."""
        method = spec.method if spec is not None else None
        self.skip_enabled = self.model.num_kv_layers < self.model.num_layers and method not in _EVERY_POSITION_DRAFTERS
        self._metadata_layer = f"{_join(prefix, 'model')}.layers.{self.model.num_kv_layers}.self_attn.attn"

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        rows = self.rows_needing_output(positions.device)
        if rows is None:
            return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)
        return self.model.forward_skip(input_ids, positions, inputs_embeds, rows)

    def rows_needing_output(self, device: torch.device) -> torch.Tensor | None:
        """Row indices of the tokens that must run layers >= K, or None when that is every token (or unknown)."""
        if not self.skip_enabled or not is_forward_context_available():
            return None
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            return None
        metadata = get_forward_context().attn_metadata
        if isinstance(metadata, list):  # micro-batches / speculative decoding: [0] is the target model's
            metadata = metadata[0] if metadata else None
        if not metadata:
            return None
        layer_metadata = metadata.get(self._metadata_layer)
        if layer_metadata is None or layer_metadata.max_query_len <= self.rows_per_request:
            return None
        # `rows_per_request` rows per request, computed on the device without a host sync: the last tokens of each
        # query; a query shorter than that (or an empty padding request) repeats one of its neighbours' rows, which
        # computes a row twice with identical results.
        starts_ends = layer_metadata.query_start_loc.to(device=device, dtype=torch.int64)
        starts, ends = starts_ends[:-1, None], starts_ends[1:, None]
        offsets = torch.arange(-self.rows_per_request, 0, device=device, dtype=torch.int64)[None, :]
        rows = torch.minimum(torch.maximum(ends + offsets, starts), (ends - 1).clamp_min(0))
        return rows.flatten()

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        num_kv_layers = self.model.num_kv_layers
        for name, weight in weights:
            if "rotary_emb.inv_freq" in name or "rotary_emb.cos_cached" in name or "rotary_emb.sin_cached" in name:
                continue
            if self.config.tie_word_embeddings and name.startswith("lm_head."):
                continue
            layer = _layer_index(name)
            if layer is not None and layer >= num_kv_layers and _is_plain_qkv(name):
                continue  # the original q/k/v projections of layers >= K: unused by SwiftKV inference
            for param_fragment, weight_fragment, shard in self.stacked_params_mapping:
                if weight_fragment not in name or (weight_fragment == ".q_proj" and "_swiftkv" in name):
                    continue
                if weight_fragment in (".k_proj", ".v_proj") and "_swiftkv" in name:
                    continue
                target = name.replace(weight_fragment, param_fragment)
                if target not in params:
                    continue
                param = params[target]
                param.weight_loader(param, weight, shard)
                loaded.add(target)
                break
            else:
                if name not in params:
                    continue  # e.g. original k/v of a non-leader layer of an AcrossKV group
                param = params[name]
                getattr(param, "weight_loader", default_weight_loader)(param, weight)
                loaded.add(name)
        if self.config.tie_word_embeddings:
            loaded.add("lm_head.weight")
        return loaded


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def _is_plain_qkv(name: str) -> bool:
    return any(f".self_attn.{p}." in name for p in ("q_proj", "k_proj", "v_proj"))
