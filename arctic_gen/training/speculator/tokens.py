"""Token files of the data stage and the batches the train stage reads from them.

A data directory holds `data_config.json` and two splits, `train/` and `held_out/`, each a set of
`shard_NNNNN.npz` files written atomically (a shard that exists is complete: that is what makes the data stage
resumable). A shard stores sequences (prompt followed by one generated continuation) as one flat int32 array
`tokens`, their boundaries `offsets` (int64, n + 1) and `prompt_lens` (int32, n).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "held_out")


@dataclass
class Sequences:
    tokens: np.ndarray
    offsets: np.ndarray
    prompt_lens: np.ndarray

    def __len__(self) -> int:
        return len(self.prompt_lens)

    def get(self, i: int) -> tuple[np.ndarray, int]:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]], int(self.prompt_lens[i])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def completion_tokens(self) -> int:
        return int(self.lengths.sum() - self.prompt_lens.sum())

    @classmethod
    def from_lists(cls, sequences: list[list[int]], prompt_lens: list[int]) -> Sequences:
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(s) for s in sequences])
        flat = np.fromiter((t for s in sequences for t in s), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets, np.asarray(prompt_lens, dtype=np.int32))

    @classmethod
    def concat(cls, parts: list[Sequences]) -> Sequences:
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int32))
        tokens = np.concatenate([p.tokens for p in parts])
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += int(p.offsets[-1])
        return cls(tokens, np.concatenate(offsets), np.concatenate([p.prompt_lens for p in parts]))


def shard_path(data_dir: str | os.PathLike, split: str, index: int) -> Path:
    return Path(data_dir) / split / f"shard_{index:05d}.npz"


def write_shard(path: Path, sequences: Sequences) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, tokens=sequences.tokens, offsets=sequences.offsets, prompt_lens=sequences.prompt_lens)
    tmp.replace(path)


def read_split(data_dir: str | os.PathLike, split: str) -> Sequences:
    files = sorted((Path(data_dir) / split).glob("shard_*.npz"))
    parts = []
    for file in files:
        with np.load(file) as z:
            parts.append(Sequences(z["tokens"], z["offsets"], z["prompt_lens"]))
    return Sequences.concat(parts)


@dataclass
class Batch:
    input_ids: np.ndarray  # [B, L] int64, right-padded with 0
    target_mask: np.ndarray  # [B, L] bool: position holds a generated (completion) token
    lengths: np.ndarray  # [B]


def make_batch(seqs: Sequences, indices: list[int], max_len: int) -> Batch:
    lengths = np.minimum(seqs.lengths[indices], max_len)
    width = int(lengths.max())
    ids = np.zeros((len(indices), width), dtype=np.int64)
    mask = np.zeros((len(indices), width), dtype=bool)
    for row, i in enumerate(indices):
        tokens, prompt_len = seqs.get(i)
        n = int(lengths[row])
        ids[row, :n] = tokens[:n]
        mask[row, prompt_len:n] = True
    return Batch(ids, mask, lengths)


def epoch_plan(seqs: Sequences, tokens_per_batch: int, max_len: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches: every sequence once, shuffled, sequences of similar length batched together (little
    padding; a batch holds at most `tokens_per_batch` padded tokens unless one sequence alone is longer), batches
    in random order. The same (seed, epoch) gives the same plan on every rank."""
    lengths = np.minimum(seqs.lengths, max_len)
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(seqs)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    pool = 64 * max(1, tokens_per_batch // max(1, int(lengths.mean()) if len(seqs) else 1))
    for start in range(0, len(order), pool):
        current: list[int] = []
        width = 0
        for i in sorted(order[start:start + pool], key=lambda j: lengths[j]):
            new_width = max(width, int(lengths[i]))
            if current and new_width * (len(current) + 1) > tokens_per_batch:
                batches.append(current)
                current, new_width = [], int(lengths[i])
            current.append(i)
            width = new_width
        if current:
            batches.append(current)
    rng.shuffle(batches)
    return batches


def token_budget_batches(seqs: Sequences, tokens_per_batch: int, max_len: int, seed: int, rank: int = 0,
                         world_size: int = 1) -> Iterator[list[int]]:
    """Endless stream of index lists, epoch after epoch of `epoch_plan`, each rank taking every world_size-th
    batch (the remainder of an epoch that does not divide evenly is dropped so that ranks stay in step)."""
    epoch = 0
    while True:
        batches = epoch_plan(seqs, tokens_per_batch, max_len, seed, epoch)
        usable = len(batches) - len(batches) % world_size
        if usable == 0:
            raise ValueError(f"not enough training sequences for {world_size} ranks")
        yield from batches[rank:usable:world_size]
        epoch += 1
