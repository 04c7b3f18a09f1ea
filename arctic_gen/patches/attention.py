"""Patches of vLLM's `Attention` layer: Ulysses head split and all-to-all.

With `ulysses_sequence_parallel_size` (SP) > 1, every decoder self-attention layer is built for this SP rank's
share of the TP rank's heads (`arctic_gen.parallel.ulysses.HeadLayout`: KV heads split, or replicated when there
are fewer KV heads than SP ranks, query heads following their KV head), so the attention backend, its metadata and
the KV cache all see only those heads. The model's projections still produce every head of the TP rank;
`forward` selects, exchanges and reassembles heads around the original forward
(`arctic_gen.parallel.ulysses.RankHeads.forward`). Layers of other kinds (encoder, cross-attention, KV sharing)
are left alone and refused at start-up by the engine-argument checks only where a model needs them.

Declared state: `arctic_ulysses` (a `RankHeads`, or None when Ulysses is off for the layer).
vLLM 0.26.0 and 0.32.0 have the same `__init__(num_heads, head_size, scale, num_kv_heads=None, ...,
attn_type=DECODER, kv_sharing_target_layer_name=None, ...)` and `forward(query, key, value, output_shape=None,
output_dtype=None)`, and both keep `num_heads`, `num_kv_heads`, `head_size`, `head_size_v` on the layer.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from packaging.specifiers import SpecifierSet

from arctic_gen.config import ArcticConfig
from arctic_gen.parallel import ulysses
from arctic_gen.patching import Patch

VERSIONS = SpecifierSet(">=0.26.0,<0.33")


def _sp_size() -> int:
    from vllm.config import get_current_vllm_config

    return ArcticConfig.from_vllm_config(get_current_vllm_config()).parallel.ulysses_sequence_parallel_size


def _build(cls: Any) -> dict[str, Any]:
    original_init = vars(cls)["__init__"]
    original_forward = vars(cls)["forward"]
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from vllm.v1.attention.backend import AttentionType

        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        rank_heads = None
        sp = _sp_size()
        if (sp > 1 and values["attn_type"] == AttentionType.DECODER
                and values["kv_sharing_target_layer_name"] is None):
            num_heads = values["num_heads"]
            num_kv_heads = values["num_kv_heads"] if values["num_kv_heads"] is not None else num_heads
            layout = ulysses.HeadLayout.plan(num_heads, num_kv_heads, sp)
            rank_heads = ulysses.RankHeads(layout, ulysses.sp_world()[1])
            values["num_heads"] = layout.q_per_rank
            values["num_kv_heads"] = layout.kv_per_rank
        extra = values.pop("extra_impl_args", {})
        values.pop("self")
        original_init(self, **values, **extra)
        self.arctic_ulysses = rank_heads

    @functools.wraps(original_forward)
    def forward(self, query, key, value, output_shape=None, **kwargs):
        heads = self.arctic_ulysses
        if heads is None:
            return original_forward(self, query, key, value, output_shape, **kwargs)

        def attend(q, k, v):
            return original_forward(self, q, k, v, None, **kwargs)

        return heads.forward(attend, query, key, value, self.head_size, self.head_size_v)

    return {"__init__": __init__, "forward": forward, "arctic_ulysses": None}


PATCHES = (
    Patch(
        name="attention.ulysses",
        target="vllm.model_executor.layers.attention.attention:Attention",
        versions=VERSIONS,
        build=_build,
        replaces=("__init__", "forward"),
        adds=("arctic_ulysses",),
        notes="Same constructor and forward signatures in 0.26.0 and 0.32.0.",
    ),
)
