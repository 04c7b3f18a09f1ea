"""Arctic configuration: the engine arguments the plugin adds to vLLM, as documented, validated dataclasses.

Three engine arguments are added to vLLM's `EngineArgs` (so they work as `LLM(...)` keyword arguments, as
`AsyncEngineArgs(...)` fields and as OpenAI-server CLI flags): `ulysses_sequence_parallel_size`,
`enable_shift_parallel` and `shift_parallel_threshold`. `speculative_config` keeps vLLM's name; the plugin takes over
the two methods it implements, `"arctic"` and `"suffix"`, and leaves every other method to vLLM.

The validated result travels to every vLLM process inside `VllmConfig.additional_config["arctic"]` (a plain dict,
so it pickles and hashes like the rest of vLLM's config); `ArcticConfig.from_vllm_config` reads it back, with
defaults when the plugin's options were not used. Environment variables of the plugin are read here and nowhere else.

Every validation error is a `ConfigError` (a `ValueError`) whose message starts with the field's name and says how
to fix the value.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

ADDITIONAL_CONFIG_KEY = "arctic"
SPECULATIVE_METHODS = ("arctic", "suffix")
# vLLM's own field names for its built-in suffix method, and ours (Arctic Inference's names).
_VLLM_SUFFIX_NAMES = {
    "suffix_decoding_max_tree_depth": "suffix_cache_max_depth",
    "suffix_decoding_max_cached_requests": "suffix_cache_max_requests",
    "suffix_decoding_max_spec_factor": "suffix_max_spec_factor",
    "suffix_decoding_min_token_prob": "suffix_min_token_prob",
}


class ConfigError(ValueError):
    """An Arctic engine argument has a bad value; the message names the field."""


# --- environment (read in this one place) ----------------------------------------------------------------------


def skip_version_check() -> bool:
    """`ARCTIC_GEN_SKIP_VERSION_CHECK=1`: apply the patches even outside their declared vLLM version ranges."""
    return os.environ.get("ARCTIC_GEN_SKIP_VERSION_CHECK", "0").strip().lower() in ("1", "true", "yes")


# --- helpers ---------------------------------------------------------------------------------------------------


def _int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r}: expected an integer")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value}: must be >= {minimum}")
    return value


def _float(name: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r}: expected a number")
    value = float(value)
    if low is not None and value < low:
        raise ConfigError(f"{name}={value}: must be >= {low}")
    if high is not None and value > high:
        raise ConfigError(f"{name}={value}: must be <= {high}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r}: expected true or false")
    return value


# --- parallelism -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArcticParallelConfig:
    """Ulysses sequence parallelism and Shift Parallelism (switching between sequence and tensor parallelism)."""

    ulysses_sequence_parallel_size: int = 1
    """Ranks that split each sequence (Ulysses all-to-all attention). 1 = off. The world is TP x SP x PP ranks; the
    model's heads per TP rank must split over SP (checked against the model when the engine config is built)."""
    enable_shift_parallel: bool = False
    """Switch to tensor parallelism across the same GPUs when a step is small (needs ulysses size > 1)."""
    shift_parallel_threshold: int = 512
    """Scheduled tokens per step at or below which Shift Parallelism runs the step tensor-parallel."""

    def __post_init__(self) -> None:
        _int("ulysses_sequence_parallel_size", self.ulysses_sequence_parallel_size, minimum=1)
        _bool("enable_shift_parallel", self.enable_shift_parallel)
        _int("shift_parallel_threshold", self.shift_parallel_threshold, minimum=0)
        if self.enable_shift_parallel and self.ulysses_sequence_parallel_size == 1:
            raise ConfigError(
                "enable_shift_parallel=True: Shift Parallelism shifts between sequence and tensor parallelism and "
                "needs ulysses_sequence_parallel_size > 1; set enable_shift_parallel=False"
            )

    @property
    def is_default(self) -> bool:
        return self == ArcticParallelConfig()


