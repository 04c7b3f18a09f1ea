"""Arctic speculator checkpoints: the config, the `Speculator` base class, and loading/saving in Arctic's format.

Two checkpoint layouts exist, both `model_type: "mlp_speculator"`:

- Arctic's (`architectures: ["ArcticLSTMSpeculatorPreTrainedModel"]`, also `MLPVariantSpeculatorPreTrainedModel`):
  what ArcticTraining writes and Arctic Inference's `ArcticLSTMSpeculator` serves, for both `method: "sum_rnn"`
  (MLP) and `method: "sum_lstm"` (LSTM). `input_hidden_dim` is the base model's hidden size; `emb_dim`,
  `proj_dim` and `inner_dim` are strings of dot-separated layer widths ("4096" or "4096.4096"). Weight names
  (pytorch_model.bin or safetensors): sum_rnn `emb.{k}.0.weight`, `proj.{k}.0.weight`, `ln.{k}.0.{weight,bias}`
  (nn.Sequential per step; extra layers continue the Sequential), `head.{i}.weight`; sum_lstm
  `{forget,input,cell,output}_emb.0.weight`, `{forget,input,cell,output}_proj.{0,1}.weight`,
  `{cell,state}_ln.0.{weight,bias}`, `head.{i}.weight`. With `tie_weights`, steps share emb/ln (index 0) and
  proj for steps >= 1 (index 1); every head name is written (same tensor).
- IBM's MLPSpeculator (`MLPSpeculatorPreTrainedModel`, Arctic's `ArcticMLPSpeculatorPreTrainedModel`): here
  `emb_dim` is the base model's hidden size and `inner_dim` the speculator width (ints); names `emb.{i}.weight`,
  `proj.{i}.weight`, `ln.{i}.{weight,bias}`, `head.{i}.weight`, one per step even when tied.

`save_speculator` writes Arctic's layout (loadable by Arctic Inference's method "arctic" and by us); MLP
speculators loaded from IBM's layout are saved back in IBM's layout. The math (arXiv 2404.19124; Arctic's LSTM
variant) lives in mlp_speculator.py and lstm_speculator.py; this module holds what they share.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

MODEL_TYPE = "mlp_speculator"
ARCTIC_ARCH = "ArcticLSTMSpeculatorPreTrainedModel"
ARCTIC_ARCH_ALIASES = (ARCTIC_ARCH, "MLPVariantSpeculatorPreTrainedModel")
IBM_ARCH = "MLPSpeculatorPreTrainedModel"
IBM_ARCH_ALIASES = (IBM_ARCH, "ArcticMLPSpeculatorPreTrainedModel")
METHODS = ("sum_rnn", "sum_lstm")
WEIGHTS_NAME = "model.safetensors"


class SpeculatorLoadError(ValueError):
    """A speculator directory, config or weight file that cannot be used (the message says what and where)."""


def _dims(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise SpeculatorLoadError(f"{name} must be an int or a dot-separated string of ints, got {value!r}")
    if isinstance(value, int):
        dims: tuple[int, ...] = (value,)
    elif isinstance(value, str):
        try:
            dims = tuple(int(part) for part in value.split("."))
        except ValueError:
            raise SpeculatorLoadError(f"{name} must look like '4096' or '4096.4096', got {value!r}") from None
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        dims = tuple(value)
    else:
        raise SpeculatorLoadError(f"{name} must be an int or a dot-separated string of ints, got {value!r}")
    if not dims or any(d <= 0 for d in dims):
        raise SpeculatorLoadError(f"{name} must hold positive widths, got {value!r}")
    return dims


def _dims_str(dims: tuple[int, ...]) -> str:
    return ".".join(str(d) for d in dims)


@dataclass(frozen=True)
class SpeculatorConfig:
    """One speculator's shape and options (Arctic's config.json fields; see the module docstring for layouts)."""

    n_predict: int = 3
    """Number of draft steps (heads); step i drafts the token i + 1 places after the one just sampled."""
    input_hidden_dim: int = 4096
    """Hidden size of the base model (its last hidden state, after the final norm, is the input of step 0)."""
    inner_dim: tuple[int, ...] = (4096,)
    """Widths of the state norm/MLP stack; the last one is the state width that the heads read."""
    emb_dim: tuple[int, ...] = (4096,)
    """Widths of the token-embedding stack (the last equals proj_dim[-1]; for sum_lstm one width for all)."""
    proj_dim: tuple[int, ...] = (4096,)
    """Widths of the state-projection stack (for sum_lstm each of the 4 gate blocks has proj_dim[0])."""
    vocab_size: int = 32000
    """Vocabulary of the base model (embedding rows and head outputs)."""
    tie_weights: bool = False
    """Share embedding, norms and heads across steps, and the projection across steps >= 1 (sum_lstm needs it)."""
    scale_input: bool = False
    """Normalize the base hidden state (RMS, no weights) and divide by sqrt(2) before step 0."""
    tie_lstm_embs: bool = False
    """sum_lstm only: one token embedding added to all four gate blocks (Arctic Inference serves only this)."""
    method: str = "sum_rnn"
    """"sum_rnn" (MLP speculator) or "sum_lstm" (LSTM speculator)."""
    architecture: str = ARCTIC_ARCH
    """Checkpoint layout: ArcticLSTMSpeculatorPreTrainedModel (Arctic's) or MLPSpeculatorPreTrainedModel (IBM's)."""
    base_model_name_or_path: str = ""
    """Informational: the base model the speculator was trained for."""
    base_model_archs: tuple[str, ...] = ()
    """Architectures of the base model (Arctic Inference checks the served model against these)."""

    def __post_init__(self) -> None:
        for name in ("inner_dim", "emb_dim", "proj_dim"):
            object.__setattr__(self, name, _dims(getattr(self, name), name))
        object.__setattr__(self, "base_model_archs", tuple(self.base_model_archs))
        self.validate()

    # --- validation -----------------------------------------------------------------------------------------

    def validate(self) -> None:
        def bad(msg: str) -> SpeculatorLoadError:
            return SpeculatorLoadError(f"speculator config: {msg}")

        if self.method not in METHODS:
            raise bad(f"method must be one of {METHODS}, got {self.method!r}")
        if self.architecture not in (ARCTIC_ARCH, IBM_ARCH):
            raise bad(f"architecture must be {ARCTIC_ARCH} or {IBM_ARCH}, got {self.architecture!r}")
        for name in ("n_predict", "input_hidden_dim", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise bad(f"{name} must be a positive int, got {value!r}")
        if self.tie_weights and self.n_predict < 2 and self.architecture == IBM_ARCH:
            raise bad(f"{IBM_ARCH} with tie_weights needs n_predict >= 2 (IBM's loaders refuse it)")
        if len(set(self.emb_dim)) != 1 or len(set(self.proj_dim)) != 1:
            raise bad(f"the layers of emb_dim and proj_dim must have one width each (Arctic's layout applies each "
                      f"layer's norm before its linear), got emb_dim={_dims_str(self.emb_dim)} "
                      f"proj_dim={_dims_str(self.proj_dim)}")
        if not self.emb_dim[-1] == self.proj_dim[-1] == self.inner_dim[0]:
            raise bad(f"emb_dim[-1], proj_dim[-1] and inner_dim[0] must be equal (the embedding is added to the "
                      f"projection, then normalized), got {self.emb_dim[-1]}, {self.proj_dim[-1]}, "
                      f"{self.inner_dim[0]}")
        if self.method == "sum_lstm":
            if not self.tie_weights:
                raise bad("method sum_lstm needs tie_weights: true (Arctic's LSTM shares its weights across steps)")
            if len(self.inner_dim) != 1 or len(self.emb_dim) != 1 or len(self.proj_dim) != 1:
                raise bad("method sum_lstm takes one width for inner_dim, emb_dim and proj_dim")
        if self.architecture == IBM_ARCH and (self.method != "sum_rnn" or len(self.inner_dim) != 1
                                              or len(self.emb_dim) != 1 or len(self.proj_dim) != 1):
            raise bad(f"{IBM_ARCH} checkpoints are single-layer sum_rnn speculators")

    # --- derived ----------------------------------------------------------------------------------------------

    @property
    def width(self) -> int:
        """Width of the state the heads read (inner_dim[-1])."""
        return self.inner_dim[-1]

    @property
    def state_weight(self) -> float:
        return 0.5 ** (0.5 / self.n_predict)

    @property
    def emb_weight(self) -> float:
        return math.sqrt((1.0 - self.state_weight**2) * (self.inner_dim[0] / 2.0))

    # --- json -------------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SpeculatorConfig:
        if not isinstance(raw, Mapping):
            raise SpeculatorLoadError("speculator config: config.json must hold a JSON object")
        if raw.get("model_type") != MODEL_TYPE:
            raise SpeculatorLoadError(f"speculator config: model_type must be {MODEL_TYPE!r}, "
                                      f"got {raw.get('model_type')!r}")
        archs = raw.get("architectures") or [ARCTIC_ARCH if "input_hidden_dim" in raw else IBM_ARCH]
        if not isinstance(archs, list) or len(archs) != 1:
            raise SpeculatorLoadError(f"speculator config: architectures must list one name, got {archs!r}")
        arch = archs[0]
        common = {
            "n_predict": raw.get("n_predict"),
            "vocab_size": raw.get("vocab_size"),
            "tie_weights": bool(raw.get("tie_weights", False)),
            "scale_input": bool(raw.get("scale_input", False)),
            "base_model_name_or_path": str(raw.get("base_model_name_or_path") or ""),
            "base_model_archs": tuple(raw.get("base_model_archs") or ()),
        }
        try:
            if arch in ARCTIC_ARCH_ALIASES:
                missing = [k for k in ("n_predict", "input_hidden_dim", "inner_dim", "emb_dim", "proj_dim",
                                       "vocab_size") if k not in raw]
                if missing:
                    raise SpeculatorLoadError(f"speculator config: missing fields {missing}")
                return cls(**common, input_hidden_dim=raw["input_hidden_dim"], inner_dim=raw["inner_dim"],
                           emb_dim=raw["emb_dim"], proj_dim=raw["proj_dim"],
                           tie_lstm_embs=bool(raw.get("tie_lstm_embs", False)),
                           method=raw.get("method", "sum_rnn"), architecture=ARCTIC_ARCH)
            if arch in IBM_ARCH_ALIASES:
                missing = [k for k in ("n_predict", "emb_dim", "vocab_size") if k not in raw]
                if missing:
                    raise SpeculatorLoadError(f"speculator config: missing fields {missing}")
                hidden = raw["emb_dim"]
                inner = raw.get("inner_dim") or hidden
                return cls(**common, input_hidden_dim=hidden, inner_dim=inner, emb_dim=inner, proj_dim=inner,
                           method="sum_rnn", architecture=IBM_ARCH)
        except TypeError as exc:
            raise SpeculatorLoadError(f"speculator config: {exc}") from None
        raise SpeculatorLoadError(f"speculator config: unknown architecture {arch!r} (expected one of "
                                  f"{ARCTIC_ARCH_ALIASES + IBM_ARCH_ALIASES})")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> SpeculatorConfig:
        directory = Path(path)
        if not directory.is_dir():
            raise SpeculatorLoadError(f"speculator directory {str(directory)!r} does not exist or is not a directory")
        config_file = directory / "config.json"
        if not config_file.is_file():
            raise SpeculatorLoadError(f"speculator directory {str(directory)!r} has no config.json")
        try:
            raw = json.loads(config_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SpeculatorLoadError(f"{config_file}: not valid JSON ({exc})") from None
        try:
            return cls.from_dict(raw)
        except SpeculatorLoadError as exc:
            raise SpeculatorLoadError(f"{config_file}: {exc}") from None

    def to_dict(self, torch_dtype: str = "bfloat16") -> dict:
        """config.json content in this config's layout (Arctic's or IBM's)."""
        common = {
            "architectures": [self.architecture],
            "model_type": MODEL_TYPE,
            "base_model_name_or_path": self.base_model_name_or_path,
            "base_model_archs": list(self.base_model_archs),
            "n_predict": self.n_predict,
            "n_candidates": self.n_predict,
            "top_k_tokens_per_head": [1] * self.n_predict,
            "vocab_size": self.vocab_size,
            "tie_weights": self.tie_weights,
            "scale_input": self.scale_input,
            "torch_dtype": torch_dtype,
        }
        if self.architecture == IBM_ARCH:
            return {**common, "emb_dim": self.input_hidden_dim, "inner_dim": self.inner_dim[0]}
        return {**common, "input_hidden_dim": self.input_hidden_dim, "inner_dim": _dims_str(self.inner_dim),
                "emb_dim": _dims_str(self.emb_dim), "proj_dim": _dims_str(self.proj_dim),
                "tie_lstm_embs": self.tie_lstm_embs, "method": self.method}


