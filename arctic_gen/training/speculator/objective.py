"""Training objective and held-out acceptance of a speculator on base-model hidden states.

Positions: hidden state h_t (base model after token t), token t + 1 (sampled by the base there). Head i is fed
token t + 1 + i and learns token t + 2 + i (cross-entropy), on positions whose target is a generated token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arctic_gen.models.speculator_config import Speculator


def shifted(ids: Tensor, mask: Tensor, n_predict: int) -> tuple[Tensor, Tensor]:
    """ids/mask [B, L] → padded by n_predict + 1 columns so every position t < L has t + 1 + n_predict."""
    pad = n_predict + 1
    return F.pad(ids, (0, pad)), F.pad(mask, (0, pad), value=False)


class SpeculatorObjective(nn.Module):
    """forward(hidden [B, L, H], ids_ext [B, L + n + 1], mask_ext) -> (loss, stats [n, 3]: ce sum, correct,
    count per head). A module (not a function) so that DistributedDataParallel can wrap it."""

    def __init__(self, speculator: Speculator) -> None:
        super().__init__()
        self.speculator = speculator

    def forward(self, hidden: Tensor, ids_ext: Tensor, mask_ext: Tensor) -> tuple[Tensor, Tensor]:
        spec = self.speculator
        length = hidden.shape[1]
        carry = spec.initial_carry(hidden)
        loss = hidden.new_zeros((), dtype=torch.float32)
        stats = []
        for i in range(spec.n_predict):
            carry, state = spec.step(i, carry, ids_ext[:, 1 + i:1 + i + length])
            select = mask_ext[:, 2 + i:2 + i + length]
            targets = ids_ext[:, 2 + i:2 + i + length][select]
            logits = spec.head[i](state[select]).float()
            ce = F.cross_entropy(logits, targets, reduction="sum")
            count = targets.numel()
            loss = loss + ce / max(count, 1)
            correct = (logits.argmax(-1) == targets).sum()
            stats.append(torch.stack([ce.detach(), correct.float(), torch.tensor(float(count), device=ce.device)]))
        return loss, torch.stack(stats)


@torch.no_grad()
def acceptance_counts(spec: Speculator, hidden: Tensor, ids: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
    """Greedy chains drafted the way serving drafts them (`propose` from h_t and token t + 1, where token t + 1 is
    a generated token and all n targets exist), compared with the real continuation. Returns [n + 1] counts:
    [positions, chains whose first 1, 2, ..., n drafts all match]."""
    n = spec.n_predict
    batch, width = ids.shape
    positions = torch.arange(width, device=ids.device)
    ids_ext, mask_ext = shifted(ids, mask, n)
    valid = mask_ext[:, 1:1 + width] & ((positions + 1 + n)[None, :] < lengths[:, None])
    drafts = spec.propose(hidden[valid], ids_ext[:, 1:1 + width][valid], n)
    targets = torch.stack([ids_ext[:, 2 + i:2 + i + width][valid] for i in range(n)], dim=1)
    prefix = torch.cumprod((drafts == targets).long(), dim=1)
    return torch.cat([prefix.new_tensor([prefix.shape[0]]), prefix.sum(0)])


def acceptance_summary(counts: Tensor) -> dict:
    """Per-head and overall figures from acceptance_counts (summed over batches)."""
    c = [int(v) for v in counts.tolist()]
    positions, prefix = c[0], c[1:]
    n = len(prefix)
    conditional = [prefix[i] / (positions if i == 0 else prefix[i - 1]) if (positions if i == 0 else prefix[i - 1])
                   else 0.0 for i in range(n)]
    mean_len = sum(prefix) / positions if positions else 0.0
    return {
        "positions": positions,
        "per_head": [round(v, 4) for v in conditional],
        "per_head_cumulative": [round(v / positions, 4) if positions else 0.0 for v in prefix],
        "mean_accepted_len": round(mean_len, 4),
        "acceptance_rate": round(mean_len / n, 4) if n else 0.0,
        "mean": round(sum(conditional) / n, 4) if n else 0.0,
    }
