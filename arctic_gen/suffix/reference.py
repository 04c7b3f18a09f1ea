"""Brute-force pure-Python model of the native suffix tree: the executable specification the tests compare against.

An uncompressed trie of every suffix of every sequence, each truncated to max_depth tokens; a node's count is
the number of (sequence, start) suffixes through it, i.e. how often its path occurs as a substring. Every update
re-walks suffixes from the root (no active-node bookkeeping, no path compression, no groups).

Children are kept in a plain list in the order the native tree keeps its sibling list. The order among equal
counts is part of the contract (it decides ties between equally frequent continuations, and it is the order
Arctic Inference's tree uses):
- a new child goes to the end of the list;
- when a count goes up, the child moves in front of the first sibling whose count equals that of its
  predecessor (so it stays put if its predecessor's count is larger than the new count);
- when a count goes down and the next sibling had the same count, the child moves behind the last sibling of
  that count; otherwise it stays put;
- a child whose count drops to zero is removed with its subtree.

Probabilities and scores are computed in float32 exactly as the native code does, so results compare with ==.
Slow by design (O(max_depth^2) per token); for tests and debugging only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_F32 = np.float32


@dataclass(eq=False)
class RefNode:
    token: int
    count: int = 0
    children: dict[int, RefNode] = field(default_factory=dict)
    order: list[RefNode] = field(default_factory=list)


@dataclass
class RefDraft:
    token_ids: list[int]
    probs: list[float]
    score: float
    match_len: int


class RefSuffixTree:
    def __init__(self, max_depth: int):
        self.max_depth = max_depth
        self.root = RefNode(token=-1)
        self.seqs: dict[int, list[int]] = {}

    # ------------------------------------------------------------------------------------------------ updates
    def extend(self, seq_id: int, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.append(seq_id, int(t))

    def append(self, seq_id: int, token: int) -> None:
        seq = self.seqs.setdefault(seq_id, [])
        seq.append(token)
        n = len(seq)
        self.root.count += 1
        for start in range(max(0, n - self.max_depth), n):  # oldest (longest) suffix first
            node = self.find(seq[start:n - 1])
            assert node is not None
            child = node.children.get(token)
            if child is None:
                child = RefNode(token=token, count=1)
                node.children[token] = child
                node.order.append(child)
            else:
                self._increment(node, child)

    def remove(self, seq_id: int) -> None:
        seq = self.seqs.pop(seq_id)
        for start in range(len(seq)):
            self.root.count -= 1
            node = self.root
            for t in seq[start:start + self.max_depth]:
                child = node.children[t]
                if child.count == 1:
                    del node.children[t]
                    node.order.remove(child)
                    break
                self._decrement(node, child)
                node = child

    @staticmethod
    def _increment(parent: RefNode, child: RefNode) -> None:
        lst = parent.order
        i = lst.index(child)
        if i == 0 or lst[i - 1].count > child.count + 1:
            child.count += 1
            return
        target = lst[i - 1].count
        j = next(k for k, n in enumerate(lst) if n.count == target)
        lst.pop(i)
        child.count += 1
        lst.insert(j, child)

    @staticmethod
    def _decrement(parent: RefNode, child: RefNode) -> None:
        lst = parent.order
        i = lst.index(child)
        c = child.count
        if i + 1 < len(lst) and lst[i + 1].count == c:
            last = max(k for k, n in enumerate(lst) if n.count == c)
            lst.pop(i)
            child.count -= 1
            lst.insert(last, child)
        else:
            child.count -= 1

    # ---------------------------------------------------------------------------------------------- queries
    def find(self, path: Sequence[int]) -> RefNode | None:
        node = self.root
        for t in path:
            node = node.children.get(int(t))
            if node is None:
                return None
        return node

    def substring_count(self, path: Sequence[int]) -> int:
        """Occurrences of `path` in all sequences (the count a node must hold), by brute force."""
        m = len(path)
        if m == 0 or m > self.max_depth:
            return 0
        p = list(path)
        return sum(1 for s in self.seqs.values() for i in range(len(s) - m + 1) if s[i:i + m] == p)

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.seqs.values())

    def speculate(self, context: Sequence[int], max_spec_tokens: int, max_spec_factor: float,
                  max_spec_offset: float, min_token_prob: float) -> RefDraft:
        ctx = [int(t) for t in context]
        min_prob = _F32(min_token_prob)
        best = RefDraft([], [], 0.0, 0)
        best_score = _F32(0.0)
        for m in range(1, len(ctx)):
            node = self.find(ctx[len(ctx) - m:])
            if node is None:
                break
            limit = float(_F32(_F32(m) * _F32(max_spec_factor)) + _F32(max_spec_offset)) + 1e-6
            max_tokens = max(0, min(max_spec_tokens, int(limit)))
            prob = _F32(1.0)
            score = _F32(0.0)
            tokens: list[int] = []
            probs: list[float] = []
            while len(tokens) < max_tokens and prob >= min_prob and node.order:
                child = node.order[0]
                prob = _F32(prob * (_F32(child.count) / _F32(node.count)))
                if prob < min_prob:
                    break
                tokens.append(child.token)
                probs.append(float(prob))
                score = _F32(score + prob)
                node = child
            if score >= best_score:
                best_score = score
                best = RefDraft(tokens, probs, float(score), m)
        return best
