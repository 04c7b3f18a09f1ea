"""The native encoder engine: BERT-family models (BERT, RoBERTa, XLM-R) in plain torch, packed sequences.

Every token-wise op (embeddings, QKV/output projections, FFN, LayerNorm) runs on the packed [tokens, hidden]
matrix, so padding costs nothing there. Attention runs per length bucket: sequences sorted by length are grouped so
that each group pads at most ~20%, gathered into [batch, len] views and fed to fused SDPA.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from arctic_embed.engines.base import EngineInfo, resolve_dtype
from arctic_embed.engines.kernels import add_layer_norm, triton_available
from arctic_embed.model_files import DenseLayer, ModelSpec

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
BUCKET_PADDING_SLACK = 1.2
_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class _Layer:
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    ffn_in_w: torch.Tensor
    ffn_in_b: torch.Tensor
    ffn_out_w: torch.Tensor
    ffn_out_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor


@dataclass
class AttentionBucket:
    """Sequences attended together: gather index [b, L] into packed rows, key mask, and valid packed rows."""

    gather: torch.Tensor
    key_mask: torch.Tensor | None
    valid: torch.Tensor | None
    rows: torch.Tensor


def _load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    st = model_dir / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    binary = model_dir / "pytorch_model.bin"
    if binary.is_file():
        return torch.load(str(binary), map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{model_dir}: no model.safetensors or pytorch_model.bin")


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    anchor = "embeddings.word_embeddings.weight"
    for key in state:
        if key.endswith(anchor):
            prefix = key[: -len(anchor)]
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    raise ValueError("not a BERT-family checkpoint: no embeddings.word_embeddings.weight")


def plan_buckets(lengths: np.ndarray, slack: float = BUCKET_PADDING_SLACK) -> list[np.ndarray]:
    """Group sequence indices (ascending length) so each group's padded size is ≤ slack × its real tokens."""
    order = np.argsort(lengths, kind="stable")
    buckets: list[np.ndarray] = []
    start = 0
    tokens = 0
    for pos, idx in enumerate(order.tolist()):
        length = int(lengths[idx])
        count = pos - start + 1
        if pos > start and count * length > slack * (tokens + length):
            buckets.append(order[start:pos])
            start, tokens = pos, 0
        tokens += length
    if order.size:
        buckets.append(order[start:])
    return buckets


