"""Patches of `vllm.engine.arg_utils`: the Arctic engine arguments.

`EngineArgs` gains three declared attributes (`ulysses_sequence_parallel_size`, `enable_shift_parallel`,
`shift_parallel_threshold`), accepted by `EngineArgs(...)`/`AsyncEngineArgs(...)` (hence `LLM(...)` keyword
arguments) and as CLI flags of every vLLM entry point that builds its parser with `EngineArgs.add_cli_args` (the
OpenAI server included). `speculative_config` dicts whose method the plugin implements ("arctic", "suffix") are
validated when the arguments are built and handed to vLLM at `create_engine_config` as vLLM's extension method
`"custom_class"`, naming our proposer class; the validated options reach every process in
`VllmConfig.additional_config["arctic"]` (see `arctic_gen.config`). With none of the options used, vLLM sees
exactly what it would have seen without the plugin (pooling engines included).

Proposers: `PROPOSERS` maps a method to "module.Class". vLLM builds the class as a `custom_class` proposer
(`__init__(vllm_config)`, `load_model(target_model)`); the plugin's runner patch
(`arctic_gen.patches.gpu_model_runner`) then drives it through `propose_step(DraftStep)` with request ids and hidden
states instead of vLLM's row-only `propose`. A method whose proposer module is not in this build is rejected at
start-up with a message saying so; "suffix" then falls back to vLLM's built-in suffix method when the
arctic-inference package is installed.

vLLM 0.26.0 and 0.32.0 have the same `__init__` (dataclass-generated), `add_cli_args` (staticmethod),
`from_cli_args` (classmethod building `cls(**fields)`) and `create_engine_config(usage_context, headless)`; no
version-specific code is needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import logging
from typing import Any

from packaging.specifiers import SpecifierSet

from arctic_gen.config import (
    ADDITIONAL_CONFIG_KEY,
    SPECULATIVE_METHODS,
    ArcticConfig,
    ArcticParallelConfig,
    ArcticSpeculativeConfig,
    ConfigError,
)
from arctic_gen.patching import Patch

logger = logging.getLogger(__name__)

VERSIONS = SpecifierSet(">=0.26.0,<0.33")
PARALLEL_FIELDS = tuple(f.name for f in dataclasses.fields(ArcticParallelConfig))
PROPOSERS = {
    "arctic": "arctic_gen.spec_decode.arctic.ArcticProposer",
    "suffix": "arctic_gen.spec_decode.suffix.SuffixProposer",
}


def _set_parallel(engine_args: Any, values: dict[str, Any]) -> None:
    current = {name: getattr(engine_args, name) for name in PARALLEL_FIELDS}
    parallel = ArcticParallelConfig(**{**current, **values})  # validates: ConfigError names the field
    for name in PARALLEL_FIELDS:
        setattr(engine_args, name, getattr(parallel, name))


def _arctic_speculative(raw: Any) -> ArcticSpeculativeConfig | None:
    """Our validated config when `raw` (EngineArgs.speculative_config) asks for a method we implement."""
    if not isinstance(raw, dict):
        return None
    method = raw.get("method")
    if method not in SPECULATIVE_METHODS:
        return None
    return ArcticSpeculativeConfig.from_dict({k: v for k, v in raw.items() if k not in _VLLM_INJECTED})


# create_engine_config adds these to the dict itself (vLLM's own code), so a second call may see them.
_VLLM_INJECTED = ("target_model_config", "target_parallel_config")


def proposer_available(method: str) -> bool:
    module, _, _ = PROPOSERS[method].rpartition(".")
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def vllm_speculative_config(spec: ArcticSpeculativeConfig) -> dict[str, Any]:
    """The `speculative_config` dict vLLM itself receives for one of our methods."""
    if proposer_available(spec.method):
        return {"method": "custom_class", "model": PROPOSERS[spec.method], "num_speculative_tokens": spec.draft_tokens}
    if spec.method == "suffix" and importlib.util.find_spec("arctic_inference") is not None:
        if spec.suffix_max_spec_offset != 0.0:
            raise ConfigError("speculative_config.suffix_max_spec_offset: vLLM's built-in suffix method has no offset")
        return {
            "method": "suffix",
            "num_speculative_tokens": spec.draft_tokens,
            "suffix_decoding_max_tree_depth": spec.suffix_cache_max_depth,
            "suffix_decoding_max_cached_requests": spec.suffix_cache_max_requests,
            "suffix_decoding_max_spec_factor": spec.suffix_max_spec_factor,
            "suffix_decoding_min_token_prob": spec.suffix_min_token_prob,
        }
    raise ConfigError(
        f"speculative_config.method={spec.method!r}: its proposer ({PROPOSERS[spec.method]}) is not part of this "
        "build yet; use method 'ngram' meanwhile"
    )


def arctic_config_of(engine_args: Any) -> ArcticConfig:
    parallel = ArcticParallelConfig(**{name: getattr(engine_args, name) for name in PARALLEL_FIELDS})
    return ArcticConfig(parallel=parallel, speculative=_arctic_speculative(engine_args.speculative_config))


def add_arctic_cli_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ArcticConfig", "Options added by the arctic_gen vLLM plugin.")
    group.add_argument(
        "--ulysses-sequence-parallel-size", type=int, default=ArcticParallelConfig.ulysses_sequence_parallel_size,
        help="Ranks that split each sequence (Ulysses). 1 = off.")
    group.add_argument(
        "--enable-shift-parallel", action=argparse.BooleanOptionalAction,
        default=ArcticParallelConfig.enable_shift_parallel,
        help="Shift between sequence and tensor parallelism by step size (needs Ulysses size > 1).")
    group.add_argument(
        "--shift-parallel-threshold", type=int, default=ArcticParallelConfig.shift_parallel_threshold,
        help="Scheduled tokens per step at or below which Shift Parallelism runs tensor-parallel.")


def _prepare_ulysses(engine_args: Any) -> None:
    """Engine arguments vLLM must see for Ulysses: one process per rank (mp), eager execution."""
    if engine_args.data_parallel_size != 1:
        raise ConfigError("ulysses_sequence_parallel_size: Ulysses with data_parallel_size > 1 is not supported; "
                          "run separate engines (replicas) instead")
    if engine_args.distributed_executor_backend not in (None, "mp"):
        raise ConfigError(f"ulysses_sequence_parallel_size: needs distributed_executor_backend='mp' (got "
                          f"{engine_args.distributed_executor_backend!r})")
    engine_args.distributed_executor_backend = "mp"
    if not engine_args.enforce_eager:
        logger.warning("arctic_gen: ulysses_sequence_parallel_size > 1 runs eagerly (enforce_eager=True): the "
                       "attention all-to-all is not captured by torch.compile/CUDA graphs in this build")
        engine_args.enforce_eager = True


def _ulysses_world(vllm_config: Any, sp: int) -> None:
    """Check the model's heads split over SP, then make the world SP times larger (TP x SP x PP ranks)."""
    from arctic_gen.parallel.ulysses import HeadLayout, UlyssesLayoutError

    parallel = vllm_config.parallel_config
    if parallel.prefill_context_parallel_size != 1 or parallel.decode_context_parallel_size != 1:
        raise ConfigError("ulysses_sequence_parallel_size: not supported together with context parallelism "
                          "(prefill/decode_context_parallel_size > 1)")
    if vllm_config.model_config is not None:
        heads = vllm_config.model_config.get_num_attention_heads(parallel)
        kv_heads = vllm_config.model_config.get_num_kv_heads(parallel)
        try:
            HeadLayout.plan(heads, kv_heads, sp)
        except UlyssesLayoutError as exc:
            raise ConfigError(f"ulysses_sequence_parallel_size={sp}: {exc}") from exc
    parallel.world_size *= sp


