"""Patches of vLLM's `ModelConfig`: per-rank head counts under Ulysses.

Attention metadata builders size their plans from `ModelConfig.get_num_attention_heads/get_num_kv_heads`
(vLLM 0.26.0's FlashAttention builder does so for FA3's ahead-of-time scheduler; 0.32 reads the layers' own counts
first). In a worker process whose Ulysses SP group exists (`arctic_gen.parallel.ulysses`), both methods return this
SP rank's share (`HeadLayout.q_per_rank` / `kv_per_rank`), the same numbers the attention layers were built with
(`arctic_gen.patches.attention`); everywhere else (engine core, front end, engines without Ulysses) they are
unchanged. MLA models are left alone (their attention is not the patched layer).

0.26.0: `get_num_kv_heads(parallel_config)`, `get_num_attention_heads(parallel_config)`; 0.32.0 adds an optional
`arch_config` argument to both (per-layer sizing). The wrappers pass every argument through.
"""

from __future__ import annotations

import functools
from typing import Any

from packaging.specifiers import SpecifierSet

from arctic_gen.parallel import ulysses
from arctic_gen.patching import Patch

VERSIONS = SpecifierSet(">=0.26.0,<0.33")


def _build(cls: Any) -> dict[str, Any]:
    original_kv = vars(cls)["get_num_kv_heads"]
    original_q = vars(cls)["get_num_attention_heads"]

    def _layout(self, *args: Any, **kwargs: Any) -> ulysses.HeadLayout | None:
        if not ulysses.sp_group_initialized() or self.use_mla:
            return None
        return ulysses.HeadLayout.plan(original_q(self, *args, **kwargs), original_kv(self, *args, **kwargs),
                                       ulysses.sp_world()[0])

    @functools.wraps(original_kv)
    def get_num_kv_heads(self, *args: Any, **kwargs: Any) -> int:
        layout = _layout(self, *args, **kwargs)
        return original_kv(self, *args, **kwargs) if layout is None else layout.kv_per_rank

    @functools.wraps(original_q)
    def get_num_attention_heads(self, *args: Any, **kwargs: Any) -> int:
        layout = _layout(self, *args, **kwargs)
        return original_q(self, *args, **kwargs) if layout is None else layout.q_per_rank

    return {"get_num_kv_heads": get_num_kv_heads, "get_num_attention_heads": get_num_attention_heads}


PATCHES = (
    Patch(
        name="model_config.ulysses_heads",
        target="vllm.config.model:ModelConfig",
        versions=VERSIONS,
        build=_build,
        replaces=("get_num_kv_heads", "get_num_attention_heads"),
        notes="0.32.0 adds an optional arch_config argument to both methods; the wrappers pass it through.",
    ),
)