# --- shared modules ------------------------------------------------------------------------------------------


class SpeculatorNorm(nn.Module):
    """The speculators' norm: x / rms(x) (no mean subtraction), then optional elementwise weight and bias."""

    def __init__(self, dim: int, affine: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(dim))
            self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.affine:
            x = x * self.weight + self.bias
        return x


class Speculator(nn.Module):
    """Base of MLPSpeculator and LSTMSpeculator: step 0 reads the base model's hidden state and the token just
    sampled; step i's state and its greedy token feed step i + 1; head i turns step i's state into logits.

    Subclasses define `initial_carry(hidden)`, `step(i, carry, tokens) -> (carry, state)` (the training loss
    drives them directly), the heads in `self.head`, and `_checkpoint_names` (the map to Arctic's names).
    """

    config: SpeculatorConfig
    n_predict: int
    input_hidden_dim: int
    head: nn.ModuleList

    def __init__(self, config: SpeculatorConfig) -> None:
        super().__init__()
        self.config = config
        self.n_predict = config.n_predict
        self.input_hidden_dim = config.input_hidden_dim
        self.vocab_size = config.vocab_size
        self.state_to_emb = config.emb_weight / config.state_weight
        self.activation = nn.GELU()
        self.ln0 = SpeculatorNorm(config.input_hidden_dim, affine=False) if config.scale_input else None

    # --- subclass contract ------------------------------------------------------------------------------------

    def initial_carry(self, hidden: Tensor) -> Any:
        raise NotImplementedError

    def step(self, i: int, carry: Any, tokens: Tensor) -> tuple[Any, Tensor]:
        raise NotImplementedError

    def _checkpoint_names(self) -> list[tuple[str, str, tuple[slice, ...] | None]]:
        """(checkpoint name, key in self.state_dict(), index into that tensor or None) for every checkpoint
        tensor. Names that resolve to a tensor already listed (tied weights) are aliases: written on save,
        optional on load."""
        raise NotImplementedError

    def arctic_state_dict(self) -> dict[str, Tensor]:
        """Weights under the checkpoint's names (own contiguous tensors, aliases included, safe to save)."""
        params = self.state_dict(keep_vars=True)
        out = {}
        for name, key, index in self._checkpoint_names():
            tensor = params[key].detach()
            out[name] = (tensor if index is None else tensor[index]).clone().contiguous()
        return out

    def load_arctic_state_dict(self, weights: Mapping[str, Tensor]) -> None:
        """Strict load of checkpoint tensors (names and shapes checked; tied aliases may be absent)."""
        params = self.state_dict(keep_vars=True)
        entries = self._checkpoint_names()
        shapes: dict[str, tuple[int, ...]] = {}
        required: list[tuple[str, str, tuple[slice, ...] | None]] = []
        seen: set[tuple] = set()
        for name, key, index in entries:
            target = params[key] if index is None else params[key][index]
            shapes[name] = tuple(target.shape)
            ident = (id(params[key]), repr(index))
            if ident not in seen:
                seen.add(ident)
                required.append((name, key, index))
        missing = sorted(name for name, _, _ in required if name not in weights)
        unexpected = sorted(set(weights) - set(shapes))
        if missing or unexpected:
            raise SpeculatorLoadError(f"weights do not match the config: missing {missing[:6]}"
                                      f"{'...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
                                      f"{'...' if len(unexpected) > 6 else ''}")
        for name, tensor in weights.items():
            if tuple(tensor.shape) != shapes[name]:
                raise SpeculatorLoadError(f"weight {name} has shape {tuple(tensor.shape)}, the config implies "
                                          f"{shapes[name]}")
        with torch.no_grad():
            for name, key, index in required:
                target = params[key] if index is None else params[key][index]
                target.copy_(weights[name].to(target.dtype))

    # --- shared -----------------------------------------------------------------------------------------------

    def _scaled_input(self, hidden: Tensor) -> Tensor:
        if self.ln0 is not None:
            hidden = self.ln0(hidden) / math.sqrt(2.0)
        return hidden

    @property
    def dtype(self) -> torch.dtype:
        return self.head[0].weight.dtype

    def reset_parameters(self) -> None:
        """Arctic's/IBM's initialization: N(0, 1/sqrt(min(shape))) for embeddings and linears, unit norms."""
        for module in self.modules():
            if isinstance(module, (nn.Embedding, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, 1.0 / math.sqrt(min(module.weight.shape)))
            elif isinstance(module, SpeculatorNorm) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, hidden_states: Tensor, input_ids: Tensor) -> Tensor:
        """Training (teacher forcing): hidden_states [B, T, H] at positions t, input_ids [B, T + n_predict] with
        input_ids[:, t + 1 + i] the token fed to head i at position t; returns logits [n_predict, B, T, vocab]
        where head i predicts token t + 2 + i."""
        length = hidden_states.shape[1]
        if input_ids.shape[1] < length + self.n_predict:
            raise ValueError(f"input_ids needs T + n_predict = {length + self.n_predict} columns, "
                             f"got {input_ids.shape[1]}")
        carry = self.initial_carry(hidden_states)
        logits = []
        for i in range(self.n_predict):
            carry, state = self.step(i, carry, input_ids[:, 1 + i:1 + i + length])
            logits.append(self.head[i](state))
        return torch.stack(logits, dim=0)

    @torch.no_grad()
    def propose(self, hidden_states: Tensor, last_token_ids: Tensor, num_tokens: int) -> Tensor:
        """hidden_states [B, input_hidden_dim]: the base model's final hidden state (after its final norm) at each
        request's last accepted position; last_token_ids [B] int64: the token just sampled there. Returns
        [B, num_tokens] int64 greedy drafts (num_tokens <= n_predict). No host synchronisation; fixed shapes."""
        if not 1 <= num_tokens <= self.n_predict:
            raise ValueError(f"num_tokens must be in [1, {self.n_predict}], got {num_tokens}")
        carry = self.initial_carry(hidden_states.to(self.dtype))
        tokens = last_token_ids
        drafts = []
        for i in range(num_tokens):
            carry, state = self.step(i, carry, tokens)
            tokens = torch.argmax(self.head[i](state), dim=-1)
            drafts.append(tokens)
        return torch.stack(drafts, dim=1)