def _wrap_init(original):
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        arctic = {name: kwargs.pop(name) for name in PARALLEL_FIELDS if name in kwargs}
        _set_parallel(self, arctic)
        original(self, *args, **kwargs)
        _arctic_speculative(self.speculative_config)  # fail at construction, not later

    return __init__


def _build_engine_args(cls: Any) -> dict[str, Any]:
    raw = vars(cls)
    original_add_cli_args = raw["add_cli_args"].__func__
    original_from_cli_args = raw["from_cli_args"].__func__
    original_create_engine_config = raw["create_engine_config"]

    def add_cli_args(parser):
        parser = original_add_cli_args(parser)
        add_arctic_cli_args(parser)
        return parser

    def from_cli_args(cls, args: argparse.Namespace):
        engine_args = original_from_cli_args(cls, args)
        _set_parallel(engine_args, {name: getattr(args, name) for name in PARALLEL_FIELDS if hasattr(args, name)})
        return engine_args

    @functools.wraps(original_create_engine_config)
    def create_engine_config(self, *args, **kwargs):
        arctic = arctic_config_of(self)
        if arctic.is_default:
            return original_create_engine_config(self, *args, **kwargs)
        if not isinstance(self.additional_config, dict):
            raise ConfigError("additional_config: the arctic_gen plugin needs it to be a dict")
        user_spec, user_extra = self.speculative_config, self.additional_config
        user_parallel = (self.distributed_executor_backend, self.enforce_eager)
        try:
            if arctic.speculative is not None:
                self.speculative_config = vllm_speculative_config(arctic.speculative)
            self.additional_config = {**user_extra, ADDITIONAL_CONFIG_KEY: arctic.to_dict()}
            if arctic.parallel.ulysses_sequence_parallel_size > 1:
                _prepare_ulysses(self)
            vllm_config = original_create_engine_config(self, *args, **kwargs)
            if arctic.parallel.ulysses_sequence_parallel_size > 1:
                _ulysses_world(vllm_config, arctic.parallel.ulysses_sequence_parallel_size)
            return vllm_config
        finally:
            self.speculative_config, self.additional_config = user_spec, user_extra
            self.distributed_executor_backend, self.enforce_eager = user_parallel

    values: dict[str, Any] = {
        "__init__": _wrap_init(raw["__init__"]),
        "add_cli_args": staticmethod(add_cli_args),
        "from_cli_args": classmethod(from_cli_args),
        "create_engine_config": create_engine_config,
    }
    for name in PARALLEL_FIELDS:  # declared defaults, so every instance has them
        values[name] = getattr(ArcticParallelConfig, name)
    return values


def _build_async_engine_args(cls: Any) -> dict[str, Any]:
    # A dataclass subclass gets its own generated __init__, which does not call EngineArgs.__init__.
    return {"__init__": _wrap_init(vars(cls)["__init__"])}


PATCHES = (
    Patch(
        name="engine_args.arctic_arguments",
        target="vllm.engine.arg_utils:EngineArgs",
        versions=VERSIONS,
        build=_build_engine_args,
        replaces=("__init__", "add_cli_args", "from_cli_args", "create_engine_config"),
        adds=PARALLEL_FIELDS,
        notes="Same code in 0.26.0 and 0.32.0 (dataclass __init__, staticmethod add_cli_args, classmethod "
              "from_cli_args, create_engine_config(usage_context, headless)).",
    ),
    Patch(
        name="async_engine_args.arctic_arguments",
        target="vllm.engine.arg_utils:AsyncEngineArgs",
        versions=VERSIONS,
        build=_build_async_engine_args,
        replaces=("__init__",),
        notes="Same in 0.26.0 and 0.32.0: the subclass's generated __init__ does not call EngineArgs.__init__.",
    ),
)
