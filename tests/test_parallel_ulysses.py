"""Ulysses head layouts and the two attention paths, on 2 CPU ranks over gloo (no vLLM engine).

The attention paths are checked against plain causal attention over all heads and all tokens of one process,
with the KV heads fewer than, equal to and not dividing the SP ranks (tiny Llama 4/2, SmolLM2 9/3, MQA 4/1).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from arctic_gen.config import ArcticParallelConfig, ConfigError
from arctic_gen.parallel import shift, ulysses
from arctic_gen.parallel.ulysses import HeadLayout, UlyssesLayoutError

LAYOUTS = [(4, 2), (9, 3), (4, 1), (8, 8), (6, 2)]


def _owned(layout: HeadLayout) -> list[int]:
    heads = []
    for rank in range(layout.sp_size):
        heads += [h for h, ok in zip(layout.q_heads[rank], layout.q_valid[rank], strict=True) if ok]
    return heads


@pytest.mark.parametrize("heads, kv_heads", LAYOUTS)
@pytest.mark.parametrize("sp", [2, 4])
def test_every_query_head_is_owned_once_next_to_its_kv_head(heads, kv_heads, sp) -> None:
    if kv_heads < sp and sp % kv_heads:
        pytest.skip("not a valid combination (covered below)")
    layout = HeadLayout.plan(heads, kv_heads, sp)
    assert sorted(_owned(layout)) == list(range(heads))
    group = heads // kv_heads
    for rank in range(sp):
        assert len(layout.q_heads[rank]) == layout.q_per_rank and len(layout.kv_heads[rank]) == layout.kv_per_rank
        per_kv = layout.q_per_rank // layout.kv_per_rank
        for slot, head in enumerate(layout.q_heads[rank]):  # the backend maps local q slot -> local kv slot
            assert head // group == layout.kv_heads[rank][slot // per_kv]


def test_layouts_that_cannot_split_say_why() -> None:
    with pytest.raises(UlyssesLayoutError, match="multiple of 2"):
        HeadLayout.plan(4, 2, 3)
    with pytest.raises(UlyssesLayoutError, match="not a multiple"):
        HeadLayout.plan(9, 2, 2)
    assert HeadLayout.plan(9, 3, 2).kv_heads == ((0, 1), (2, 2))  # last rank pads with a repeated KV head
    assert HeadLayout.plan(9, 3, 2).q_valid[1] == (True,) * 3 + (False,) * 3


def test_parallel_config_validation() -> None:
    assert ArcticParallelConfig(ulysses_sequence_parallel_size=2, enable_shift_parallel=True).is_default is False
    with pytest.raises(ConfigError, match="^enable_shift_parallel"):
        ArcticParallelConfig(enable_shift_parallel=True)
    with pytest.raises(ConfigError, match="^ulysses_sequence_parallel_size"):
        ArcticParallelConfig(ulysses_sequence_parallel_size=0)


def test_shift_policy_follows_arctic_rule() -> None:
    policy = shift.ShiftPolicy.of(ArcticParallelConfig(ulysses_sequence_parallel_size=2, enable_shift_parallel=True,
                                                       shift_parallel_threshold=8))
    assert policy.mode(8) is shift.StepMode.TENSOR_PARALLEL
    assert policy.mode(9) is shift.StepMode.SEQUENCE_PARALLEL
    plain = shift.ShiftPolicy.of(ArcticParallelConfig(ulysses_sequence_parallel_size=2))
    assert plain.mode(1) is shift.StepMode.SEQUENCE_PARALLEL


def test_sequence_slices_cover_the_step() -> None:
    x = torch.arange(7)
    pieces = [ulysses.SequenceSlice.of(7, 2, r) for r in range(2)]
    assert [ulysses.take_slice(x, p).tolist() for p in pieces] == [[0, 1, 2, 3], [4, 5, 6, 0]]
    tiny = [ulysses.SequenceSlice.of(1, 4, r) for r in (0, 3)]
    assert [(p.start, p.stop, p.chunk) for p in tiny] == [(0, 1, 1), (1, 1, 1)]


# --- the attention paths on 2 gloo ranks -----------------------------------------------------------------------


class _Group:
    """The three things the Ulysses code uses of vLLM's GroupCoordinator, over the default gloo group."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.device_group = dist.group.WORLD
        self.world_size = dist.get_world_size()
        self.rank_in_group = dist.get_rank()

    def all_gather(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=dim)


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, kv_heads: int, d: int) -> torch.Tensor:
    n = q.shape[0]
    q = q.view(n, heads, d).transpose(0, 1)
    k = k.view(n, kv_heads, d).transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)
    v = v.view(n, kv_heads, d).transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(0, 1).reshape(n, heads * d)


def _worker(rank: int, port: int, cases: list[tuple[int, int, int]], results: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ulysses._SP_GROUP = _Group()
    d = 8
    try:
        for heads, kv_heads, n in cases:
            layout = HeadLayout.plan(heads, kv_heads, 2)
            gen = torch.Generator().manual_seed(heads * 100 + n)
            q = torch.randn(n, heads * d, generator=gen)
            k = torch.randn(n, kv_heads * d, generator=gen)
            v = torch.randn(n, kv_heads * d, generator=gen)
            expected = _causal(q, k, v, heads, kv_heads, d)
            local = (layout.q_per_rank, layout.kv_per_rank)

            def attend(qm, km, vm, local=local):
                return _causal(qm, km, vm, local[0], local[1], d)

            heads_of_rank = ulysses.RankHeads(layout, rank)
            replicated = heads_of_rank.forward(attend, q, k, v, d, d)
            with ulysses.sequence_parallel(n) as piece:
                sliced = heads_of_rank.forward(attend, ulysses.take_slice(q, piece), ulysses.take_slice(k, piece),
                                               ulysses.take_slice(v, piece), d, d)
                gathered = ulysses.gather_slices(sliced, piece)
            results[(rank, heads, kv_heads, n)] = (
                float((replicated - expected).abs().max()), float((gathered - expected).abs().max()))
    finally:
        ulysses._SP_GROUP = None
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ulysses_and_replicated_attention_match_full_attention() -> None:
    cases = [(4, 2, 7), (9, 3, 5), (4, 1, 1), (6, 2, 12), (9, 3, 1)]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_worker, args=(_free_port(), cases, results), nprocs=2, start_method="spawn")
        results = dict(results)
    assert len(results) == 2 * len(cases)
    for key, (replicated, sliced) in results.items():
        assert replicated < 1e-5 and sliced < 1e-5, (key, replicated, sliced)
