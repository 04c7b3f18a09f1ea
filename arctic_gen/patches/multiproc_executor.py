"""Patches of `vllm.v1.executor.multiproc_executor`: the executor's world-size check counts the SP ranks.

`MultiprocExecutor._init_executor` asserts `world_size == tp * pp * pcp` with the sizes `_get_parallel_sizes()`
returns. With Ulysses (SP > 1) the plugin has made the world SP times larger (`arctic_gen.patches.engine_args`), so
the wrapper reports TP x SP as the first size. Every other use of the sizes reads `parallel_config` directly:
the output rank (`world_size - tp * pcp`) is then an SP rank of the first TP rank of the last PP stage, which holds
the whole step's output like every SP rank. Same method in vLLM 0.26.0 and 0.32.0.
"""

from __future__ import annotations

import functools
from typing import Any

from packaging.specifiers import SpecifierSet

from arctic_gen.config import ArcticConfig
from arctic_gen.patching import Patch

VERSIONS = SpecifierSet(">=0.26.0,<0.33")


def _build(cls: Any) -> dict[str, Any]:
    original = vars(cls)["_get_parallel_sizes"]

    @functools.wraps(original)
    def _get_parallel_sizes(self) -> tuple[int, int, int]:
        tp, pp, pcp = original(self)
        sp = ArcticConfig.from_vllm_config(self.vllm_config).parallel.ulysses_sequence_parallel_size
        return tp * sp, pp, pcp

    return {"_get_parallel_sizes": _get_parallel_sizes}


PATCHES = (
    Patch(
        name="multiproc_executor.ulysses_world_size",
        target="vllm.v1.executor.multiproc_executor:MultiprocExecutor",
        versions=VERSIONS,
        build=_build,
        replaces=("_get_parallel_sizes",),
        notes="Same `_get_parallel_sizes() -> (tp, pp, pcp)` and world-size assertion in 0.26.0 and 0.32.0.",
    ),
)
