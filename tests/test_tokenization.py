import numpy as np
import pytest

from arctic_embed.errors import InvalidInput
from arctic_embed.model_files import read_model_spec
from arctic_embed.tokenization import TextTokenizer, TokenizeOptions


@pytest.fixture(scope="module")
def tokenizer(minilm_path) -> TextTokenizer:
    spec = read_model_spec(minilm_path)
    return TextTokenizer(minilm_path, spec.max_input_tokens, spec.do_lower_case)


def test_limit_comes_from_the_sentence_transformers_config_not_the_tokenizer_file(minilm_path) -> None:
    # tokenizer.json pads/truncates to 128; sentence_bert_config.json says 256.
    assert read_model_spec(minilm_path).max_input_tokens == 256


def test_matches_sentence_transformers_tokenization_including_truncation(tokenizer, st_model) -> None:
    texts = ["hello world", "word " * 400, "日本語 🚀 café", "", "a\x00b"]
    batch = tokenizer.encode(texts, TokenizeOptions())
    features = st_model.tokenize(texts)
    for ids, ref, mask in zip(batch.split(), features["input_ids"], features["attention_mask"], strict=True):
        np.testing.assert_array_equal(ids, ref[mask.bool()].numpy())
    assert batch.lengths.tolist()[1] == 256


def test_left_truncation_keeps_special_tokens_and_the_end_of_the_text(tokenizer) -> None:
    text = " ".join(f"w{i}" for i in range(600))
    full = tokenizer._tok.encode(text).ids
    left = tokenizer.encode([text], TokenizeOptions(truncate_left=True)).ids
    right = tokenizer.encode([text], TokenizeOptions()).ids
    assert left.size == right.size == 256
    assert left[0] == right[0] == 101 and left[-1] == right[-1] == 102
    assert left[1:-1].tolist() == full[-255:-1]
    assert right[1:-1].tolist() == full[1:255]


def test_too_long_without_truncation_is_invalid(tokenizer) -> None:
    with pytest.raises(InvalidInput, match="over the model's limit of 256"):
        tokenizer.encode(["ok", "word " * 300], TokenizeOptions(truncate=False))


def test_prefix_is_prepended(tokenizer) -> None:
    with_prefix = tokenizer.encode(["hello"], TokenizeOptions(prefix="query: ")).ids
    assert with_prefix.tolist() == tokenizer.encode(["query: hello"], TokenizeOptions()).ids.tolist()


def test_pool_workers_and_inline_path_agree(minilm_path) -> None:
    """Small requests are tokenized in the gateway, large ones in worker processes: same ids either way."""
    import asyncio

    from arctic_embed.testing import varied_texts
    from arctic_embed.tokenizer_pool import INLINE_MAX_TEXTS, TokenizerPool

    texts = varied_texts(80, seed=2)

    async def run() -> tuple[list, list, str]:
        pool = TokenizerPool(str(minilm_path), 256, False, workers=2)
        await pool.start()
        try:
            big = await pool.tokenize(texts, TokenizeOptions())
            small = [await pool.tokenize(texts[i:i + INLINE_MAX_TEXTS], TokenizeOptions())
                     for i in range(0, len(texts), INLINE_MAX_TEXTS)]
            with pytest.raises(InvalidInput) as err:
                await pool.tokenize(["x " * 600] * 40, TokenizeOptions(truncate=False))
        finally:
            await pool.close()
        return big.split(), [a for b in small for a in b.split()], str(err.value)

    big, small, message = asyncio.run(run())
    assert [a.tolist() for a in big] == [a.tolist() for a in small]
    assert "over the model's limit" in message