# --- speculation -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArcticSpeculativeConfig:
    """`speculative_config` for the methods the plugin implements.

    `method="arctic"`: a speculator model (MLP/LSTM) and/or suffix decoding; per request and step the suffix draft
    is used when its score is at least the speculator's draft length, else the speculator's draft.
    `method="suffix"`: suffix decoding alone (trees over the prompt and over earlier responses).
    """

    method: str = "arctic"
    """"arctic" or "suffix"."""
    model: str | None = None
    """Speculator checkpoint directory (method "arctic"); None = suffix decoding only."""
    num_speculative_tokens: int | None = None
    """Draft tokens per step from the speculator. Required with a model; suffix-only defaults to the cache depth."""
    enable_suffix_decoding: bool = False
    """Method "arctic": also draft from the suffix trees (always on for method "suffix")."""
    disable_by_batch_size: int | None = None
    """Only the first this-many running requests of the batch draft (Arctic's rule); None = every request."""
    hard_disable_by_batch_size: int | None = None
    """No request drafts while this many or more requests run; None = never."""
    adaptive_draft_length: bool = True
    """Trim each step's drafts to the length that maximizes expected tokens per second, from measured step costs
    and acceptance (`arctic_gen.spec_decode.budget`); False = verify every draft as proposed."""
    uniform_drafts: bool = False
    """Every drafting request of a step gets exactly num_speculative_tokens draft tokens (drafts shorter than that
    are padded with further guesses, which the target verifies like any draft: greedy text is unchanged), and a
    step drafts for all its requests or for none. vLLM replays full CUDA graphs only for such "uniform decode"
    steps (query length 1 + num_speculative_tokens for every request); ragged drafts run piecewise graphs with
    eager attention, or no graphs above the largest capture size. Choose num_speculative_tokens so that
    max_num_seqs * (1 + num_speculative_tokens) <= compilation_config.max_cudagraph_capture_size (vLLM's default:
    min(2 * max_num_seqs * (1 + num_speculative_tokens), 512)). With adaptive_draft_length the cost model decides
    all-or-none per step instead of trimming each draft."""
    suffix_cache_max_depth: int = 64
    """Deepest suffix-tree path kept (a sliding window over each sequence), in tokens."""
    suffix_max_spec_factor: float = 1.0
    """Suffix draft length limit = suffix_max_spec_factor * match length + suffix_max_spec_offset."""
    suffix_max_spec_offset: float = 0.0
    """See suffix_max_spec_factor."""
    suffix_min_token_prob: float = 0.1
    """Drop suffix-draft tokens whose estimated probability falls below this, in [0, 1]."""
    suffix_cache_max_requests: int = 100000
    """Finished responses kept in the global suffix tree; 0 = only the per-request prompt trees."""

    def __post_init__(self) -> None:
        if self.method not in SPECULATIVE_METHODS:
            raise ConfigError(f"speculative_config.method={self.method!r}: the plugin handles {SPECULATIVE_METHODS}")
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ConfigError(f"speculative_config.model={self.model!r}: expected a directory path or null")
        if self.num_speculative_tokens is not None:
            _int("speculative_config.num_speculative_tokens", self.num_speculative_tokens, minimum=1)
        _bool("speculative_config.enable_suffix_decoding", self.enable_suffix_decoding)
        if self.disable_by_batch_size is not None:
            _int("speculative_config.disable_by_batch_size", self.disable_by_batch_size, minimum=1)
        if self.hard_disable_by_batch_size is not None:
            _int("speculative_config.hard_disable_by_batch_size", self.hard_disable_by_batch_size, minimum=1)
        _bool("speculative_config.adaptive_draft_length", self.adaptive_draft_length)
        _bool("speculative_config.uniform_drafts", self.uniform_drafts)
        _int("speculative_config.suffix_cache_max_depth", self.suffix_cache_max_depth, minimum=1)
        _float("speculative_config.suffix_max_spec_factor", self.suffix_max_spec_factor, low=0.0)
        _float("speculative_config.suffix_max_spec_offset", self.suffix_max_spec_offset)
        _float("speculative_config.suffix_min_token_prob", self.suffix_min_token_prob, low=0.0, high=1.0)
        _int("speculative_config.suffix_cache_max_requests", self.suffix_cache_max_requests, minimum=0)
        if self.method == "suffix":
            if self.model is not None:
                raise ConfigError(
                    "speculative_config.model: method 'suffix' takes no model; use method 'arctic' with "
                    "enable_suffix_decoding=true to combine a speculator with suffix decoding"
                )
        elif self.model is None and not self.enable_suffix_decoding:
            raise ConfigError(
                "speculative_config.model: method 'arctic' needs a speculator model, or "
                "enable_suffix_decoding=true (or use method 'suffix')"
            )
        elif self.model is not None and self.num_speculative_tokens is None:
            raise ConfigError("speculative_config.num_speculative_tokens: required with a speculator model (e.g. 3)")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ArcticSpeculativeConfig:
        """Validate a user's `speculative_config` dict (keys may use '-' or '_'); unknown keys are errors."""
        if not isinstance(raw, dict):
            raise ConfigError(f"speculative_config={raw!r}: expected a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            name = str(key).replace("-", "_")
            if name in _VLLM_SUFFIX_NAMES:
                raise ConfigError(
                    f"speculative_config.{name}: this is vLLM's name for its own suffix method; the plugin's "
                    f"suffix decoding calls it {_VLLM_SUFFIX_NAMES[name]!r}"
                )
            if name not in known:
                raise ConfigError(f"speculative_config.{name}: unknown field; known fields: {', '.join(sorted(known))}")
            values[name] = value
        return cls(**values)

    @property
    def uses_suffix(self) -> bool:
        return self.method == "suffix" or self.enable_suffix_decoding

    @property
    def draft_tokens(self) -> int:
        """Draft slots vLLM reserves per step: num_speculative_tokens, else (suffix only) the cache depth."""
        return self.num_speculative_tokens if self.num_speculative_tokens is not None else self.suffix_cache_max_depth


# --- everything together ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArcticConfig:
    """All plugin options of one engine, as stored in `VllmConfig.additional_config["arctic"]`."""

    parallel: ArcticParallelConfig = field(default_factory=ArcticParallelConfig)
    speculative: ArcticSpeculativeConfig | None = None

    @property
    def is_default(self) -> bool:
        return self.parallel.is_default and self.speculative is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "parallel": dataclasses.asdict(self.parallel),
            "speculative": None if self.speculative is None else dataclasses.asdict(self.speculative),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ArcticConfig:
        spec = raw.get("speculative")
        return cls(
            parallel=ArcticParallelConfig(**raw.get("parallel", {})),
            speculative=None if spec is None else ArcticSpeculativeConfig(**spec),
        )

    @classmethod
    def from_vllm_config(cls, vllm_config: Any) -> ArcticConfig:
        """The plugin's options of an engine (defaults when none were given)."""
        extra = vllm_config.additional_config
        if isinstance(extra, dict) and ADDITIONAL_CONFIG_KEY in extra:
            return cls.from_dict(extra[ADDITIONAL_CONFIG_KEY])
        return cls()
