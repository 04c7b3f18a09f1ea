"""Random-weight checkpoints of every native family (and a Qwen3 decoder embedder), built on the fly for tests and
GPU benchmarks: a transformers config + model saved with a tokenizer of the family's kind and sentence-transformers
files. No hub access. Random weights are fine for parity and speed, never for accuracy.

Tokenizers: WordPiece (MiniLM's files, `load_tests/assets/minilm_tokenizer`), SentencePiece-style Unigram with a
Metaspace pre-tokenizer (XLM-R), and byte-level BPE (RoBERTa, ModernBERT, Qwen3), the last two trained in a second
with `tokenizers` on `varied_texts`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arctic_embed.testing import varied_texts

MINILM_TOKENIZER = Path(__file__).resolve().parents[2] / "load_tests" / "assets" / "minilm_tokenizer"
WORDPIECE_VOCAB = 30522


@dataclass(frozen=True)
class SentenceTransformersFiles:
    """What to write next to the checkpoint; `pooling=None` writes no sentence-transformers files at all."""

    pooling: str | None = "mean"
    legacy_pooling_keys: bool = True
    dense_out: int = 0
    dense_activation: str | None = "torch.nn.modules.activation.Tanh"
    normalize: bool = True
    max_seq_length: int = 128
    prompts: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- tokenizers
def _corpus() -> list[str]:
    return varied_texts(600, seed=123)


def unigram_tokenizer(vocab_size: int = 600):
    """XLM-R-shaped: <s>=0 <pad>=1 </s>=2 <unk>=3, Metaspace (▁) pre-tokenizer, `<s> $A </s>`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    special = ["<s>", "<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(_corpus(), trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special,
                                                               unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok, {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                 "cls_token": "<s>", "sep_token": "</s>"}


def byte_bpe_tokenizer(specials: list[str], template: tuple[str, str] | None, vocab_size: int = 700):
    """Byte-level BPE with `specials` first (ids 0..k-1) and an optional `(first, last)` special-token template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if template is not None:
        first, last = template
        parts = [p for p in (first, "$A", last) if p]
        tok.post_processor = processors.TemplateProcessing(
            single=" ".join(parts), special_tokens=[(s, specials.index(s)) for s in (first, last) if s])
    return tok


def _save_tokenizer(tok, out: Path, special_tokens: dict[str, str], max_length: int) -> None:  # noqa: ANN001
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **special_tokens)
    fast.save_pretrained(str(out))


def _copy_wordpiece(out: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (out / name).write_bytes((MINILM_TOKENIZER / name).read_bytes())


# ------------------------------------------------------------------------------------------------- checkpoints
def _randomize(model: torch.nn.Module, seed: int, scale: float) -> None:
    """Weights large enough that every op matters (HF's 0.02 init makes all outputs nearly alike)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * scale / p.shape[-1] ** 0.5)
            elif "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def write_sentence_transformers_files(out: Path, hidden: int, st: SentenceTransformersFiles, seed: int = 0) -> None:
    if st.prompts:  # instruction prefixes live apart from the module list (Qwen3-Embedding has prompts only)
        (out / "config_sentence_transformers.json").write_text(json.dumps({"prompts": st.prompts,
                                                                           "default_prompt_name": None}))
    if st.pooling is None:
        return
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": st.max_seq_length,
                                                               "do_lower_case": False}))
    pool_dir = out / "1_Pooling"
    pool_dir.mkdir(exist_ok=True)
    if st.legacy_pooling_keys:
        legacy = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens", "lasttoken": "lasttoken",
                  "mean_sqrt_len": "mean_sqrt_len_tokens", "weightedmean": "weightedmean_tokens"}
        pool_cfg: dict = {f"pooling_mode_{v}": k == st.pooling for k, v in legacy.items()}
        pool_cfg["word_embedding_dimension"] = hidden
    else:
        name = "mean_sqrt_len_tokens" if st.pooling == "mean_sqrt_len" else st.pooling
        pool_cfg = {"embedding_dimension": hidden, "pooling_mode": name, "include_prompt": True}
    (pool_dir / "config.json").write_text(json.dumps(pool_cfg))
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if st.dense_out:
        from safetensors.torch import save_file

        dense_dir = out / "2_Dense"
        dense_dir.mkdir(exist_ok=True)
        cfg = {"in_features": hidden, "out_features": st.dense_out, "bias": True}
        if st.dense_activation is not None:  # None: the key is absent (sentence-transformers then means Tanh)
            cfg["activation_function"] = st.dense_activation
        (dense_dir / "config.json").write_text(json.dumps(cfg))
        gen = torch.Generator().manual_seed(seed + 7)
        save_file({"linear.weight": torch.randn(st.dense_out, hidden, generator=gen) / hidden ** 0.5,
                   "linear.bias": 0.3 * torch.randn(st.dense_out, generator=gen)}, str(dense_dir / "model.safetensors"))
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    if st.normalize:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": "3_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (out / "3_Normalize").mkdir(exist_ok=True)
    (out / "modules.json").write_text(json.dumps(modules))


@dataclass(frozen=True)
class Shape:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 128
    max_positions: int = 130


TINY = Shape()
BASE = Shape(hidden=768, layers=12, heads=12, intermediate=3072, max_positions=514)
FAMILIES = ("bert", "xlm-roberta", "roberta", "distilbert", "mpnet", "modernbert", "qwen3")


