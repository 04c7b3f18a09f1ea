"""The native torch engine against sentence-transformers on the same model directory."""

import numpy as np
import pytest
import torch

from arctic_embed.encoding import OutputOptions, encode_rows
from arctic_embed.engines.torch_encoder import TorchEncoderEngine, plan_buckets
from arctic_embed.model_files import read_model_spec
from arctic_embed.testing import varied_texts
from arctic_embed.tokenization import TextTokenizer, TokenizeOptions


@pytest.fixture(scope="module")
def setup(minilm_path):
    spec = read_model_spec(minilm_path)
    return spec, TextTokenizer(minilm_path, spec.max_input_tokens)


def _embed(spec, tokenizer, texts, dtype: str) -> np.ndarray:
    engine = TorchEncoderEngine()
    engine.load(spec, "cpu", dtype)
    batch = tokenizer.encode(texts, TokenizeOptions())
    rows, _ = encode_rows(engine.embed(batch.ids, batch.lengths), OutputOptions())
    return rows.view(torch.float32).numpy()


def test_float32_matches_sentence_transformers(setup, st_model) -> None:
    texts = varied_texts(60, seed=3)
    ours = _embed(*setup, texts, "float32")
    ref = st_model.encode(texts, normalize_embeddings=True)
    assert (ours * ref).sum(axis=1).min() >= 0.9999


def test_reduced_precision_path_equals_the_float32_reference(setup) -> None:
    """The GPU fast path runs fp16/bf16: on the CPU the same code must stay within cosine 0.999 of fp32."""
    texts = varied_texts(20, seed=4)
    ref = _embed(*setup, texts, "float32")
    for dtype in ("float16", "bfloat16"):
        assert (_embed(*setup, texts, dtype) * ref).sum(axis=1).min() >= 0.999, dtype


def test_batch_composition_does_not_change_a_vector(setup) -> None:
    texts = varied_texts(12, seed=5)
    together = _embed(*setup, texts, "float32")
    alone = np.concatenate([_embed(*setup, [t], "float32") for t in texts[:4]])
    np.testing.assert_allclose(together[:4], alone, atol=2e-6)


def test_buckets_cover_every_sequence_once_with_bounded_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=200)
    buckets = plan_buckets(lengths, slack=1.2)
    seen = np.sort(np.concatenate(buckets))
    np.testing.assert_array_equal(seen, np.arange(200))
    for b in buckets:
        if b.size > 1:
            assert lengths[b].max() * b.size <= 1.2 * lengths[b].sum()


def test_padded_forward_used_by_cuda_graphs_equals_the_packed_path(setup) -> None:
    """The CUDA-graph path (static padded shapes) must give the packed path's vectors; checked here on the CPU."""
    spec, tokenizer = setup
    engine = TorchEncoderEngine()
    engine.load(spec, "cpu", "float32")
    batch = tokenizer.encode(varied_texts(6, seed=8), TokenizeOptions())
    packed = engine.embed(batch.ids, batch.lengths)
    width = int(batch.lengths.max()) + 5
    ids = torch.zeros(8, width, dtype=torch.int32)
    mask = torch.zeros(8, width, dtype=torch.bool)
    mask[:, 0] = True
    for i, seq in enumerate(batch.split()):
        ids[i, :seq.size] = torch.from_numpy(seq)
        mask[i, :seq.size] = True
    with torch.inference_mode():
        padded = engine.padded_forward(ids, mask)[:6]
    torch.testing.assert_close(padded, packed, atol=2e-5, rtol=1e-4)