class TorchEncoderEngine:
    name = "torch"

    def __init__(self) -> None:
        self._spec: ModelSpec | None = None
        self._device = torch.device("cpu")
        self._dtype = torch.float32
        self._graphs = None
        self._fused_norm = False

    # ------------------------------------------------------------------------------------------------ loading
    def load(self, spec: ModelSpec, device: str, dtype: str, threads: int = 0, use_cuda_graphs: bool = True,
             fused_kernels: bool = True) -> None:
        if spec.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"the torch engine runs {SUPPORTED_MODEL_TYPES}, not {spec.model_type!r}; "
                             "use --engine vllm for this model")
        if threads > 0 and device == "cpu":
            torch.set_num_threads(threads)
        config = json.loads((spec.path / "config.json").read_text())
        self._spec = spec
        self._device = torch.device(device)
        self._dtype = resolve_dtype(dtype, device)
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config.get("layer_norm_eps", 1e-12))
        self._act = _ACTIVATIONS[str(config.get("hidden_act", "gelu"))]
        roberta_like = spec.model_type != "bert"
        self._position_offset = int(config.get("pad_token_id", 1)) + 1 if roberta_like else 0
        state = _strip_prefix(_load_state_dict(spec.path))

        def w(key: str) -> torch.Tensor:
            return state[key].to(device=self._device, dtype=self._dtype).contiguous()

        self._word = w("embeddings.word_embeddings.weight")
        self._pos = w("embeddings.position_embeddings.weight")
        token_type = w("embeddings.token_type_embeddings.weight")[0]
        # Token type 0 for every token: fold its row into the position table once.
        self._pos = (self._pos + token_type).contiguous()
        self._emb_ln = (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        self._layers: list[_Layer] = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            self._layers.append(_Layer(
                qkv_w=torch.cat([w(p + f"attention.self.{n}.weight") for n in ("query", "key", "value")]),
                qkv_b=torch.cat([w(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")]),
                out_w=w(p + "attention.output.dense.weight"), out_b=w(p + "attention.output.dense.bias"),
                ln1_w=w(p + "attention.output.LayerNorm.weight"), ln1_b=w(p + "attention.output.LayerNorm.bias"),
                ffn_in_w=w(p + "intermediate.dense.weight"), ffn_in_b=w(p + "intermediate.dense.bias"),
                ffn_out_w=w(p + "output.dense.weight"), ffn_out_b=w(p + "output.dense.bias"),
                ln2_w=w(p + "output.LayerNorm.weight"), ln2_b=w(p + "output.LayerNorm.bias"),
            ))
        self._dense = [self._load_dense(layer) for layer in spec.dense_layers]
        self._fused_norm = fused_kernels and triton_available(self._device)
        self._graphs = None
        if self._device.type == "cuda" and use_cuda_graphs:
            from arctic_embed.engines.cuda_graphs import PaddedGraphs

            self._graphs = PaddedGraphs(self.padded_forward, self._device, spec.max_input_tokens)
            self._graphs.capture()

    def _load_dense(self, layer: DenseLayer) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        state = _load_state_dict(layer.path)
        weight = state["linear.weight"].to(self._device, torch.float32)
        bias = state["linear.bias"].to(self._device, torch.float32) if layer.bias else None
        return weight, bias, layer.activation.rsplit(".", 1)[-1]

    def info(self) -> EngineInfo:
        assert self._spec is not None
        return EngineInfo("torch", str(self._dtype).removeprefix("torch."), str(self._device), self._spec.dim)

    # ------------------------------------------------------------------------------------------------ forward
    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """Host → device without stalling the host: pinned staging + an async copy on CUDA."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self._device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self._device, non_blocking=True)

    def _buckets(self, lengths: np.ndarray, offsets: np.ndarray) -> list[AttentionBucket]:
        total = int(offsets[-1])
        out: list[AttentionBucket] = []
        for seqs in plan_buckets(lengths):
            seq_lengths = lengths[seqs]
            width = int(seq_lengths.max())
            steps = np.arange(width)
            valid = steps[None, :] < seq_lengths[:, None]
            gather = np.minimum(offsets[seqs][:, None] + steps[None, :], total - 1)
            uniform = bool(valid.all())
            out.append(AttentionBucket(
                gather=self._to_device(gather),
                key_mask=None if uniform else self._to_device(valid[:, None, None, :]),
                valid=None if uniform else self._to_device(valid),
                rows=self._to_device(gather[valid] if not uniform else gather.reshape(-1)),
            ))
        return out

    def _attention(self, qkv: torch.Tensor, lengths: np.ndarray, buckets: list[AttentionBucket] | None
                   ) -> torch.Tensor:
        total, three_hidden = qkv.shape
        hidden = three_hidden // 3
        head_dim = hidden // self._heads
        if buckets is None:  # every sequence has the same length: the packed rows already are [n, L]
            q, k, v = qkv.view(lengths.size, -1, 3, self._heads, head_dim).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(q, k, v)
            return ctx.transpose(1, 2).reshape(total, hidden)
        out = torch.empty(total, hidden, device=qkv.device, dtype=qkv.dtype)
        for b in buckets:
            q, k, v = qkv[b.gather].view(*b.gather.shape, 3, self._heads, head_dim).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=b.key_mask).transpose(1, 2)
            ctx = ctx.reshape(*b.gather.shape, hidden)
            out[b.rows] = ctx[b.valid] if b.valid is not None else ctx.reshape(-1, hidden)
        return out

    def _encoder(self, x: torch.Tensor, attend) -> torch.Tensor:  # noqa: ANN001 - attend: qkv -> context
        fused = self._fused_norm
        for layer in self._layers:
            ctx = attend(F.linear(x, layer.qkv_w, layer.qkv_b))
            x = add_layer_norm(F.linear(ctx, layer.out_w, layer.out_b), x, layer.ln1_w, layer.ln1_b, self._eps, fused)
            h = self._act(F.linear(x, layer.ffn_in_w, layer.ffn_in_b))
            x = add_layer_norm(F.linear(h, layer.ffn_out_w, layer.ffn_out_b), x, layer.ln2_w, layer.ln2_b, self._eps,
                               fused)
        return x

    def _embeddings(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self._word[ids] + self._pos[positions]
        return F.layer_norm(x, (x.shape[-1],), *self._emb_ln, self._eps)

    def _dense_head(self, pooled: torch.Tensor) -> torch.Tensor:
        for weight, bias, activation in self._dense:
            pooled = F.linear(pooled, weight, bias)
            if activation == "Tanh":
                pooled = torch.tanh(pooled)
        return pooled

    @torch.inference_mode()
    def embed(self, ids: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        assert self._spec is not None, "load() first"
        lengths = np.asarray(lengths, dtype=np.int64)
        if self._graphs is not None:
            out = self._graphs.run(ids, lengths)
            if out is not None:
                return out
        return self._packed_forward(np.asarray(ids, dtype=np.int32), lengths)

    def _packed_forward(self, ids: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """Sequences back to back: token-wise ops on [tokens, hidden], attention per length bucket."""
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        positions = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths) + self._position_offset
        x = self._embeddings(self._to_device(ids), self._to_device(positions))
        uniform = bool((lengths == lengths[0]).all())
        buckets = None if uniform else self._buckets(lengths, offsets)
        x = self._encoder(x, lambda qkv: self._attention(qkv, lengths, buckets))
        return self._dense_head(self._pool_packed(x, lengths, offsets))

    def padded_forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[batch, width] ids with a boolean mask of real tokens → pooled [batch, dim] (float32).

        Static shapes only (no host sync): this is what CUDA graphs capture for small batches."""
        batch, width = ids.shape
        positions = torch.arange(width, device=ids.device) + self._position_offset
        x = self._embeddings(ids, positions.expand(batch, width))
        key_mask = mask[:, None, None, :]
        hidden = x.shape[-1]
        head_dim = hidden // self._heads

        def attend(qkv: torch.Tensor) -> torch.Tensor:
            q, k, v = qkv.view(batch, width, 3, self._heads, head_dim).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
            return ctx.transpose(1, 2).reshape(batch, width, hidden)

        x = self._encoder(x, attend).float()
        return self._dense_head(_pool_padded(x, mask, self._spec.pooling))  # type: ignore[union-attr]

    def _pool_packed(self, x: torch.Tensor, lengths: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
        assert self._spec is not None
        mode = self._spec.pooling
        if mode == "cls":
            return x[self._to_device(offsets[:-1])].float()
        if mode == "lasttoken":
            return x[self._to_device(offsets[1:] - 1)].float()
        lengths_t = self._to_device(lengths)
        if mode == "max":
            return torch.segment_reduce(x.float(), "max", lengths=lengths_t)
        segments = self._to_device(np.repeat(np.arange(lengths.size), lengths))
        sums = torch.zeros(lengths.size, x.shape[1], device=x.device, dtype=torch.float32)
        sums.index_add_(0, segments, x.float())
        denom = lengths_t.to(torch.float32).unsqueeze(1)
        return sums / (denom.sqrt() if mode == "mean_sqrt_len" else denom)


def _pool_padded(x: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pooling over [batch, width, hidden] with a mask of real tokens (left-aligned sequences)."""
    counts = mask.sum(dim=1)
    if mode == "cls":
        return x[:, 0]
    if mode == "lasttoken":
        return x[torch.arange(x.shape[0], device=x.device), counts - 1]
    if mode == "max":
        return x.masked_fill(~mask[:, :, None], float("-inf")).amax(dim=1)
    sums = (x * mask[:, :, None]).sum(dim=1)
    denom = counts.to(torch.float32).unsqueeze(1)
    return sums / (denom.sqrt() if mode == "mean_sqrt_len" else denom)
