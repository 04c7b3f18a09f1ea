"""One module per patched vLLM module; each exports `PATCHES`, a tuple of `arctic_gen.patching.Patch`."""

from __future__ import annotations

from arctic_gen.patching import Patch


def all_patches() -> list[Patch]:
    """Every patch of the plugin, in the order they are applied."""
    from arctic_gen.patches import (
        attention,
        engine_args,
        gpu_model_runner,
        gpu_model_runner_forward,
        model_config,
        multiproc_executor,
        output_processor,
        parallel_state,
        worker_base,
    )

    return [*engine_args.PATCHES, *gpu_model_runner.PATCHES, *parallel_state.PATCHES, *multiproc_executor.PATCHES,
            *attention.PATCHES, *gpu_model_runner_forward.PATCHES, *worker_base.PATCHES, *model_config.PATCHES,
            *output_processor.PATCHES]
