"""vLLM general-plugin entry point (`vllm.general_plugins` → `arctic_gen.plugin:register`).

vLLM calls `register()` in every process it starts (API server, engine core, workers; or once with the engine
in-process) and may call it more than once: registration is idempotent. Exclude the plugin with vLLM's
`VLLM_PLUGINS` (a comma-separated allow-list of plugin names; ours is `arctic_gen`).

Outside the vLLM versions a patch declares, `register()` raises `UnsupportedVllmVersion` (vLLM does not catch
it: the process stops with the message) unless `ARCTIC_GEN_SKIP_VERSION_CHECK=1`. Everything the plugin changes is
inert until one of its options is used, so it is harmless in engines that do not use it (pooling engines of the
embedding service included).
"""

from __future__ import annotations

import logging
import threading

from arctic_gen.config import skip_version_check
from arctic_gen.patching import REGISTRY, PatchRegistry, installed_vllm_version

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_registered = False


def register(registry: PatchRegistry | None = None, version: str | None = None) -> None:
    """Register and apply every patch once per process (the arguments are for tests)."""
    global _registered
    with _lock:
        if registry is None and _registered:
            return
        from arctic_gen.patches import all_patches

        target = REGISTRY if registry is None else registry
        target.register_all(all_patches())
        target.apply_all(version or installed_vllm_version(), skip_version_check=skip_version_check())
        if registry is None:
            from arctic_gen.models.llama_swiftkv_config import register_swiftkv

            register_swiftkv()  # SwiftKV: transformers config class + vLLM model (idempotent)
            _registered = True
        logger.debug("arctic_gen plugin registered (%d patches)", len(target.patches))


def is_registered() -> bool:
    return _registered
