"""Model ids: a local directory, or a Hugging Face Hub id resolved through the standard Hugging Face cache.

Online, a Hub id is downloaded into the cache (`HF_HUB_CACHE` / `HF_HOME`, as every Hugging Face library does);
offline (`HF_HUB_OFFLINE=1`, or no network) it is found there. When neither works the caller gets `ModelNotFound`
with a one-line reason, never a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

# What a serving process reads from a model repository (weights in safetensors, configs, tokenizer, modules).
_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.py", "*/*.json", "*/*.safetensors",
                   "*/*.txt"]
# Fetched only when a repository has no safetensors weights (the loader reads pytorch_model.bin too).
_BIN_PATTERNS = ["pytorch_model*.bin", "pytorch_model.bin.index.json", "*/pytorch_model*.bin"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class ModelNotFound(Exception):
    """The model is neither a local directory nor a Hub id that can be fetched or found in the cache."""


def looks_like_repo_id(name: str) -> bool:
    """`org/name` or `name`, without path syntax (`./x`, `/x`, `~/x`, `a/b/c`)."""
    return bool(_REPO_ID.match(name)) and ".." not in name


def resolve_model(name: str, revision: str | None = None) -> Path:
    """A local model directory for `name` (a path or a Hub id)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path}: no config.json; expected a Hugging Face model directory")
        return path
    if path.exists():
        raise ModelNotFound(f"{path} is a file; --model takes a model directory or a Hugging Face Hub id")
    if not looks_like_repo_id(name):
        raise ModelNotFound(f"{name}: no such directory (and not a Hugging Face Hub id like 'org/name')")
    return _from_hub(name, revision)


def _from_hub(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise ModelNotFound(f"{repo_id}: no such directory, and huggingface_hub is not installed ({exc})") from None
    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        local = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_ALLOW_PATTERNS,
                                       local_files_only=offline))
        if not any(local.glob("*.safetensors")):  # an older repository: PyTorch pickles only
            local = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_BIN_PATTERNS,
                                           local_files_only=offline))
    except LocalEntryNotFoundError:
        where = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise ModelNotFound(f"{repo_id}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {where}; "
                            "download it once online or pass a local directory") from None
    except GatedRepoError:
        raise ModelNotFound(f"{repo_id}: gated on the Hub; accept its terms and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise ModelNotFound(f"{repo_id}: no such model on the Hub (or it is private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise ModelNotFound(f"{repo_id}: revision {revision!r} not found on the Hub") from None
    except Exception as exc:  # network errors come in many classes; the user needs the one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(f"{repo_id}: could not fetch it from the Hub: {first}") from None
    if not (local / "config.json").is_file():
        raise ModelNotFound(f"{repo_id}: the Hub snapshot at {local} has no config.json")
    return local
