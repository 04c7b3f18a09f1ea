"""Offline distillation data: chat examples built from the docstrings of the running Python's standard library.

Every machine that runs this code has a Python standard library (and torch/numpy, which this package depends on),
so the corpus needs no network and no files in the repository: each public function/class docstring of at least
`min_chars` characters becomes one conversation (user: "Explain `module.name` ...", assistant: the docstring).
The standard library alone gives ~1,100 examples (~180K tokens of English technical prose); `packages=("numpy",
"torch")` adds the docstrings of those installed packages. It differs slightly between Python/package versions
(3.11 on the CPU machines, 3.12 on the GPU host).
A fixed hash of the qualified name puts ~10% of the examples in the held-out split, so train and held-out never
share a docstring. `--corpus FILE` (JSON lines with "prompt" and "response") replaces it with your own data.

Examples are tokenized with the model's chat template; `loss_mask[t]` is 1 where position t predicts a response
token (the assistant's text and its end-of-turn token), 0 on the prompt and on padding.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Example:
    key: str
    prompt: str
    response: str


def stdlib_examples(min_chars: int = 300, max_chars: int = 3000, max_examples: int | None = None,
                    packages: tuple[str, ...] = ()) -> list[Example]:
    """One example per long-enough docstring of the standard library, then of the installed `packages` (e.g.
    "numpy", "torch": found without importing them), sorted and deterministic; parsing stops after `max_examples`
    (the standard library alone takes ~10-50 s to parse)."""
    roots = [(Path(sysconfig.get_paths()["stdlib"]), "")]
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"package {name!r} is not installed: it cannot be part of the corpus")
        location = Path(list(spec.submodule_search_locations)[0])
        roots.append((location, name))
    examples: list[Example] = []
    for root, package in roots:
        examples += _docstring_examples(root, package, min_chars, max_chars)
        if max_examples is not None and len(examples) >= max_examples:
            return examples[:max_examples]
    return examples


def _docstring_examples(root: Path, package: str, min_chars: int, max_chars: int) -> list[Example]:
    examples: list[Example] = []
    skip_dirs = {"test", "tests", "testing", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__",
                 "turtledemo"}
    for path in sorted(root.rglob("*.py")):
        if skip_dirs & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        module = ".".join(([package] if package else []) + list(path.relative_to(root).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node, clean=True)
            if not doc or not min_chars <= len(doc) <= max_chars:
                continue
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            key = f"{module}.{node.name}"
            prompt = f"Explain what the {kind} `{node.name}` of the Python module `{module}` does."
            examples.append(Example(key, prompt, doc))
    return examples


def jsonl_examples(path: str | os.PathLike) -> list[Example]:
    """{"prompt": ..., "response": ...} per line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if line.strip():
                row = json.loads(line)
                out.append(Example(str(row.get("id", n)), row["prompt"], row["response"]))
    return out


def is_held_out(example: Example, fraction: float = 0.1) -> bool:
    digest = hashlib.sha256(example.key.encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32 < fraction


def split(examples: list[Example], held_out_fraction: float = 0.1) -> tuple[list[Example], list[Example]]:
    train = [e for e in examples if not is_held_out(e, held_out_fraction)]
    held = [e for e in examples if is_held_out(e, held_out_fraction)]
    return train, held


def encode(tokenizer, example: Example, seq_len: int) -> tuple[list[int], list[int]]:
    """(token ids, loss mask), truncated to seq_len; mask[t] = 1 where position t predicts a response token."""
    prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": example.prompt}],
                                               add_generation_prompt=True, tokenize=True)
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "input_ids"):
        prompt_ids = prompt_ids["input_ids"]
    end = tokenizer.eos_token or ""
    response_ids = tokenizer(example.response + end + "\n", add_special_tokens=False)["input_ids"]
    ids = (list(prompt_ids) + list(response_ids))[:seq_len]
    mask = [0] * len(ids)
    for t in range(len(prompt_ids) - 1, len(ids) - 1):
        mask[t] = 1
    return ids, mask


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [batch, max_len] ids and float mask (causal attention never lets a token see the padding)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for r, (row_ids, row_mask) in enumerate(rows):
        ids[r, : len(row_ids)] = torch.tensor(row_ids)
        mask[r, : len(row_mask)] = torch.tensor(row_mask, dtype=torch.float32)
    return ids, mask


class Batches:
    """Endless, seeded, resumable stream of batches over the encoded training examples, sharded by rank."""

    def __init__(self, encoded: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if not encoded:
            raise ValueError("no training examples (is the corpus empty or min_chars too high?)")
        self.encoded, self.batch_size, self.pad_id, self.seed = encoded, batch_size, pad_id, seed
        self.rank, self.world_size = rank, world_size

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of global step `step` for this rank (a pure function of step: resuming is exact)."""
        per_epoch = max(1, len(self.encoded) // (self.batch_size * self.world_size))
        epoch, within = divmod(step, per_epoch)
        order = torch.randperm(len(self.encoded), generator=torch.Generator().manual_seed(self.seed + epoch))
        start = (within * self.world_size + self.rank) * self.batch_size
        idx = [int(i) for i in order[start : start + self.batch_size]]
        if len(idx) < self.batch_size:  # tiny corpora: wrap around
            idx += [int(i) for i in order[: self.batch_size - len(idx)]]
        return collate([self.encoded[i] for i in idx], self.pad_id)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1