# --- checkpoint io -------------------------------------------------------------------------------------------


def build_speculator(config: SpeculatorConfig) -> Speculator:
    """A freshly initialized speculator of `config.method` (float32, on the CPU)."""
    if config.method == "sum_lstm":
        from arctic_gen.models.lstm_speculator import LSTMSpeculator

        model: Speculator = LSTMSpeculator(config)
    else:
        from arctic_gen.models.mlp_speculator import MLPSpeculator

        model = MLPSpeculator(config)
    model.reset_parameters()
    return model


def _read_weights(directory: Path) -> dict[str, Tensor]:
    shards = sorted(directory.glob("*.safetensors"))
    try:
        if shards:
            from safetensors.torch import load_file

            weights: dict[str, Tensor] = {}
            for shard in shards:
                weights.update(load_file(str(shard)))
            return weights
        binary = directory / "pytorch_model.bin"
        if binary.is_file():
            loaded = torch.load(binary, map_location="cpu", weights_only=True)
            if not isinstance(loaded, dict):
                raise SpeculatorLoadError(f"{binary}: expected a state dict, got {type(loaded).__name__}")
            return loaded
    except SpeculatorLoadError:
        raise
    except Exception as exc:  # corrupt or truncated weight files raise many exception types
        raise SpeculatorLoadError(f"speculator directory {str(directory)!r}: unreadable weights ({exc})") from None
    raise SpeculatorLoadError(f"speculator directory {str(directory)!r} has no *.safetensors or pytorch_model.bin")


