"""Every native model file against sentence-transformers on the same directory.

Random-weight models of each family are built on the fly in small shapes (WordPiece, SentencePiece-style Unigram
and byte-level BPE tokenizers), each with a different sentence-transformers head, plus the real MiniLM. Ours runs
float32 on the CPU; 200 varied texts each, long ones past the model's 128-token window truncated the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from arctic_embed.engines import create_engine, engine_for
from arctic_embed.engines.torch_encoder import TorchEncoderEngine
from arctic_embed.model_files import read_model_spec
from arctic_embed.models.random_models import SentenceTransformersFiles, build_random_model
from arctic_embed.testing import varied_texts
from arctic_embed.tokenization import TextTokenizer, TokenizeOptions

GELU = "torch.nn.modules.activation.GELU"
CASES: dict[str, SentenceTransformersFiles] = {
    # arctic-embed-m style: CLS pooling; new-format Pooling config; a Dense head whose activation is GELU.
    "bert": SentenceTransformersFiles(pooling="cls", legacy_pooling_keys=False, dense_out=48, dense_activation=GELU),
    # arctic-embed-l-v2.0 style: XLM-R, SentencePiece Unigram tokenizer, CLS pooling (legacy keys).
    "xlm-roberta": SentenceTransformersFiles(pooling="cls"),
    # byte-level BPE, max pooling, a Dense config without activation_function (sentence-transformers: Tanh).
    "roberta": SentenceTransformersFiles(pooling="max", dense_out=32, dense_activation=None),
    "distilbert": SentenceTransformersFiles(pooling="weightedmean", normalize=False),
    "mpnet": SentenceTransformersFiles(pooling="mean"),  # all-mpnet-base-v2 style
    # no sentence-transformers files at all: the family default (mean), as sentence-transformers does.
    "modernbert": SentenceTransformersFiles(pooling=None),
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: build_random_model(family, root / family, st=st, seed=i)
            for i, (family, st) in enumerate(CASES.items())}


def _ours(path: Path, texts: list[str], engine: TorchEncoderEngine | None = None) -> np.ndarray:
    spec = read_model_spec(path)
    if engine is None:
        engine = TorchEncoderEngine()
        engine.load(spec, "cpu", "float32")
    batch = TextTokenizer(path, spec.max_input_tokens).encode(texts, TokenizeOptions())
    return torch.nn.functional.normalize(engine.embed(batch.ids, batch.lengths), dim=1).numpy()


def _reference(path: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").encode(texts, normalize_embeddings=True, batch_size=64)


@pytest.mark.parametrize("family", list(CASES))
def test_model_file_matches_sentence_transformers(family: str, model_dirs) -> None:
    texts = varied_texts(200, seed=19)
    ours, ref = _ours(model_dirs[family], texts), _reference(model_dirs[family], texts)
    assert float((ours * ref).sum(axis=1).min()) >= 0.9999
    # Not vacuous: the random model tells texts apart.
    assert float((ref @ ref.T)[np.triu_indices(len(texts), 1)].min()) < 0.99


def test_minilm_matches_sentence_transformers_on_200_texts(minilm_path, st_model) -> None:
    texts = varied_texts(200, seed=20)
    ours = _ours(minilm_path, texts)
    assert float((ours * st_model.encode(texts, normalize_embeddings=True)).sum(axis=1).min()) >= 0.9999


def test_spec_reads_heads_as_sentence_transformers_does(model_dirs) -> None:
    bert, roberta = read_model_spec(model_dirs["bert"]), read_model_spec(model_dirs["roberta"])
    assert (bert.pooling, bert.dim, bert.dense_layers[0].activation) == ("cls", 48, GELU)
    assert roberta.dense_layers[0].activation.endswith(".Tanh")  # absent key: sentence-transformers' default
    assert read_model_spec(model_dirs["distilbert"]).pooling == "weightedmean"
    modern = read_model_spec(model_dirs["modernbert"])
    assert modern.pooling == "mean" and modern.pooling_source.startswith("default for encoder")
    engine = TorchEncoderEngine()
    engine.load(modern, "cpu", "float32")
    info = engine.info()
    assert (info.architecture, info.pooling, info.pooling_source) == ("ModernBertModel", "mean", modern.pooling_source)


@pytest.mark.parametrize("family", ["xlm-roberta", "roberta", "modernbert"])
def test_tokenizers_truncate_like_transformers(family: str, model_dirs) -> None:
    """Unigram and byte-level BPE through the same interface as WordPiece, truncation keeping the special tokens."""
    from transformers import AutoTokenizer

    path = model_dirs[family]
    limit = read_model_spec(path).max_input_tokens
    texts = varied_texts(40, seed=21)
    ours = TextTokenizer(path, limit).encode(texts, TokenizeOptions()).split()
    ref = AutoTokenizer.from_pretrained(str(path))(texts, truncation=True, max_length=limit)["input_ids"]
    assert any(len(r) == limit for r in ref)
    assert [o.tolist() for o in ours] == ref


@pytest.mark.parametrize("family", ["mpnet", "modernbert", "bert"])
def test_layouts_agree_padded_uniform_and_bucketed(family: str, model_dirs) -> None:
    """CUDA graphs run the padded layout, equal lengths take the uniform path: all equal the bucketed packed path
    (MPNet: position bias in the mask; ModernBERT: sliding window shorter than the sequences)."""
    path = model_dirs[family]
    spec = read_model_spec(path)
    engine = TorchEncoderEngine()
    engine.load(spec, "cpu", "float32")
    batch = TextTokenizer(path, spec.max_input_tokens).encode(varied_texts(6, seed=8), TokenizeOptions())
    packed = engine.embed(batch.ids, batch.lengths)
    width = min(int(batch.lengths.max()) + 5, spec.max_input_tokens)
    ids = torch.zeros(8, width, dtype=torch.int32)
    mask = torch.zeros(8, width, dtype=torch.bool)
    mask[:, 0] = True
    for i, seq in enumerate(batch.split()):
        ids[i, :seq.size] = torch.from_numpy(seq)
        mask[i, :seq.size] = True
    with torch.inference_mode():
        padded = engine.padded_forward(ids, mask)[:6]
    torch.testing.assert_close(padded, packed, atol=5e-5, rtol=1e-4)
    longest = batch.split()[int(np.argmax(batch.lengths))]
    uniform = engine.embed(np.tile(longest, 3), np.full(3, longest.size, dtype=np.int32))
    torch.testing.assert_close(uniform, packed[int(np.argmax(batch.lengths))].expand(3, -1), atol=5e-5, rtol=1e-4)


def test_health_and_limits(model_dirs) -> None:
    spec = read_model_spec(model_dirs["xlm-roberta"])
    engine = TorchEncoderEngine()
    engine.load(spec, "cpu", "float32")
    assert engine.health().ok
    limits = engine.limits()
    assert limits.max_input_tokens == spec.max_input_tokens == 128 and limits.max_batch_tokens > 0
    engine._model.embeddings.word.fill_(float("nan"))  # a corrupted device state: the probe must catch it
    health = engine.health()
    assert not health.ok and "non-finite" in health.message


def test_unknown_architecture_goes_to_vllm_with_a_log_line(tmp_path, caplog, minilm_path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", '
                                          '"hidden_size": 64, "vocab_size": 100}')
    spec = read_model_spec(tmp_path)
    assert spec.pooling == "lasttoken" and spec.pooling_source.startswith("default for decoder")
    with caplog.at_level(logging.WARNING, logger="arctic_embed.engines"):
        assert engine_for("torch", spec) == "vllm"
        assert type(create_engine("torch", spec=spec)).__name__ == "VllmPoolingEngine"
    assert "no native model file" in caplog.text and "qwen3" in caplog.text
    assert engine_for("torch", read_model_spec(minilm_path)) == "torch"
