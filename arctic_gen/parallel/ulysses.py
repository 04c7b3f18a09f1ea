"""Arctic Ulysses: sequence parallelism for attention across the ranks of an SP group.

Layout. The world is TP x SP x PP ranks; vLLM keeps its own groups (TP, PP, ...) and sees the SP dimension as its
outermost "external data parallel" dimension (rank = sp * PP * TP + pp * TP + tp), so vLLM's tensor-parallel weight
shards are replicated across the SP ranks. The plugin adds one group per (pp, tp) coordinate holding the SP ranks.

Heads. Every attention layer of a TP rank has `num_heads` query heads and `num_kv_heads` KV heads. Each SP rank owns
a fixed subset of them, the same size on every SP rank (so every rank has the same KV-cache layout):
- KV heads >= SP: each rank owns ceil(kv / SP) KV heads with all their query heads; where KV heads do not divide
  evenly, the last rank repeats its last KV head (a padding slot: computed, cached, never used).
- KV heads < SP (replication): SP must be a multiple of the KV heads; SP / kv ranks share each KV head (each caches
  it) and split its query heads, padding with a repeated query head where they do not divide evenly.
The KV cache of an SP rank holds only its own heads, whichever way the step runs.

Steps. A model forward runs in one of two ways:
- sequence-parallel (`sequence_parallel(num_tokens)` active): each SP rank holds a contiguous slice of the step's
  tokens (`chunk` rows, the last slice padded); before attention an all-to-all turns "my tokens, all heads" into
  "all tokens, my heads", attention runs over the whole step with vLLM's own metadata, and a second all-to-all turns
  the result back. Everything else (embeddings, norms, projections, MLP) runs on the slice.
- replicated tokens (the default, and the tensor-parallel mode of Shift Parallelism): every rank holds every token;
  attention runs on the rank's own heads and the per-head outputs are all-gathered across the SP group.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


class UlyssesLayoutError(ValueError):
    """The model's attention heads cannot be split over the requested SP ranks."""


