"""Patch of vLLM's `OutputProcessor`: per-request engine steps for exact speculation statistics.

`process_outputs(engine_core_outputs, ...)` receives one engine step's outputs; the wrapper shows them to
`arctic_gen.server.step_tally.STEP_TALLY` (with the processor's `request_states`, which map vLLM's internal request
ids to the caller's) and then calls the original. It costs nothing when no server watches a request (offline `LLM`
use, engine-core processes). Same signature on 0.26.0 and 0.32.0.
"""

from __future__ import annotations

import functools
from typing import Any

from packaging.specifiers import SpecifierSet

from arctic_gen.patching import Patch
from arctic_gen.server.step_tally import STEP_TALLY

VERSIONS = SpecifierSet(">=0.26.0,<0.33")


def _build(cls: Any) -> dict[str, Any]:
    original = vars(cls)["process_outputs"]

    @functools.wraps(original)
    def process_outputs(self, engine_core_outputs, *args: Any, **kwargs: Any):
        STEP_TALLY.record(engine_core_outputs, self.request_states)
        return original(self, engine_core_outputs, *args, **kwargs)

    return {"process_outputs": process_outputs}


PATCHES = (
    Patch(
        name="output_processor.step_tally",
        target="vllm.v1.engine.output_processor:OutputProcessor",
        versions=VERSIONS,
        build=_build,
        replaces=("process_outputs",),
    ),
)
