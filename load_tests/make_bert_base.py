"""Build a bert-base-shaped model directory with random weights and the MiniLM tokenizer (same 30522 vocab).

    python load_tests/make_bert_base.py OUT_DIR [--tokenizer-dir DIR] [--max-seq-length 512]

768-d, 12 layers, 12 heads, 3072 FFN (the shape of snowflake-arctic-embed-m-v1.5), mean pooling + normalize, as a
sentence-transformers directory. Random weights are fine for speed, never for accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def default_tokenizer_dir() -> Path:
    bundled = Path(__file__).resolve().parent / "assets" / "minilm_tokenizer"
    if bundled.is_dir():
        return bundled
    from arctic_embed.config import default_model_path

    return default_model_path()


def build(out: Path, tokenizer_dir: Path, max_seq_length: int = 512, layers: int = 12, hidden: int = 768,
          heads: int = 12, ffn: int = 3072, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    out.mkdir(parents=True, exist_ok=True)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, max_position_embeddings=512)
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=False).half()
    model.save_pretrained(str(out), safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                               "do_lower_case": False}))
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": hidden,
                                                               "pooling_mode_mean_tokens": True}))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--tokenizer-dir", type=Path, default=None)
    parser.add_argument("--max-seq-length", type=int, default=512)
    args = parser.parse_args()
    print(build(args.out, args.tokenizer_dir or default_tokenizer_dir(), args.max_seq_length))
