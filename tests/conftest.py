"""Shared test set-up: offline hub, scratch dirs, and the embedding fixtures (MiniLM, sentence-transformers)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_SCRATCH = Path(tempfile.gettempdir()) / "arctic-serve-tests"
_SCRATCH.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("VLLM_CACHE_ROOT", str(_SCRATCH / "vllm-cache"))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from arctic_embed.config import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def st_model(minilm_path: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory):
    """`arctic-embed serve` (what `make serve` runs) on the bundled MiniLM: 2 CPU replicas, 2 tokenizer workers."""
    from arctic_embed.testing import start_server

    log = tmp_path_factory.mktemp("server") / "server.log"
    server = start_server(["--replicas-per-device", "2", "--tokenizer-workers", "2", "--torch-threads", "1",
                           "--max-inputs-per-request", "256", "--max-message-bytes", str(4 * 2**20)],
                          log_path=str(log))
    yield server
    server.stop()
