"""CUDA graphs for small batches: one captured graph per padded (batch, width) shape.

Small batches are launch-bound in eager mode (about 15 kernels per layer); replaying a captured graph costs one
launch. A batch of at most `MAX_GRAPH_BATCH` sequences is padded up to the next captured (batch, width) shape;
bigger batches take the packed eager path, where padding would cost more than launches.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

GRAPH_BATCHES = (1, 2, 4, 8, 16, 32)
GRAPH_WIDTHS = (16, 32, 64, 128, 256, 512)
MAX_GRAPH_TOKENS = 8192


def _round_up(value: int, choices: tuple[int, ...]) -> int | None:
    return next((c for c in choices if c >= value), None)


class PaddedGraphs:
    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device,
                 max_width: int) -> None:
        self._forward = forward
        self._device = device
        self._widths = tuple(w for w in GRAPH_WIDTHS if w <= max_width) or (max_width,)
        if self._widths[-1] < max_width:
            self._widths += (max_width,)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for batch in GRAPH_BATCHES:
                for width in self._widths:
                    if batch * width > MAX_GRAPH_TOKENS:
                        continue
                    ids = torch.zeros(batch, width, dtype=torch.int32, device=self._device)
                    mask = torch.ones(batch, width, dtype=torch.bool, device=self._device)
                    self._forward(ids, mask)  # warm-up outside the graph (allocations, autotuning)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, stream=stream):
                        out = self._forward(ids, mask)
                    self._graphs[(batch, width)] = (graph, ids, mask, out)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    def run(self, ids: np.ndarray, lengths: np.ndarray) -> torch.Tensor | None:
        """Pooled [n, dim] for a small batch, or None when no captured shape fits."""
        n = int(lengths.size)
        batch = _round_up(n, GRAPH_BATCHES)
        width = _round_up(int(lengths.max()), self._widths)
        if batch is None or width is None or (batch, width) not in self._graphs:
            return None
        graph, ids_buf, mask_buf, out = self._graphs[(batch, width)]
        host_ids = np.zeros((batch, width), dtype=np.int32)
        host_mask = np.zeros((batch, width), dtype=np.bool_)
        host_mask[:, 0] = True  # padding rows attend to one token: no NaNs from an all-masked row
        steps = np.arange(width)
        valid = steps[None, :] < lengths[:, None]
        host_mask[:n] = valid
        host_ids[:n][valid] = ids
        ids_buf.copy_(torch.from_numpy(host_ids).pin_memory(), non_blocking=True)
        mask_buf.copy_(torch.from_numpy(host_mask).pin_memory(), non_blocking=True)
        graph.replay()
        return out[:n]
