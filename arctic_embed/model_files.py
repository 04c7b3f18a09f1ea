"""Reads what a sentence-transformers model directory says about serving it.

The serving limit comes from `sentence_bert_config.json` (`max_seq_length`), not from the tokenizer file, which
may carry fixed padding/truncation of its own. Pooling mode, normalization, prompts and dense layers come from
`modules.json` and the module directories, read the way sentence-transformers reads them (legacy `pooling_mode_*`
flags or the newer `pooling_mode` string; a Dense config without `activation_function` means Tanh).

A directory without sentence-transformers files gets its family's documented default (`FAMILY_DEFAULT_POOLING`):
mean pooling for encoders (what sentence-transformers itself does when it wraps a plain transformers model) and
last-token pooling for decoder embedders (Qwen3-Embedding, e5-mistral, gte-Qwen2). `ModelSpec.pooling_source` says
which one applied, and `Info` reports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

POOLING_MODES = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len", "weightedmean")
_MODE_NAMES = {"mean_sqrt_len_tokens": "mean_sqrt_len", "mean_tokens": "mean", "cls_token": "cls",
               "max_tokens": "max", "weightedmean_tokens": "weightedmean"}
DENSE_DEFAULT_ACTIVATION = "torch.nn.modules.activation.Tanh"
"""sentence-transformers' `Dense` default; its saves may omit the key when it is the default."""
DECODER_MODEL_TYPES = ("qwen2", "qwen3", "mistral", "llama", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3")
FAMILY_DEFAULT_POOLING = {"decoder": "lasttoken", "encoder": "mean"}


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers `Dense` module applied after pooling."""

    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str
    residual: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """Everything the service needs to know about a model directory, read once at start-up."""

    path: Path
    name: str
    architecture: str
    model_type: str
    hidden_size: int
    dim: int
    vocab_size: int
    max_input_tokens: int
    pooling: str = "mean"
    normalize: bool = True
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    dense_layers: tuple[DenseLayer, ...] = ()
    pooling_source: str = "modules.json"
    """Where `pooling` came from: "modules.json", or "default for <family>" when the directory has no
    sentence-transformers Pooling module."""
    include_prompt: bool = True


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _pooling_mode(config: dict) -> str:
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        if isinstance(mode, list):
            if len(mode) != 1:
                raise ValueError(f"concatenated pooling modes {mode} are not supported; use one mode")
            mode = mode[0]
        return _MODE_NAMES.get(str(mode), str(mode))
    for key, mode in (("pooling_mode_cls_token", "cls"), ("pooling_mode_lasttoken", "lasttoken"),
                      ("pooling_mode_max_tokens", "max"), ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
                      ("pooling_mode_weightedmean_tokens", "weightedmean"), ("pooling_mode_mean_tokens", "mean")):
        if config.get(key):
            return mode
    return "mean"


def read_model_spec(path: str | Path, name: str | None = None) -> ModelSpec:
    """Read a Hugging Face / sentence-transformers model directory into a `ModelSpec`."""
    root = Path(path)
    config = _read_json(root / "config.json")
    if not config:
        raise FileNotFoundError(f"{root}: no config.json; expected a Hugging Face model directory")
    st_config = _read_json(root / "sentence_bert_config.json")
    st_meta = _read_json(root / "config_sentence_transformers.json")
    modules = _read_json(root / "modules.json") if (root / "modules.json").is_file() else []
    hidden = int(config.get("hidden_size") or config.get("d_model") or config.get("dim") or 0)
    max_positions = int(config.get("max_position_embeddings", 512))
    # RoBERTa-style models reserve padding_idx + 1 positions.
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        max_positions -= int(config.get("pad_token_id", 1)) + 1
    elif config.get("model_type") == "mpnet":  # MPNet's position padding index is fixed at 1
        max_positions -= 2
    # As sentence-transformers: its own max_seq_length, else the tokenizer's model_max_length, capped by positions.
    tokenizer_limit = _read_json(root / "tokenizer_config.json").get("model_max_length")
    max_tokens = int(st_config.get("max_seq_length") or (tokenizer_limit if isinstance(tokenizer_limit, int)
                                                          and tokenizer_limit < 10**7 else max_positions))
    max_tokens = min(max_tokens, max_positions)

    family = "decoder" if config.get("model_type") in DECODER_MODEL_TYPES else "encoder"
    pooling = FAMILY_DEFAULT_POOLING[family]
    pooling_source = f"default for {family} models (no sentence-transformers Pooling module)"
    include_prompt = True
    normalize = False
    dense: list[DenseLayer] = []
    dim = hidden
    for module in modules:
        kind = str(module.get("type", ""))
        module_dir = root / module.get("path", "")
        if kind.endswith("Pooling"):
            pooling_cfg = _read_json(module_dir / "config.json")
            pooling = _pooling_mode(pooling_cfg)
            pooling_source = "modules.json"
            include_prompt = bool(pooling_cfg.get("include_prompt", True))
        elif kind.endswith("Normalize"):
            normalize = True
        elif kind.endswith("Dense"):
            dense_cfg = _read_json(module_dir / "config.json")
            layer = DenseLayer(
                path=module_dir,
                in_features=int(dense_cfg["in_features"]),
                out_features=int(dense_cfg["out_features"]),
                bias=bool(dense_cfg.get("bias", True)),
                activation=str(dense_cfg.get("activation_function") or DENSE_DEFAULT_ACTIVATION),
                residual=bool(dense_cfg.get("use_residual", False)),
            )
            dense.append(layer)
            dim = layer.out_features
    if pooling not in POOLING_MODES:
        raise ValueError(f"{root}: pooling mode {pooling!r} is not supported (one of {POOLING_MODES})")
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    return ModelSpec(
        path=root,
        name=name or root.name,
        architecture=str(architectures[0]),
        model_type=str(config.get("model_type", "")),
        hidden_size=hidden,
        dim=dim,
        vocab_size=int(config.get("vocab_size", 0)),
        max_input_tokens=max_tokens,
        pooling=pooling,
        normalize=normalize,
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        prompts={str(k): str(v) for k, v in (st_meta.get("prompts") or {}).items()},
        default_prompt_name=st_meta.get("default_prompt_name"),
        dense_layers=tuple(dense),
        pooling_source=pooling_source,
        include_prompt=include_prompt,
    )
