"""Patches of `vllm.distributed.parallel_state`: the Ulysses SP groups next to vLLM's own.

With `ulysses_sequence_parallel_size` (SP) > 1 the world has TP x SP x PP ranks. vLLM's `initialize_model_parallel`
lays ranks out as [external DP] x DP x PP x PCP x TP, so with DP = PCP = 1 the SP dimension is vLLM's outermost,
"external data parallel" dimension: vLLM's TP and PP groups come out right unchanged and the weights of a TP rank
are replicated over its SP ranks. The wrapper then creates one SP group per (pp, tp) coordinate
(`arctic_gen.parallel.ulysses.init_sp_group`), and `destroy_model_parallel` destroys it with vLLM's groups.

Same functions and call sites in vLLM 0.26.0 and 0.32.0 (`ensure_model_parallel_initialized` calls the module
global `initialize_model_parallel(tp, pp, pcp, dcp, backend)`; 0.32 adds elastic EP, which SP refuses).
"""

from __future__ import annotations

import functools
from typing import Any

from packaging.specifiers import SpecifierSet

from arctic_gen.config import ArcticConfig
from arctic_gen.parallel import ulysses
from arctic_gen.patching import Patch

VERSIONS = SpecifierSet(">=0.26.0,<0.33")


def _sp_size() -> int:
    from vllm.config import get_current_vllm_config

    return ArcticConfig.from_vllm_config(get_current_vllm_config()).parallel.ulysses_sequence_parallel_size


def _build(module: Any) -> dict[str, Any]:
    original_init = vars(module)["initialize_model_parallel"]
    original_destroy = vars(module)["destroy_model_parallel"]

    @functools.wraps(original_init)
    def initialize_model_parallel(*args: Any, **kwargs: Any) -> None:
        original_init(*args, **kwargs)
        sp = _sp_size()
        if sp > 1:
            import torch.distributed as dist

            world = module.get_world_group()
            backend = kwargs.get("backend") or dist.get_backend(world.device_group)
            ulysses.init_sp_group(sp, world.local_rank, backend)

    @functools.wraps(original_destroy)
    def destroy_model_parallel() -> None:
        ulysses.destroy_sp_group()
        original_destroy()

    return {"initialize_model_parallel": initialize_model_parallel, "destroy_model_parallel": destroy_model_parallel}


PATCHES = (
    Patch(
        name="parallel_state.ulysses_groups",
        target="vllm.distributed.parallel_state",
        versions=VERSIONS,
        build=_build,
        replaces=("initialize_model_parallel", "destroy_model_parallel"),
        notes="Same in 0.26.0 and 0.32.0: SP is vLLM's outermost (external DP) rank dimension.",
    ),
)
