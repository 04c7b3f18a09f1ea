"""SwiftKV distillation: the student starts as the teacher; only the SwiftKV tensors train.

Loss per batch: KL(teacher || student) at temperature T (× T²) on the response tokens, plus `mse_weight` × the
relative MSE between the student's and the teacher's residual stream entering layer `mse_layer` (a late layer).
AdamW with linear warm-up and cosine decay. Resumable: every `save_every` steps (and at the end) rank 0 writes
`train_state.pt` (step, SwiftKV tensors, optimizer, scheduler); a new run with the same output directory continues
from it. Several processes: start with `torchrun --nproc-per-node N -m arctic_gen.training.swiftkv.cli ...`;
the student is wrapped in torch's DistributedDataParallel (NCCL on GPUs, gloo on CPU) and each rank reads its own
shard of every global batch. The result is a Hugging Face directory (`output_dir/checkpoint`) that vLLM loads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from arctic_gen.models.llama_swiftkv_config import LlamaSwiftKVConfig, swiftkv_config_from_llama, validate_swiftkv
from arctic_gen.training.swiftkv import data as data_mod
from arctic_gen.training.swiftkv.checkpoint import init_swiftkv_tensors, save_checkpoint
from arctic_gen.training.swiftkv.loss import agreement, hidden_mse, kl_loss
from arctic_gen.training.swiftkv.model import SwiftKVParams, SwiftKVStudent

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"


class DistillError(RuntimeError):
    """The distillation cannot start as configured."""


@dataclass
class DistillConfig:
    model: str
    """Directory of the teacher (a Hugging Face Llama checkpoint)."""
    output_dir: str
    """Where `checkpoint/` (the SwiftKV model), `train_state.pt` and `metrics.json` go."""
    num_key_value_layers: int | None = None
    """K; default: half the layers (L // 2)."""
    key_value_group_size: int = 1
    """AcrossKV: layers >= K sharing one K/V projection."""
    max_steps: int = 200
    """Optimizer steps (the learning-rate schedule spans them)."""
    max_time_s: float | None = None
    """Stop earlier when training has run this long (the checkpoint is still written)."""
    stop_after_steps: int | None = None
    """Stop this run after this many steps (the schedule still spans max_steps; run again to resume)."""
    batch_size: int = 8
    """Sequences per optimizer step and rank."""
    seq_len: int = 512
    """Tokens per sequence (longer examples are truncated)."""
    lr: float = 3e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    temperature: float = 2.0
    """Distillation temperature; the KL term is multiplied by its square."""
    mse_weight: float = 1.0
    """Weight of the hidden-state MSE term (0 disables it)."""
    mse_layer: int | None = None
    """HF hidden_states index (the stream entering that layer) for the MSE term; default: L - 1."""
    corpus: str | None = None
    """JSON lines with "prompt"/"response"; default: docstrings of the Python standard library (offline)."""
    corpus_packages: tuple[str, ...] = ()
    """Installed packages whose docstrings extend the default corpus (e.g. ("numpy", "torch"))."""
    max_examples: int | None = None
    """Use at most this many corpus examples (before the train/held-out split)."""
    held_out_fraction: float = 0.1
    eval_examples: int = 64
    """Held-out examples scored for next-token agreement before and after training (0: skip)."""
    save_every: int = 50
    """Steps between resumable training states."""
    resume: bool = True
    """Continue from output_dir/train_state.pt when it exists."""
    device: str = "auto"
    """"auto" (the rank's CUDA device when there is one, else CPU), "cpu" or "cuda"."""
    dtype: str = "auto"
    """Teacher weights and compute: "float32", "bfloat16", or "auto" (bfloat16 on CUDA, float32 on CPU)."""
    seed: int = 0
    progress: bool = True
    """Show a progress bar (rank 0)."""

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "seq_len", "save_every"):
            if getattr(self, name) < 1:
                raise DistillError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise DistillError(f"temperature must be > 0, got {self.temperature}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise DistillError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if not (Path(self.model) / "config.json").exists():
            raise DistillError(f"{self.model} has no config.json: pass a Hugging Face Llama checkpoint directory")


@dataclass
class DistillResult:
    checkpoint: str
    steps: int
    num_key_value_layers: int
    agreement_before: float | None
    """Held-out next-token agreement (argmax) of student and teacher on response positions, before training."""
    agreement_after: float | None
    held_out_kl_before: float | None
    """Held-out KL(teacher || student) at the training temperature (× T²), before training."""
    held_out_kl_after: float | None
    first_loss: float | None
    last_loss: float | None
    train_seconds: float
    losses: list[float] = field(default_factory=list)


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _device(config: DistillConfig, local_rank: int) -> torch.device:
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def load_pair(config: DistillConfig, device: torch.device, dtype: torch.dtype,
              ) -> tuple[SwiftKVStudent, LlamaSwiftKVConfig, dict[str, torch.Tensor]]:
    """Teacher from `config.model`, SwiftKV params initialized from it (or from a resumed state)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    llama_config = AutoConfig.from_pretrained(config.model)
    if llama_config.model_type not in ("llama", "llama_swiftkv"):
        raise DistillError(f"the teacher must be a Llama checkpoint, got model_type {llama_config.model_type!r}")
    layers = llama_config.num_hidden_layers
    k = config.num_key_value_layers or layers // 2
    validate_swiftkv(layers, k, config.key_value_group_size)
    if k == layers:
        raise DistillError("num_key_value_layers equals the number of layers: there is nothing to distill")
    swiftkv_config = swiftkv_config_from_llama(llama_config, k, config.key_value_group_size)
    teacher = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype).to(device)
    teacher_tensors = {name: t for name, t in teacher.state_dict().items()}
    init = {name: t.float() for name, t in init_swiftkv_tensors(teacher_tensors, swiftkv_config).items()}
    params = SwiftKVParams(swiftkv_config, init).to(device)
    return SwiftKVStudent(teacher, swiftkv_config, params), swiftkv_config, teacher_tensors


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.bfloat16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def measure_agreement(student: SwiftKVStudent, batches: list[tuple[torch.Tensor, torch.Tensor]],
                      device: torch.device, dtype: torch.dtype, temperature: float) -> tuple[float, float]:
    """(fraction of held-out response positions where student and teacher pick the same next token, mean KL)."""
    same = total = 0
    kl_sum = 0.0
    for ids, mask in batches:
        ids, mask = ids.to(device), mask.to(device)
        with _autocast(device, dtype):
            teacher_logits, teacher_hidden = student.teacher_forward(ids)
            out = student.student_forward(ids, teacher_hidden)
        s, n = agreement(out.logits, teacher_logits, mask)
        same, total = same + s, total + n
        kl_sum += float(kl_loss(out.logits, teacher_logits, mask, temperature)) * n
    return same / max(total, 1), kl_sum / max(total, 1)


class _Step(torch.nn.Module):
    """The DDP-wrapped unit: the student forward and loss for one batch."""

    def __init__(self, student: SwiftKVStudent, config: DistillConfig, mse_layer: int) -> None:
        super().__init__()
        self.student, self.config, self.mse_layer = student, config, mse_layer

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        teacher_logits, teacher_hidden = self.student.teacher_forward(ids)
        keep = (self.mse_layer,) if self.config.mse_weight > 0 else ()
        out = self.student.student_forward(ids, teacher_hidden, keep_hidden=keep)
        kl = kl_loss(out.logits, teacher_logits, mask, self.config.temperature)
        mse = torch.zeros((), device=kl.device)
        if keep:
            mse = hidden_mse(out.hidden[self.mse_layer], teacher_hidden[self.mse_layer], mask)
        return kl + self.config.mse_weight * mse, kl.detach(), mse.detach()


def distill(config: DistillConfig) -> DistillResult:
    config.validate()
    rank, world, local_rank = _dist_env()
    device = _device(config, local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        config.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(config.seed)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    student, swiftkv_config, teacher_tensors = load_pair(config, device, dtype)
    layers = swiftkv_config.num_hidden_layers
    mse_layer = config.mse_layer if config.mse_layer is not None else layers - 1
    if config.mse_weight > 0 and not swiftkv_config.num_key_value_layers < mse_layer < layers:
        raise DistillError(f"mse_layer must be in ({swiftkv_config.num_key_value_layers}, {layers}), got {mse_layer}")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = (data_mod.jsonl_examples(config.corpus) if config.corpus
                else data_mod.stdlib_examples(max_examples=config.max_examples, packages=tuple(config.corpus_packages)))
    if config.max_examples is not None:
        examples = examples[: config.max_examples]
    train_ex, held_ex = data_mod.split(examples, config.held_out_fraction)
    train = [data_mod.encode(tokenizer, e, config.seq_len) for e in train_ex]
    held = [data_mod.encode(tokenizer, e, config.seq_len) for e in held_ex[: config.eval_examples]]
    held_batches = [data_mod.collate(held[i : i + config.batch_size], pad_id)
                    for i in range(0, len(held), config.batch_size)]
    batches = data_mod.Batches(train, config.batch_size, pad_id, config.seed, rank, world)

    step_module = _Step(student, config, mse_layer)
    trainable = [p for p in student.swiftkv.parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    start_step, losses = 0, []
    before: tuple[float, float] | None = None
    state_path = out_dir / STATE_FILE
    if config.resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state["num_key_value_layers"] != swiftkv_config.num_key_value_layers:
            raise DistillError(f"{state_path} was written for K={state['num_key_value_layers']}, not "
                               f"K={swiftkv_config.num_key_value_layers}: use another output directory")
        student.swiftkv.load_state_dict(state["swiftkv"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step, losses, before = state["step"], state["losses"], state.get("before")
        if rank == 0:
            logger.info("resuming SwiftKV distillation from step %d (%s)", start_step, state_path)
    elif held_batches and config.eval_examples > 0:
        before = measure_agreement(student, held_batches, device, dtype, config.temperature)

    model = step_module
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None)

    def save_state(step: int) -> None:
        if rank == 0:
            tmp = state_path.with_suffix(".tmp")
            torch.save({"step": step, "swiftkv": student.swiftkv.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "losses": losses, "before": before,
                        "num_key_value_layers": swiftkv_config.num_key_value_layers, "config": asdict(config)}, tmp)
            tmp.replace(state_path)

    from tqdm import tqdm

    bar = tqdm(total=config.max_steps, initial=start_step, desc="distill-swiftkv", unit="step",
               disable=not (config.progress and rank == 0))
    started = time.monotonic()
    step = start_step
    try:
        while step < config.max_steps:
            if config.max_time_s is not None and time.monotonic() - started >= config.max_time_s:
                break
            if config.stop_after_steps is not None and step - start_step >= config.stop_after_steps:
                break
            ids, mask = batches.batch(step)
            ids, mask = ids.to(device), mask.to(device)
            with _autocast(device, dtype):
                loss, kl, mse = model(ids, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", kl=f"{float(kl):.4f}", mse=f"{float(mse):.4f}")
            if step % config.save_every == 0:
                save_state(step)
    finally:
        bar.close()
    train_seconds = time.monotonic() - started
    save_state(step)

    after = None
    if held_batches and config.eval_examples > 0:
        after = measure_agreement(student, held_batches, device, dtype, config.temperature)
    checkpoint = out_dir / "checkpoint"
    if rank == 0:
        tensors = dict(teacher_tensors)
        for name, t in student.swiftkv.hf_state_dict().items():
            tensors[name] = t.to(next(iter(teacher_tensors.values())).dtype)
        save_checkpoint(checkpoint, swiftkv_config, tensors, tokenizer_dir=config.model)
    result = DistillResult(
        checkpoint=str(checkpoint), steps=step, num_key_value_layers=swiftkv_config.num_key_value_layers,
        agreement_before=before[0] if before else None, agreement_after=after[0] if after else None,
        held_out_kl_before=before[1] if before else None, held_out_kl_after=after[1] if after else None,
        first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
        train_seconds=train_seconds, losses=losses)
    if rank == 0:
        (out_dir / "metrics.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    if world > 1:
        torch.distributed.barrier()
    return result