# --- heads -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadLayout:
    """Which query and KV heads (indices within one TP rank) each SP rank owns."""

    num_heads: int
    """Query heads of the TP rank (what the model's projection produces)."""
    num_kv_heads: int
    """KV heads of the TP rank."""
    q_heads: tuple[tuple[int, ...], ...]
    """Per SP rank: its query heads, `q_per_rank` of them (padding slots repeat a head)."""
    q_valid: tuple[tuple[bool, ...], ...]
    """Per SP rank: False for padding slots, whose output is dropped."""
    kv_heads: tuple[tuple[int, ...], ...]
    """Per SP rank: its KV heads, `kv_per_rank` of them."""
    _index_cache: dict[Any, tuple[torch.Tensor, ...]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def sp_size(self) -> int:
        return len(self.q_heads)

    @property
    def q_per_rank(self) -> int:
        return len(self.q_heads[0])

    @property
    def kv_per_rank(self) -> int:
        return len(self.kv_heads[0])

    @classmethod
    def plan(cls, num_heads: int, num_kv_heads: int, sp_size: int) -> HeadLayout:
        """The layout for `sp_size` ranks; `UlyssesLayoutError` says why a model cannot be split."""
        if sp_size < 1:
            raise UlyssesLayoutError(f"ulysses_sequence_parallel_size={sp_size}: must be >= 1")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise UlyssesLayoutError(
                f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads on each TP rank")
        group = num_heads // num_kv_heads
        q_heads: list[tuple[int, ...]] = []
        q_valid: list[tuple[bool, ...]] = []
        kv_heads: list[tuple[int, ...]] = []
        if num_kv_heads >= sp_size:
            per = math.ceil(num_kv_heads / sp_size)
            for rank in range(sp_size):
                slots = [rank * per + i for i in range(per)]
                kv_heads.append(tuple(min(s, num_kv_heads - 1) for s in slots))
                q_heads.append(tuple(min(s, num_kv_heads - 1) * group + j for s in slots for j in range(group)))
                q_valid.append(tuple(s < num_kv_heads for s in slots for _ in range(group)))
        else:
            if sp_size % num_kv_heads:
                raise UlyssesLayoutError(
                    f"ulysses_sequence_parallel_size={sp_size}: with {num_kv_heads} KV heads per TP rank (fewer than "
                    f"the SP ranks) SP must be a multiple of {num_kv_heads} so that each KV head is replicated on "
                    "the same number of ranks; pick another SP or TP size")
            share = sp_size // num_kv_heads
            per = math.ceil(group / share)
            for rank in range(sp_size):
                kv, part = divmod(rank, share)
                slots = [part * per + j for j in range(per)]
                kv_heads.append((kv,))
                q_heads.append(tuple(kv * group + min(s, group - 1) for s in slots))
                q_valid.append(tuple(s < group for s in slots))
        return cls(num_heads, num_kv_heads, tuple(q_heads), tuple(q_valid), tuple(kv_heads))

    def rank_indices(self, rank: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(query heads, KV heads) of SP rank `rank`, on `device`."""
        key = (rank, device)
        cached = self._index_cache.get(key)
        if cached is None:
            cached = (torch.tensor(self.q_heads[rank], dtype=torch.long, device=device),
                      torch.tensor(self.kv_heads[rank], dtype=torch.long, device=device))
            self._index_cache[key] = cached
        return cached  # type: ignore[return-value]

    def indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(all ranks' q heads, all ranks' KV heads, positions of valid slots, the heads they hold), on `device`."""
        cached = self._index_cache.get(device)
        if cached is None:
            q_all = [h for heads in self.q_heads for h in heads]
            valid = [i for i, ok in enumerate(v for flags in self.q_valid for v in flags) if ok]
            cached = (
                torch.tensor(q_all, dtype=torch.long, device=device),
                torch.tensor([h for heads in self.kv_heads for h in heads], dtype=torch.long, device=device),
                torch.tensor(valid, dtype=torch.long, device=device),
                torch.tensor([q_all[i] for i in valid], dtype=torch.long, device=device),
            )
            self._index_cache[device] = cached
        return cached  # type: ignore[return-value]


# --- the SP process group ----------------------------------------------------------------------------------------

_SP_GROUP: Any = None  # vllm.distributed.parallel_state.GroupCoordinator of this rank's SP group


def sp_group_ranks(world_size: int, sp_size: int) -> list[list[int]]:
    """The SP groups of a world laid out as vLLM's [external DP = SP] x PP x TP: ranks k, k + n, k + 2n, ..."""
    if world_size % sp_size:
        raise UlyssesLayoutError(f"world size {world_size} is not a multiple of the SP size {sp_size}")
    inner = world_size // sp_size
    return [[sp * inner + k for sp in range(sp_size)] for k in range(inner)]


def init_sp_group(sp_size: int, local_rank: int, backend: str) -> None:
    """Create this rank's SP group (collective: every rank of the world calls it, in the same order)."""
    global _SP_GROUP
    import torch.distributed as dist
    from vllm.distributed.parallel_state import init_model_parallel_group

    if _SP_GROUP is not None:
        raise RuntimeError("the Ulysses SP group is already initialized")
    ranks = sp_group_ranks(dist.get_world_size(), sp_size)
    _SP_GROUP = init_model_parallel_group(ranks, local_rank, backend, group_name="arctic_sp")


def destroy_sp_group() -> None:
    global _SP_GROUP
    if _SP_GROUP is not None:
        _SP_GROUP.destroy()
    _SP_GROUP = None


def sp_group() -> Any:
    if _SP_GROUP is None:
        raise RuntimeError("the Ulysses SP group is not initialized (ulysses_sequence_parallel_size > 1 only)")
    return _SP_GROUP


def sp_group_initialized() -> bool:
    return _SP_GROUP is not None


def sp_world() -> tuple[int, int]:
    """(SP size, this rank's SP rank)."""
    group = sp_group()
    return group.world_size, group.rank_in_group


# --- the step being run ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceSlice:
    """A sequence-parallel step: `num_tokens` tokens, `chunk` rows per SP rank (the last ranks padded)."""

    num_tokens: int
    chunk: int
    sp_size: int
    sp_rank: int

    @classmethod
    def of(cls, num_tokens: int, sp_size: int, sp_rank: int) -> SequenceSlice:
        return cls(num_tokens, max(1, math.ceil(num_tokens / sp_size)), sp_size, sp_rank)

    @property
    def start(self) -> int:
        return min(self.sp_rank * self.chunk, self.num_tokens)

    @property
    def stop(self) -> int:
        return min(self.start + self.chunk, self.num_tokens)


_SLICE: SequenceSlice | None = None


@contextlib.contextmanager
def sequence_parallel(num_tokens: int) -> Iterator[SequenceSlice]:
    """Run the attention layers in sequence-parallel mode for a step of `num_tokens` tokens."""
    global _SLICE
    size, rank = sp_world()
    previous, _SLICE = _SLICE, SequenceSlice.of(num_tokens, size, rank)
    try:
        yield _SLICE
    finally:
        _SLICE = previous


def current_slice() -> SequenceSlice | None:
    return _SLICE


def take_slice(x: torch.Tensor, piece: SequenceSlice, dim: int = 0) -> torch.Tensor:
    """This rank's rows of `x` along `dim`, padded with zeros to `piece.chunk` rows."""
    part = x.narrow(dim, piece.start, piece.stop - piece.start)
    missing = piece.chunk - part.shape[dim]
    if missing == 0:
        return part
    shape = list(part.shape)
    shape[dim] = missing
    return torch.cat([part, part.new_zeros(shape)], dim=dim)


def gather_slices(x: torch.Tensor, piece: SequenceSlice) -> torch.Tensor:
    """The inverse of `take_slice` along dim 0: every rank's rows, the padding dropped."""
    full = sp_group().all_gather(x.contiguous(), dim=0)
    return full[: piece.num_tokens]


# --- attention ---------------------------------------------------------------------------------------------------


def _assemble(per_rank: torch.Tensor, layout: HeadLayout, head_size: int) -> torch.Tensor:
    """[rows, SP * q_per_rank * head] outputs of every rank's heads -> [rows, num_heads * head] in head order."""
    rows = per_rank.shape[0]
    _, _, valid, heads = layout.indices(per_rank.device)
    slots = per_rank.view(rows, -1, head_size).index_select(1, valid)
    out = per_rank.new_empty(rows, layout.num_heads, head_size)
    out.index_copy_(1, heads, slots)
    return out.view(rows, layout.num_heads * head_size)


def replicated_attention(attend: Any, layout: HeadLayout, rank: int, query: torch.Tensor, key: torch.Tensor,
                         value: torch.Tensor, head_size: int, head_size_v: int) -> torch.Tensor:
    """Every rank holds every token: attend over this rank's heads, all-gather the heads."""
    rows = query.shape[0]
    q_idx, kv_idx = layout.rank_indices(rank, query.device)
    q = query.view(rows, layout.num_heads, head_size).index_select(1, q_idx)
    k = key.view(rows, layout.num_kv_heads, head_size).index_select(1, kv_idx)
    v = value.view(rows, layout.num_kv_heads, head_size_v).index_select(1, kv_idx)
    mine = attend(q.reshape(rows, -1), k.reshape(rows, -1), v.reshape(rows, -1))  # [rows, q_per * head_v]
    gathered = sp_group().all_gather(mine.contiguous(), dim=0)  # [SP * rows, q_per * head_v]
    per_rank = gathered.view(layout.sp_size, rows, -1).transpose(0, 1).reshape(rows, -1)
    return _assemble(per_rank, layout, head_size_v)


def ulysses_attention(attend: Any, layout: HeadLayout, piece: SequenceSlice, query: torch.Tensor,
                      key: torch.Tensor, value: torch.Tensor, head_size: int, head_size_v: int) -> torch.Tensor:
    """This rank holds `piece.chunk` tokens with all heads: all-to-all, attend over all tokens, all-to-all back."""
    import torch.distributed as dist

    group = sp_group().device_group
    rows, sp = query.shape[0], layout.sp_size
    q_all, kv_all, _, _ = layout.indices(query.device)
    q = query.view(rows, layout.num_heads, head_size).index_select(1, q_all).view(rows, sp, -1)
    k = key.view(rows, layout.num_kv_heads, head_size).index_select(1, kv_all).view(rows, sp, -1)
    v = value.view(rows, layout.num_kv_heads, head_size_v).index_select(1, kv_all).view(rows, sp, -1)
    widths = (q.shape[-1], k.shape[-1], v.shape[-1])
    send = torch.cat([q, k, v], dim=-1).transpose(0, 1).contiguous()  # [SP, chunk, width]: block r goes to rank r
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # block r: rank r's tokens, my heads
    tokens = recv.view(sp * rows, -1)[: piece.num_tokens]
    q_mine, k_mine, v_mine = tokens.split(widths, dim=-1)
    out = attend(q_mine.contiguous(), k_mine.contiguous(), v_mine.contiguous())  # [num_tokens, q_per * head_v]
    padded = out.new_zeros(sp * rows, out.shape[-1])
    padded[: piece.num_tokens] = out
    back = torch.empty_like(padded)
    dist.all_to_all_single(back, padded, group=group)  # block r: my tokens, rank r's heads
    per_rank = back.view(sp, rows, -1).transpose(0, 1).reshape(rows, -1)
    return _assemble(per_rank, layout, head_size_v)


@dataclass(frozen=True)
class RankHeads:
    """The head layout of one attention layer and this rank's place in it (state the attention patch declares)."""

    layout: HeadLayout
    rank: int

    def forward(self, attend: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, head_size: int,
                head_size_v: int) -> torch.Tensor:
        """Attention over this rank's heads, in whichever mode the step runs; returns every head of the rows."""
        piece = current_slice()
        if piece is None:
            return replicated_attention(attend, self.layout, self.rank, query, key, value, head_size, head_size_v)
        return ulysses_attention(attend, self.layout, piece, query, key, value, head_size, head_size_v)
