"""Stage `train`: a speculator learns the base model's continuations from its frozen final hidden states.

Single process (GPU or CPU) or several with `torchrun` (WORLD_SIZE > 1: torch DistributedDataParallel over the
speculator; every rank computes its own base-model hidden states for its share of each step's batches). bf16
autocast on GPU, float32 master weights, AdamW, linear warm-up then cosine decay over the run's progress (the
larger of steps/max_steps and seconds/max_seconds, so a wall-clock budget gives a complete schedule).

Resumable: `train_state.pt` in the output directory (weights, optimizer, step, elapsed time) is written every
`save_every` steps and at the end, and picked up by a rerun with the same settings. At the end rank 0 exports the
speculator in Arctic's format to `<out_dir>/speculator`, measures draft acceptance on the held-out split, and
writes `train_summary.json`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from arctic_gen.models.speculator_config import ARCTIC_ARCH, SpeculatorConfig, build_speculator, save_speculator
from arctic_gen.training.speculator.base_model import (
    base_info,
    final_hidden_states,
    init_from_base,
    load_base,
    pick_device,
)
from arctic_gen.training.speculator.objective import (
    SpeculatorObjective,
    acceptance_counts,
    acceptance_summary,
    shifted,
)
from arctic_gen.training.speculator.tokens import Sequences, make_batch, read_split, token_budget_batches

STATE_NAME = "train_state.pt"
SUMMARY_NAME = "train_summary.json"
EXPORT_DIR = "speculator"


@dataclass
class TrainConfig:
    model: str
    """Base model directory (the one the data was generated from)."""
    data_dir: str
    out_dir: str
    method: str = "sum_lstm"
    """"sum_lstm" (LSTM) or "sum_rnn" (MLP)."""
    n_predict: int = 3
    width: int = 0
    """Speculator width (inner/emb/proj dim); 0: the base model's hidden size."""
    tie_weights: bool = True
    tie_lstm_embs: bool = True
    scale_input: bool = True
    init_from_base: bool = True
    """Start heads/embeddings from the base model's output head/input embeddings where the shapes match."""
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: float = 0.03
    """Fraction of the run spent warming the learning rate up."""
    min_lr_ratio: float = 0.1
    tokens_per_batch: int = 16384
    """Padded tokens per batch on each rank."""
    max_len: int = 512
    max_steps: int = 0
    max_seconds: float = 0.0
    save_every: int = 500
    eval_sequences: int = 0
    """Held-out sequences used for the final acceptance (0: all)."""
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    export_dtype: str = "bfloat16"
    """Weights dtype of the exported checkpoint (bfloat16 like Arctic's, or float32)."""

    def validate(self) -> None:
        if self.max_steps <= 0 and self.max_seconds <= 0:
            raise ValueError("give --max-steps or --max-seconds (or both)")
        if self.export_dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"--export-dtype must be bfloat16, float16 or float32, got {self.export_dtype!r}")
        if self.method not in ("sum_rnn", "sum_lstm"):
            raise ValueError(f"--method must be sum_rnn or sum_lstm, got {self.method!r}")

    def identity(self) -> dict[str, Any]:
        drop = ("max_steps", "max_seconds", "save_every", "eval_sequences", "device", "log_every", "export_dtype")
        return {k: v for k, v in asdict(self).items() if k not in drop}


def speculator_config(config: TrainConfig, base: torch.nn.Module) -> SpeculatorConfig:
    info = base_info(base)
    width = config.width or info["hidden_size"]
    return SpeculatorConfig(
        n_predict=config.n_predict, input_hidden_dim=info["hidden_size"], inner_dim=(width,), emb_dim=(width,),
        proj_dim=(width,), vocab_size=info["vocab_size"], tie_weights=config.tie_weights,
        scale_input=config.scale_input, tie_lstm_embs=config.tie_lstm_embs if config.method == "sum_lstm" else False,
        method=config.method, architecture=ARCTIC_ARCH, base_model_name_or_path=str(config.model),
        base_model_archs=tuple(info["architectures"]))


