"""One module per patched vLLM module; each exports `PATCHES`, a tuple of `arctic_gen.patching.Patch`."""

from __future__ import annotations

from arctic_gen.patching import Patch


def all_patches() -> list[Patch]:
    """Every patch of the plugin, in the order they are applied."""
    from arctic_gen.patches import engine_args, gpu_model_runner

    return [*engine_args.PATCHES, *gpu_model_runner.PATCHES]
