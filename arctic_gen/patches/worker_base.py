"""Patch of vLLM's `WorkerBase`: a worker RPC that reports the Ulysses/Shift step counters.

`collective_rpc("arctic_parallel_stats")` returns, per worker, `{"steps": {"sp": n, "tp": n}, "tokens": {...}}`:
the model steps (and their tokens) this worker ran in each mode (`arctic_gen.parallel.shift.COUNTERS`). Engines
without Ulysses report zeros. The method is added (declared), nothing of vLLM's is replaced; `WorkerBase` has the
same role in vLLM 0.26.0 and 0.32.0 (the GPU and CPU workers derive from it, `WorkerWrapperBase` forwards RPCs).
"""

from __future__ import annotations

from typing import Any

from packaging.specifiers import SpecifierSet

from arctic_gen.parallel import shift
from arctic_gen.patching import Patch

VERSIONS = SpecifierSet(">=0.26.0,<0.33")


def arctic_parallel_stats(self: Any) -> dict[str, dict[str, int]]:
    """This worker's steps and tokens per parallel mode ("sp", "tp")."""
    return shift.COUNTERS.snapshot()


PATCHES = (
    Patch(
        name="worker_base.arctic_parallel_stats",
        target="vllm.v1.worker.worker_base:WorkerBase",
        versions=VERSIONS,
        build=lambda cls: {"arctic_parallel_stats": arctic_parallel_stats},
        adds=("arctic_parallel_stats",),
        notes="Added method only; WorkerBase exists with the same role in 0.26.0 and 0.32.0.",
    ),
)