class _Dist:
    """torchrun environment (WORLD_SIZE/RANK/LOCAL_RANK) or a single process."""

    def __init__(self, device_name: str) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world_size > 1:
            import torch.distributed as dist

            if torch.cuda.is_available() and device_name in ("auto", "cuda"):
                torch.cuda.set_device(local_rank)
                self.device = torch.device("cuda", local_rank)
                dist.init_process_group("nccl")
            else:
                self.device = pick_device(device_name)
                dist.init_process_group("gloo")
        else:
            self.device = pick_device(device_name)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_max(self, value: float) -> float:
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _lr(config: TrainConfig, progress: float) -> float:
    if progress < config.warmup:
        return config.lr * max(progress / config.warmup, 0.01)
    frac = min(1.0, (progress - config.warmup) / max(1e-9, 1.0 - config.warmup))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _to_device(batch, device: torch.device, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.from_numpy(batch.input_ids).to(device, non_blocking=True)
    mask = torch.from_numpy(batch.target_mask).to(device, non_blocking=True)
    ids_ext, mask_ext = shifted(ids, mask, n)
    return ids, ids_ext, mask_ext


def _autocast(device: torch.device) -> torch.autocast:
    """A fresh bf16 autocast context on GPU (disabled on CPU: float32 there)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def evaluate(spec: torch.nn.Module, base: torch.nn.Module, seqs: Sequences, device: torch.device, max_len: int,
             tokens_per_batch: int, limit: int = 0) -> dict:
    """Held-out draft acceptance (greedy chains, as served) of `spec` on `seqs`."""
    count = len(seqs) if not limit else min(limit, len(seqs))
    if count == 0:
        return acceptance_summary(torch.zeros(spec.n_predict + 1, dtype=torch.long))
    order = sorted(range(count), key=lambda i: int(seqs.lengths[i]))
    totals = torch.zeros(spec.n_predict + 1, dtype=torch.long)
    was_training = spec.training
    spec.eval()
    start = 0
    while start < count:
        width = min(int(seqs.lengths[order[start]]), max_len)
        rows = max(1, tokens_per_batch // max(width, 1))
        indices = order[start:start + rows]
        start += len(indices)
        batch = make_batch(seqs, indices, max_len)
        ids = torch.from_numpy(batch.input_ids).to(device)
        mask = torch.from_numpy(batch.target_mask).to(device)
        lengths = torch.from_numpy(batch.lengths).to(device)
        with _autocast(device):
            hidden = final_hidden_states(base, ids)
            totals += acceptance_counts(spec, hidden, ids, mask, lengths).cpu()
    spec.train(was_training)
    return acceptance_summary(totals)


def run_train(config: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) and export; returns the summary written to train_summary.json (rank 0)."""
    from tqdm import tqdm

    config.validate()
    dist_env = _Dist(config.device)
    device = dist_env.device
    out = Path(config.out_dir)
    if dist_env.main:
        out.mkdir(parents=True, exist_ok=True)
    dist_env.barrier()
    torch.manual_seed(config.seed)

    train = read_split(config.data_dir, "train")
    held_out = read_split(config.data_dir, "held_out")
    if len(train) == 0:
        raise ValueError(f"{config.data_dir} has no training shards: run the data stage first")
    base = load_base(config.model, device)
    spec_config = speculator_config(config, base)
    spec = build_speculator(spec_config)
    if config.init_from_base:
        init_from_base(spec, base)
    spec.to(device).train()
    objective: torch.nn.Module = SpeculatorObjective(spec)
    if dist_env.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in spec.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay,
                                  fused=device.type == "cuda")

    step, elapsed_before, tokens_seen = 0, 0.0, 0
    state_path = out / STATE_NAME
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["identity"] != config.identity():
            raise ValueError(f"{state_path} was made with other settings; delete it or choose another --out-dir")
        spec.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before, tokens_seen = state["step"], state["elapsed"], state["tokens_seen"]

    def save_state(elapsed: float) -> None:
        if dist_env.main:
            tmp = state_path.with_suffix(".tmp")
            torch.save({"identity": config.identity(), "spec_config": spec_config.to_dict(), "model": spec.state_dict(),
                        "optimizer": optimizer.state_dict(), "step": step, "elapsed": elapsed,
                        "tokens_seen": tokens_seen}, tmp)
            tmp.replace(state_path)

    batches = token_budget_batches(train, config.tokens_per_batch, config.max_len, config.seed, dist_env.rank,
                                   dist_env.world_size)
    for _ in range(step):  # resume at the same place of the batch plan
        next(batches)
    n = spec_config.n_predict
    start = time.monotonic()
    window = torch.zeros(n, 3, dtype=torch.float64, device=device)
    history: list[dict] = []
    first_loss = None
    bar = tqdm(total=config.max_steps or None, initial=step, disable=not (progress and dist_env.main), unit="step",
               desc=f"train[{spec_config.method}]")
    while True:
        elapsed = elapsed_before + time.monotonic() - start
        done = max(step / config.max_steps if config.max_steps else 0.0,
                   elapsed / config.max_seconds if config.max_seconds else 0.0)
        if dist_env.all_max(done) >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = _lr(config, done)
        batch = make_batch(train, next(batches), config.max_len)
        ids, ids_ext, mask_ext = _to_device(batch, device, n)
        with _autocast(device):
            hidden = final_hidden_states(base, ids)
            loss, stats = objective(hidden, ids_ext, mask_ext)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        window += stats.double()
        tokens_seen += int(batch.target_mask.sum())
        if step % config.log_every == 0 or step == 1:
            totals = dist_env.all_sum(window.clone())
            ce = (totals[:, 0] / totals[:, 2].clamp_min(1)).tolist()
            acc = (totals[:, 1] / totals[:, 2].clamp_min(1)).tolist()
            row = {"step": step, "loss": round(sum(ce), 4), "ce": [round(v, 4) for v in ce],
                   "acc": [round(v, 4) for v in acc], "elapsed_s": round(elapsed, 2)}
            first_loss = row["loss"] if first_loss is None else first_loss
            history.append(row)
            window.zero_()
            bar.set_postfix(loss=row["loss"], acc0=row["acc"][0], tok_s=int(tokens_seen / max(elapsed, 1e-6)))
        bar.update(1)
        if config.save_every and step % config.save_every == 0:
            save_state(elapsed_before + time.monotonic() - start)
    bar.close()
    train_s = elapsed_before + time.monotonic() - start
    save_state(train_s)
    summary: dict[str, Any] = {}
    if dist_env.main:
        spec.eval()
        save_speculator(spec, out / EXPORT_DIR, dtype=getattr(torch, config.export_dtype))
        eval_start = time.monotonic()
        acceptance = evaluate(spec, base, held_out, device, config.max_len, config.tokens_per_batch,
                              config.eval_sequences)
        summary = {
            "variant": "lstm" if spec_config.method == "sum_lstm" else "mlp",
            "method": spec_config.method, "n_predict": n, "width": spec_config.width,
            "tie_weights": spec_config.tie_weights, "steps": step, "train_s": round(train_s, 2),
            "train_tokens": tokens_seen * dist_env.world_size,
            "train_sequences": len(train), "train_completion_tokens": train.completion_tokens,
            "world_size": dist_env.world_size, "device": str(device),
            "first_loss": first_loss, "final_loss": history[-1]["loss"] if history else None,
            "history": history, "held_out": acceptance, "eval_s": round(time.monotonic() - eval_start, 2),
            "export_dir": str(out / EXPORT_DIR), "config": asdict(config),
        }
        (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    dist_env.barrier()
    dist_env.close()
    return summary


def export_state(train_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 dtype: torch.dtype = torch.bfloat16) -> None:
    """Export the speculator of a (possibly unfinished) run's train_state.pt in Arctic's format."""
    state_path = Path(train_dir) / STATE_NAME
    if not state_path.exists():
        raise ValueError(f"{train_dir} has no {STATE_NAME}")
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    spec = build_speculator(SpeculatorConfig.from_dict(state["spec_config"]))
    spec.load_state_dict(state["model"])
    save_speculator(spec.eval(), out_dir, dtype=dtype)


__all__ = ["TrainConfig", "evaluate", "export_state", "run_train"]
