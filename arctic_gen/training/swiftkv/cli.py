"""`arctic-gen distill-swiftkv`: distill a Llama checkpoint into a SwiftKV checkpoint (argv → DistillConfig).

    arctic-gen distill-swiftkv --model LLAMA_DIR --output-dir OUT [--num-key-value-layers K] ...
    torchrun --nproc-per-node 8 -m arctic_gen.training.swiftkv.cli --model LLAMA_DIR --output-dir OUT

Prints one JSON line with the result (checkpoint path, steps, agreement before/after, first/last loss).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from arctic_gen.models.llama_swiftkv_config import SwiftKVConfigError


def build_parser() -> argparse.ArgumentParser:
    from arctic_gen.training.swiftkv.distill import DistillConfig

    defaults = DistillConfig(model="", output_dir="")
    p = argparse.ArgumentParser(
        prog="arctic-gen distill-swiftkv",
        description="Distill a Llama checkpoint into a SwiftKV (llama_swiftkv) checkpoint that vLLM serves with "
                    "the arctic_gen plugin. Only the SwiftKV projections train; the teacher stays frozen.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="teacher: a Hugging Face Llama checkpoint directory")
    p.add_argument("--output-dir", required=True,
                   help="output directory: checkpoint/ (the SwiftKV model), train_state.pt, metrics.json")
    p.add_argument("--num-key-value-layers", type=int, default=defaults.num_key_value_layers,
                   help="K: prompt tokens skip layers >= K (default: half the layers)")
    p.add_argument("--key-value-group-size", type=int, default=defaults.key_value_group_size,
                   help="AcrossKV: this many layers >= K share one K/V projection and KV cache")
    p.add_argument("--max-steps", type=int, default=defaults.max_steps, help="optimizer steps")
    p.add_argument("--max-time-s", type=float, default=defaults.max_time_s,
                   help="stop after this many seconds of training (the checkpoint is still written)")
    p.add_argument("--stop-after-steps", type=int, default=defaults.stop_after_steps,
                   help="stop this run after this many steps (schedule still spans --max-steps; rerun to resume)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="sequences per step and process")
    p.add_argument("--seq-len", type=int, default=defaults.seq_len, help="tokens per sequence (truncated)")
    p.add_argument("--lr", type=float, default=defaults.lr, help="peak AdamW learning rate (cosine decay to 10%%)")
    p.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay")
    p.add_argument("--temperature", type=float, default=defaults.temperature,
                   help="distillation temperature (the KL term is scaled by its square)")
    p.add_argument("--mse-weight", type=float, default=defaults.mse_weight,
                   help="weight of the late-hidden-layer MSE term (0 disables it)")
    p.add_argument("--mse-layer", type=int, default=defaults.mse_layer,
                   help="hidden_states index for the MSE term (default: num_hidden_layers - 1)")
    p.add_argument("--corpus", default=defaults.corpus,
                   help="JSON lines with prompt/response (default: Python standard library docstrings, offline)")
    p.add_argument("--corpus-packages", nargs="*", default=list(defaults.corpus_packages),
                   help="installed packages whose docstrings extend the default corpus (e.g. numpy torch)")
    p.add_argument("--max-examples", type=int, default=defaults.max_examples,
                   help="use at most this many corpus examples")
    p.add_argument("--held-out-fraction", type=float, default=defaults.held_out_fraction,
                   help="fraction of examples kept out of training for the agreement measurement")
    p.add_argument("--eval-examples", type=int, default=defaults.eval_examples,
                   help="held-out examples scored for next-token agreement before/after (0 skips)")
    p.add_argument("--save-every", type=int, default=defaults.save_every, help="steps between resumable states")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over even if OUTPUT_DIR/train_state.pt exists")
    p.add_argument("--device", default=defaults.device, choices=["auto", "cpu", "cuda"], help="training device")
    p.add_argument("--dtype", default=defaults.dtype, choices=["auto", "float32", "bfloat16"],
                   help="teacher weights/compute dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="data order and initialization seed")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(resume=defaults.resume, progress=defaults.progress)
    return p


def main(argv: list[str] | None = None) -> int:
    from arctic_gen.training.swiftkv.distill import DistillConfig, DistillError, distill

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    config = DistillConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        result = distill(config)
    except (DistillError, SwiftKVConfigError) as exc:
        print(f"arctic-gen distill-swiftkv: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: one summary line
        summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "losses"}
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