def load_speculator(path: str | os.PathLike, device: torch.device | str, dtype: torch.dtype) -> Speculator:
    """Read config.json + weights (Arctic's or IBM's layout), build the MLP or LSTM speculator by `method`,
    and return it in eval mode on device/dtype. Raises SpeculatorLoadError for a bad directory or checkpoint."""
    directory = Path(path)
    config = SpeculatorConfig.from_pretrained(directory)
    weights = {name.removeprefix("speculator."): tensor for name, tensor in _read_weights(directory).items()}
    model = build_speculator(config)
    try:
        model.load_arctic_state_dict(weights)
    except SpeculatorLoadError as exc:
        raise SpeculatorLoadError(f"speculator directory {str(directory)!r}: {exc}") from None
    model.requires_grad_(False)
    return model.to(device=device, dtype=dtype).eval()


def save_speculator(model: Speculator, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> None:
    """Write config.json + model.safetensors in the model's checkpoint layout (Arctic's unless loaded from IBM's),
    in `dtype` (default: the model's)."""
    from safetensors.torch import save_file

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = dtype or model.dtype
    weights = {name: t.detach().to("cpu", dtype).contiguous() for name, t in model.arctic_state_dict().items()}
    tmp = directory / f".{WEIGHTS_NAME}.tmp"
    save_file(weights, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / WEIGHTS_NAME)
    config = model.config.to_dict(str(dtype).removeprefix("torch."))
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


__all__ = [
    "ARCTIC_ARCH",
    "IBM_ARCH",
    "MODEL_TYPE",
    "Speculator",
    "SpeculatorConfig",
    "SpeculatorLoadError",
    "SpeculatorNorm",
    "build_speculator",
    "load_speculator",
    "save_speculator",
    "WEIGHTS_NAME",
]
