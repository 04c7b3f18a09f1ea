"""The distillation pair: a frozen Hugging Face Llama teacher and the SwiftKV student built on its weights.

The student shares every teacher weight and adds the SwiftKV tensors (`SwiftKVParams`, the only trainable ones).
Layers [0, K) are identical in both, so the student starts from the teacher's residual stream entering layer K
(taken from the teacher pass, no gradient) and runs only layers [K, L) itself: queries through `q_proj_swiftkv`,
keys/values of each AcrossKV group from `norm_swiftkv(h_K)`, causal attention over whole sequences, then the
teacher's (frozen) output projection, MLP, final norm and head. The math is the one `arctic_gen.models.llama_swiftkv`
runs in vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from arctic_gen.models.llama_swiftkv_config import LlamaSwiftKVConfig


class SwiftKVParams(nn.Module):
    """The trainable SwiftKV tensors, keyed like Snowflake's checkpoints (`model.layers.{i}.self_attn.*_swiftkv`)."""

    def __init__(self, config: LlamaSwiftKVConfig, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.config = config
        self.norm_swiftkv = nn.Parameter(tensors["model.norm_swiftkv.weight"].clone())
        self.q_proj = nn.ModuleDict()
        self.k_proj = nn.ModuleDict()
        self.v_proj = nn.ModuleDict()
        for i in range(config.num_key_value_layers, config.num_hidden_layers):
            self.q_proj[str(i)] = _linear(tensors, f"model.layers.{i}.self_attn.q_proj_swiftkv")
            if (i - config.num_key_value_layers) % config.key_value_group_size == 0:
                self.k_proj[str(i)] = _linear(tensors, f"model.layers.{i}.self_attn.k_proj_swiftkv")
                self.v_proj[str(i)] = _linear(tensors, f"model.layers.{i}.self_attn.v_proj_swiftkv")

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors under their checkpoint names."""
        out = {"model.norm_swiftkv.weight": self.norm_swiftkv.detach()}
        for kind, table in (("q", self.q_proj), ("k", self.k_proj), ("v", self.v_proj)):
            for i, linear in table.items():
                out[f"model.layers.{i}.self_attn.{kind}_proj_swiftkv.weight"] = linear.weight.detach()
                if linear.bias is not None:
                    out[f"model.layers.{i}.self_attn.{kind}_proj_swiftkv.bias"] = linear.bias.detach()
        return out


def _linear(tensors: dict[str, torch.Tensor], name: str) -> nn.Linear:
    weight = tensors[f"{name}.weight"]
    bias = tensors.get(f"{name}.bias")
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype,
                       device=weight.device)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


@dataclass
class Outputs:
    logits: torch.Tensor
    """[batch, seq, vocab]"""
    hidden: dict[int, torch.Tensor]
    """Residual stream entering layer i (index as in HF's `hidden_states`), for the requested indices."""


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm (float32 statistics, like HF and vLLM)."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


class SwiftKVStudent(nn.Module):
    """Teacher (frozen HF LlamaForCausalLM) + SwiftKV params; `teacher_forward` and `student_forward`."""

    def __init__(self, teacher: nn.Module, config: LlamaSwiftKVConfig, params: SwiftKVParams) -> None:
        super().__init__()
        self.teacher = teacher
        self.config = config
        self.swiftkv = params
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    @torch.no_grad()
    def teacher_forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        out = self.teacher(input_ids=input_ids, output_hidden_states=True, use_cache=False)
        return out.logits, out.hidden_states

    def student_forward(self, input_ids: torch.Tensor, teacher_hidden: tuple[torch.Tensor, ...],
                        keep_hidden: tuple[int, ...] = ()) -> Outputs:
        cfg = self.config
        k_layers, eps = cfg.num_key_value_layers, cfg.rms_norm_eps
        model = self.teacher.model
        h = teacher_hidden[k_layers].detach()
        batch, seq, _ = h.shape
        positions = torch.arange(seq, device=h.device).unsqueeze(0).expand(batch, -1)
        cos, sin = model.rotary_emb(h, positions)
        kv_hidden = rms_norm(h, self.swiftkv.norm_swiftkv, eps)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        hidden: dict[int, torch.Tensor] = {}
        key = value = None
        for i in range(k_layers, cfg.num_hidden_layers):
            if i in keep_hidden:
                hidden[i] = h
            layer = model.layers[i]
            x = layer.input_layernorm(h)
            q = self.swiftkv.q_proj[str(i)](x).view(batch, seq, n_heads, head_dim).transpose(1, 2)
            if str(i) in self.swiftkv.k_proj:
                key = self.swiftkv.k_proj[str(i)](kv_hidden).view(batch, seq, n_kv, head_dim).transpose(1, 2)
                value = self.swiftkv.v_proj[str(i)](kv_hidden).view(batch, seq, n_kv, head_dim).transpose(1, 2)
                q, key = apply_rotary_pos_emb(q, key, cos, sin)
            else:
                q, _ = apply_rotary_pos_emb(q, q[:, :1], cos, sin)
            attn = F.scaled_dot_product_attention(q, key, value, is_causal=True, enable_gqa=n_heads != n_kv)
            h = h + layer.self_attn.o_proj(attn.transpose(1, 2).reshape(batch, seq, n_heads * head_dim))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        if cfg.num_hidden_layers in keep_hidden:
            hidden[cfg.num_hidden_layers] = h
        logits = self.teacher.lm_head(model.norm(h))
        return Outputs(logits=logits, hidden=hidden)