def build_config(family: str, shape: Shape, vocab_size: int, specials: dict[str, int]):  # noqa: ANN201
    """A transformers config of `family` at `shape` (specials: pad/bos/eos/cls/sep ids of the tokenizer)."""
    from transformers import (
        BertConfig,
        DistilBertConfig,
        ModernBertConfig,
        MPNetConfig,
        Qwen3Config,
        RobertaConfig,
        XLMRobertaConfig,
    )

    common = {"vocab_size": vocab_size, "hidden_size": shape.hidden, "num_hidden_layers": shape.layers,
              "num_attention_heads": shape.heads, "intermediate_size": shape.intermediate}
    if family == "bert":
        return BertConfig(max_position_embeddings=shape.max_positions, **common)
    if family in ("roberta", "xlm-roberta"):
        cls = RobertaConfig if family == "roberta" else XLMRobertaConfig
        return cls(max_position_embeddings=shape.max_positions + 2, pad_token_id=specials["pad"],
                   bos_token_id=specials["bos"], eos_token_id=specials["eos"], type_vocab_size=1, **common)
    if family == "distilbert":
        return DistilBertConfig(vocab_size=vocab_size, dim=shape.hidden, n_layers=shape.layers, n_heads=shape.heads,
                                hidden_dim=shape.intermediate, max_position_embeddings=shape.max_positions)
    if family == "mpnet":
        return MPNetConfig(max_position_embeddings=shape.max_positions + 2, **common)
    if family == "modernbert":
        return ModernBertConfig(max_position_embeddings=max(shape.max_positions, 512), local_attention=16
                                if shape.hidden < 256 else 128, global_attn_every_n_layers=2 if shape.layers < 4
                                else 3, pad_token_id=specials["pad"], bos_token_id=specials["cls"],
                                eos_token_id=specials["sep"], cls_token_id=specials["cls"],
                                sep_token_id=specials["sep"], **common)
    if family == "qwen3":
        return Qwen3Config(num_key_value_heads=max(1, shape.heads // 2), head_dim=shape.hidden // shape.heads,
                           max_position_embeddings=max(shape.max_positions, 512), tie_word_embeddings=True,
                           bos_token_id=specials["eos"], eos_token_id=specials["eos"], pad_token_id=specials["pad"],
                           **common)
    raise ValueError(f"unknown family {family!r} (one of {FAMILIES})")


def _tokenizer_for(family: str, out: Path, max_length: int) -> tuple[int, dict[str, int]]:
    """Write the family's tokenizer into `out`; return (vocab size, special ids)."""
    if family in ("bert", "distilbert", "mpnet"):
        _copy_wordpiece(out)
        return WORDPIECE_VOCAB, {"pad": 0, "bos": 101, "eos": 102, "cls": 101, "sep": 102}
    if family == "xlm-roberta":
        tok, names = unigram_tokenizer()
        _save_tokenizer(tok, out, names, max_length)
        return tok.get_vocab_size(), {"pad": 1, "bos": 0, "eos": 2, "cls": 0, "sep": 2}
    if family == "roberta":
        tok = byte_bpe_tokenizer(["<s>", "<pad>", "</s>", "<unk>"], ("<s>", "</s>"))
        _save_tokenizer(tok, out, {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                                   "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>"}, max_length)
        return tok.get_vocab_size(), {"pad": 1, "bos": 0, "eos": 2, "cls": 0, "sep": 2}
    if family == "modernbert":
        tok = byte_bpe_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], ("[CLS]", "[SEP]"))
        _save_tokenizer(tok, out, {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                                   "sep_token": "[SEP]", "mask_token": "[MASK]"}, max_length)
        return tok.get_vocab_size(), {"pad": 0, "bos": 2, "eos": 3, "cls": 2, "sep": 3}
    if family == "qwen3":  # Qwen3-Embedding appends <|endoftext|> to every input
        tok = byte_bpe_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], ("", "<|endoftext|>"))
        _save_tokenizer(tok, out, {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, max_length)
        return tok.get_vocab_size(), {"pad": 0, "bos": 0, "eos": 0, "cls": 0, "sep": 0}
    raise ValueError(f"unknown family {family!r}")


def build_random_model(family: str, out: Path, shape: Shape = TINY, st: SentenceTransformersFiles | None = None,
                       seed: int = 0, vocab_size: int | None = None, dtype: torch.dtype = torch.float32,
                       with_tokenizer: bool = True, scale: float = 1.0) -> Path:
    """Save a random `family` model (+ tokenizer + sentence-transformers files) into `out` and return it.

    `vocab_size` overrides the tokenizer's (benchmarks use the real vocabulary size; ids stay below the
    tokenizer's anyway)."""
    from transformers import AutoModel, AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    if with_tokenizer:
        vocab, specials = _tokenizer_for(family, out, shape.max_positions)
    else:
        vocab, specials = WORDPIECE_VOCAB, {"pad": 1, "bos": 0, "eos": 2, "cls": 0, "sep": 2}
    config = build_config(family, shape, vocab_size or vocab, specials)
    torch.manual_seed(seed)
    # Decoder embedders ship as *ForCausalLM checkpoints (Qwen3-Embedding does); encoders as base models.
    model = (AutoModelForCausalLM if family == "qwen3" else AutoModel).from_config(config)
    _randomize(model, seed, scale)
    model.to(dtype).save_pretrained(str(out))
    write_sentence_transformers_files(out, shape.hidden, st if st is not None else SentenceTransformersFiles(),
                                      seed)
    return out
