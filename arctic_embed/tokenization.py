"""Text → token ids for the served model: prefixes, lower-casing, truncation on either side, length checks.

Built on Hugging Face `tokenizers`. The model directory's tokenizer.json may carry fixed padding and truncation of
its own (all-MiniLM-L6-v2's pads to 128): both are switched off here and our own limit (`ModelSpec.max_input_tokens`,
from the sentence-transformers config) applies, keeping the special tokens at both ends as sentence-transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from arctic_embed.errors import InvalidInput


@dataclass(frozen=True)
class TokenizeOptions:
    prefix: str = ""
    truncate: bool = True
    truncate_left: bool = False


@dataclass
class TokenBatch:
    """Token ids of many inputs, concatenated: `ids[offsets[i]:offsets[i+1]]` is input i."""

    ids: np.ndarray  # int32 [total]
    lengths: np.ndarray  # int32 [n]

    @property
    def total(self) -> int:
        return int(self.ids.size)

    def offsets(self) -> np.ndarray:
        out = np.zeros(self.lengths.size + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    def split(self) -> list[np.ndarray]:
        offsets = self.offsets()
        return [self.ids[offsets[i]:offsets[i + 1]] for i in range(self.lengths.size)]

    @classmethod
    def from_arrays(cls, arrays: list[np.ndarray]) -> TokenBatch:
        lengths = np.fromiter((a.size for a in arrays), dtype=np.int32, count=len(arrays))
        ids = np.concatenate(arrays).astype(np.int32, copy=False) if arrays else np.zeros(0, np.int32)
        return cls(ids, lengths)


class TextTokenizer:
    """The model's tokenizer with the service's truncation rules. Thread-compatible, not thread-safe."""

    def __init__(self, model_path: str | Path, max_tokens: int, lower_case: bool = False) -> None:
        self._tok = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.no_truncation()
        self.max_tokens = max_tokens
        self.lower_case = lower_case
        probe = self._tok.encode("a")
        mask = probe.special_tokens_mask
        self.leading_special = next((i for i, m in enumerate(mask) if not m), len(mask))
        self.trailing_special = next((i for i, m in enumerate(reversed(mask)) if not m), 0)
        if self.leading_special + self.trailing_special >= max_tokens:
            raise ValueError(f"max_tokens={max_tokens} leaves no room for text after the special tokens")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: list[str], options: TokenizeOptions) -> TokenBatch:
        """Tokenize a batch. Raises InvalidInput for an input over the limit when truncation is off."""
        if options.prefix:
            texts = [options.prefix + t for t in texts]
        if self.lower_case:
            texts = [t.lower() for t in texts]
        encodings = self._tok.encode_batch_fast(texts) if hasattr(self._tok, "encode_batch_fast") \
            else self._tok.encode_batch(texts)
        arrays = [np.asarray(e.ids, dtype=np.int32) for e in encodings]
        limit = self.max_tokens
        for i, ids in enumerate(arrays):
            if ids.size <= limit:
                continue
            if not options.truncate:
                raise InvalidInput(
                    f"input {i} has {ids.size} tokens, over the model's limit of {limit}; "
                    "send truncate=true or a shorter text")
            arrays[i] = self._truncate(ids, options.truncate_left)
        return TokenBatch.from_arrays(arrays)

    def _truncate(self, ids: np.ndarray, left: bool) -> np.ndarray:
        head, tail = self.leading_special, self.trailing_special
        keep = self.max_tokens - head - tail
        body = ids[head:ids.size - tail]
        body = body[body.size - keep:] if left else body[:keep]
        return np.concatenate([ids[:head], body, ids[ids.size - tail:]])
