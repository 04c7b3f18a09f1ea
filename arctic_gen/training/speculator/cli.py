"""`arctic-gen train-speculator {data,train,export,eval}`: argv → stage config → stage; prints a JSON summary.

    data    continuations of chat prompts from the base model with vLLM → token shards (resumable)
    train   the speculator on the base model's hidden states (resumable; `torchrun` for several GPUs) → export
    export  a run's latest train_state.pt → Arctic checkpoint directory
    eval    held-out draft acceptance of a speculator directory (Arctic's format) on a data directory
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields

from arctic_gen.models.speculator_config import SpeculatorLoadError


def _engine_arg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--engine-arg takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float, "str": str, "bool": _bool}.get(str(f.type))
        if kind is None:
            continue
        if f.default is MISSING:  # required
            parser.add_argument(flag, type=kind, required=True)
        else:
            parser.add_argument(flag, type=kind, default=f.default)


def _parser() -> argparse.ArgumentParser:
    from arctic_gen.training.speculator.data import DataConfig
    from arctic_gen.training.speculator.train import TrainConfig

    parser = argparse.ArgumentParser(prog="arctic-gen train-speculator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)

    data = sub.add_parser("data", help="generate training data with vLLM from the base model")
    _add_dataclass_args(data, DataConfig, skip=("engine_args",))
    data.add_argument("--engine-arg", type=_engine_arg, action="append", default=[],
                      help="extra vllm.LLM argument KEY=VALUE (VALUE parsed as JSON when it can be)")
    data.add_argument("--data-parallel-size", type=int, default=1, help="worker processes, one GPU each")
    data.add_argument("--shard-rank", type=int, default=0, help=argparse.SUPPRESS)
    data.add_argument("--num-shard-ranks", type=int, default=1, help=argparse.SUPPRESS)
    data.add_argument("--no-progress", action="store_true")

    train = sub.add_parser("train", help="train a speculator (torchrun for several GPUs) and export it")
    _add_dataclass_args(train, TrainConfig)
    train.add_argument("--no-progress", action="store_true")

    export = sub.add_parser("export", help="export a run's latest train_state.pt in Arctic's format")
    export.add_argument("--train-dir", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))

    evaluate = sub.add_parser("eval", help="held-out draft acceptance of a speculator directory")
    evaluate.add_argument("--speculator", required=True)
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--data-dir", required=True)
    evaluate.add_argument("--split", default="held_out", choices=("train", "held_out"))
    evaluate.add_argument("--max-len", type=int, default=512)
    evaluate.add_argument("--tokens-per-batch", type=int, default=16384)
    evaluate.add_argument("--limit", type=int, default=0)
    evaluate.add_argument("--device", default="auto")
    return parser


def _config(cls: type, args: argparse.Namespace, **extra: object):
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}, **extra)


def _run(args: argparse.Namespace, argv: list[str]) -> dict:
    if args.stage == "data":
        from arctic_gen.training.speculator.data import DataConfig, run_data, run_data_parallel

        config = _config(DataConfig, args, engine_args=dict(args.engine_arg))
        if args.data_parallel_size > 1:
            code = run_data_parallel(config, args.data_parallel_size, argv)
            if code:
                raise RuntimeError(f"a data worker exited with status {code}")
            return {"stage": "data", "workers": args.data_parallel_size}
        return {"stage": "data", **run_data(config, args.shard_rank, args.num_shard_ranks, not args.no_progress)}
    if args.stage == "train":
        from arctic_gen.training.speculator.train import TrainConfig, run_train

        summary = run_train(_config(TrainConfig, args), progress=not args.no_progress)
        if not summary:  # ranks other than 0 under torchrun
            return {}
        return {"stage": "train", **{k: v for k, v in summary.items() if k not in ("history", "config")}}
    if args.stage == "export":
        import torch

        from arctic_gen.training.speculator.train import export_state

        export_state(args.train_dir, args.out, getattr(torch, args.dtype))
        return {"stage": "export", "out": args.out}
    from arctic_gen.models.speculator_config import load_speculator
    from arctic_gen.training.speculator.base_model import load_base, pick_device
    from arctic_gen.training.speculator.tokens import read_split
    from arctic_gen.training.speculator.train import evaluate

    device = pick_device(args.device)
    base = load_base(args.model, device)
    spec = load_speculator(args.speculator, device, next(base.parameters()).dtype)
    seqs = read_split(args.data_dir, args.split)
    return {"stage": "eval", "split": args.split,
            **evaluate(spec, base, seqs, device, args.max_len, args.tokens_per_batch, args.limit)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        result = _run(args, argv)
    except (ValueError, SpeculatorLoadError, RuntimeError) as exc:
        print(f"arctic-gen train-speculator {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    if result:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
