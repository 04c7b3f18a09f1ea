"""Speculator training on one GPU in one command: vLLM data generation from the base model, LSTM and MLP
speculators trained on it, held-out draft acceptance of each; checkpoints for the end-to-end benchmark.

    python3 load_tests/speculator_train_gpu.py --model /path/SmolLM2-135M-Instruct --out-dir /tmp/spec_ckpts

Each stage runs as `python -m arctic_gen.training.speculator.cli <stage>` in its own process (the GPU is free
between stages), with a wall-clock budget per stage. Writes `$OUT/speculator_train_<yyyymmdd>.json` (one row per
variant: variant, n_predict, train_tokens, train_s, data_s, draft_acceptance {per_head, mean, acceptance_rate},
mean_accepted_len, ...) and prints a summary. Checkpoints (Arctic's format): <out-dir>/lstm/speculator and
<out-dir>/mlp/speculator; data: <out-dir>/data.

Toy run on the CPU (checks the script end to end in a few minutes):
    python load_tests/speculator_train_gpu.py --model <tiny llama dir> --out-dir /tmp/spec_toy --toy
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "arctic_gen.training.speculator.cli"]


def _stage(args: list[str], log: Path, timeout_s: float) -> dict:
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.run([*CLI, *args], stdout=subprocess.PIPE, stderr=f, text=True, timeout=timeout_s)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"stage {args[0]} failed (exit {proc.returncode}); log tail:\n{tail}")
    result = json.loads(lines[-1])
    result["wall_s"] = round(time.monotonic() - start, 2)
    return result


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--n-predict", type=int, default=3)
    parser.add_argument("--width", type=int, default=0, help="0: the base model's hidden size")
    parser.add_argument("--data-seconds", type=float, default=90.0,
                        help="generation budget of the data stage (vLLM's start-up not counted)")
    parser.add_argument("--lstm-seconds", type=float, default=130.0)
    parser.add_argument("--mlp-seconds", type=float, default=60.0)
    parser.add_argument("--samples-per-prompt", type=int, default=6)
    parser.add_argument("--temperature", type=float, default=0.6,
                        help="sampling temperature of the training data (the held-out data is greedy)")
    parser.add_argument("--held-out-prompts", type=int, default=128)
    parser.add_argument("--tokens-per-batch", type=int, default=32768)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--variants", default="lstm,mlp", help="comma-separated: lstm, mlp")
    parser.add_argument("--engine-arg", action="append", default=[],
                        help="extra vllm.LLM argument of the data stage, KEY=VALUE (e.g. enforce_eager=false)")
    parser.add_argument("--toy", action="store_true", help="CPU toy size (float32, a few prompts and steps)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # no sampler JIT build inside the data budget
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_dir = Path(os.environ.get("OUT", out_dir))
    results_dir.mkdir(parents=True, exist_ok=True)
    data_dir = out_dir / "data"
    started = time.monotonic()

    data_args = ["data", "--model", args.model, "--out-dir", str(data_dir), "--samples-per-prompt",
                 str(args.samples_per_prompt), "--temperature", str(args.temperature), "--top-p", "1.0",
                 "--held-out-prompts", str(args.held_out_prompts), "--max-seconds", str(args.data_seconds),
                 "--no-progress"]
    train_common = ["--model", args.model, "--data-dir", str(data_dir), "--n-predict", str(args.n_predict),
                    "--width", str(args.width), "--lr", str(args.lr), "--no-progress", "--log-every", "50"]
    if args.toy:
        from arctic_gen.testing import cpu_vllm_env

        cpu_vllm_env()
        data_args += ["--max-prompts", "32", "--prompts-per-shard", "16", "--max-new-tokens", "48",
                      "--max-prompt-tokens", "128", "--dtype", "float32", "--engine-arg", "enforce_eager=true",
                      "--engine-arg", f"kv_cache_memory_bytes={64 * 2**20}", "--held-out-prompts", "8"]
        train_common += ["--tokens-per-batch", "2048", "--max-steps", "12", "--device", "cpu",
                         "--export-dtype", "float32", "--log-every", "4"]
    else:
        data_args += ["--prompts-per-shard", "512", "--max-new-tokens", "256", "--max-prompt-tokens", "256",
                      "--dtype", "bfloat16", "--engine-arg", "enforce_eager=true", "--engine-arg",
                      "max_num_seqs=1024", "--engine-arg", "gpu_memory_utilization=0.85"]
        train_common += ["--tokens-per-batch", str(args.tokens_per_batch)]

    for extra in args.engine_arg:  # last one wins in the stage's parser
        data_args += ["--engine-arg", extra]
    print(f"[speculator_train_gpu] data stage (budget {args.data_seconds:.0f} s)...", flush=True)
    data = _stage(data_args, out_dir / "data.log", timeout_s=max(600.0, args.data_seconds * 3))
    print(f"[speculator_train_gpu] data: {json.dumps(data)}", flush=True)

    name = f"speculator_train_{datetime.date.today():%Y%m%d}{'_toy' if args.toy else ''}.json"
    rows: list[dict] = []

    def write_result() -> dict:
        result = {"kind": "speculator_train", "date": datetime.date.today().isoformat(), "commit": _commit(),
                  "data": data, "rows": rows, "total_s": round(time.monotonic() - started, 2), "toy": args.toy}
        (results_dir / name).write_text(json.dumps(result, indent=2) + "\n")
        return result

    plan = [("lstm", "sum_lstm", args.lstm_seconds), ("mlp", "sum_rnn", args.mlp_seconds)]
    for variant, method, seconds in [p for p in plan if p[0] in args.variants.split(",")]:
        budget = [] if args.toy else ["--max-seconds", str(seconds)]
        print(f"[speculator_train_gpu] train {variant}...", flush=True)
        try:
            summary = _stage(["train", *train_common, "--method", method, "--out-dir", str(out_dir / variant),
                              "--tie-weights", "true", *budget], out_dir / f"train_{variant}.log",
                             timeout_s=max(900.0, seconds * 3))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:  # keep the other variant's figures
            rows.append({"variant": variant, "method": method, "error": str(exc)[-2000:]})
            print(f"[speculator_train_gpu] {variant} FAILED: {exc}", flush=True)
            write_result()
            continue
        held = summary["held_out"]
        history = json.loads((out_dir / variant / "train_summary.json").read_text())["history"]
        rows.append({
            "variant": variant, "method": method, "n_predict": summary["n_predict"], "width": summary["width"],
            "tie_weights": summary["tie_weights"], "train_tokens": summary["train_tokens"],
            "train_steps": summary["steps"], "train_s": summary["train_s"], "stage_wall_s": summary["wall_s"],
            "data_s": data["seconds"], "data_engine_start_s": data.get("engine_start_s"),
            "data_generate_s": data.get("generate_s"), "data_completion_tokens": summary["train_completion_tokens"],
            "data_sequences": summary["train_sequences"],
            "draft_acceptance": {"per_head": held["per_head"], "mean": held["mean"],
                                 "acceptance_rate": held["acceptance_rate"],
                                 "per_head_cumulative": held["per_head_cumulative"]},
            "mean_accepted_len": held["mean_accepted_len"], "eval_positions": held["positions"],
            "first_loss": summary["first_loss"], "final_loss": summary["final_loss"],
            "loss_curve": [(h["step"], h["loss"]) for h in history],
            "speculator_dir": summary["export_dir"], "model": args.model, "device": summary["device"],
        })
        write_result()
        print(f"[speculator_train_gpu] {variant}: acceptance per head {held['per_head']} "
              f"(rate {held['acceptance_rate']}, mean accepted {held['mean_accepted_len']}), "
              f"{summary['train_tokens']} tokens in {summary['train_s']} s, loss {summary['first_loss']} -> "
              f"{summary['final_loss']}", flush=True)

    result = write_result()
    print(f"[speculator_train_gpu] wrote {results_dir / name}; total {result['total_s']} s", flush=True)
    for row in rows:
        if "error" in row:
            print(f"  {row['variant']:4s} FAILED (see {out_dir}/train_{row['variant']}.log)")
            continue
        ok = min(row["draft_acceptance"]["per_head"]) >= 0.5
        print(f"  {row['variant']:4s} n_predict={row['n_predict']} per-head {row['draft_acceptance']['per_head']} "
              f"rate {row['draft_acceptance']['acceptance_rate']} -> {'>= 50% per head' if ok else 'below 50%'}; "
              f"checkpoint {row['speculator_dir']}")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
