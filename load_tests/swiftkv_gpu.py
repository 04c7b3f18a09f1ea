"""SwiftKV on the GPU: prefill/decode throughput vs plain Llama, and the SmolLM2 distillation (one command each).

    # Llama-3.1-8B-shaped random weights (load_format="dummy"), plain vs SwiftKV K=16, vLLM, same GPU, ~4-5 min:
    python load_tests/swiftkv_gpu.py bench --out "$OUT"
    # SmolLM2 distilled to K = L/2 on the stdlib-docstring corpus; agreement before/after, ~6-8 min:
    python load_tests/swiftkv_gpu.py distill --model /path/to/smollm2 --out "$OUT"
    # CPU toy runs of both (shapes/budgets shrunk), to check the script itself:
    python load_tests/swiftkv_gpu.py bench --toy --out /tmp/x ; python load_tests/swiftkv_gpu.py distill --toy ...

Each writes `$OUT/swiftkv_<yyyymmdd>.json` (a list of rows with the fields of load_tests/results/swiftkv_*.json;
rows already in the file are kept) and prints a summary. Throughput method (both variants identical, each engine in
its own subprocess, one after the other): prefill = N prompts of `--prompt-len` random token ids with max_tokens=1,
tokens/s = N × prompt_len / wall time; decode = B prompts of `--decode-prompt-len` (8) tokens run once with max_tokens=1
and once with max_tokens=1+T, decode tokens/s = B × T / (difference of the two wall times; short prompts keep the
prefill, which SwiftKV also shortens, out of the difference). Prefix caching is off (random prompts).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LLAMA_8B = {
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}
TOY = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
       "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1024, "max_position_embeddings": 2048,
       "rms_norm_eps": 1e-5, "rope_theta": 10000.0}


def _commit() -> str:
    if os.environ.get("ARCTIC_COMMIT"):
        return os.environ["ARCTIC_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _write_rows(out_dir: Path, rows: list[dict]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"swiftkv_{dt.datetime.now(dt.timezone.utc):%Y%m%d}.json"
    existing = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(existing + rows, indent=2) + "\n")
    return path


def _model_dir(root: Path, shape: dict, k: int | None, dtype: str) -> Path:
    """A config-only Llama directory (weights come from load_format="dummy")."""
    name = "plain" if k is None else f"swiftkv-k{k}"
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    config = {**shape, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "tie_word_embeddings": False, "torch_dtype": dtype, "bos_token_id": 1, "eos_token_id": 2,
              "attention_bias": False, "mlp_bias": False}
    if k is not None:
        config.update({"architectures": ["LlamaSwiftKVForCausalLM"], "model_type": "llama_swiftkv",
                       "num_key_value_layers": k, "key_value_group_size": 1})
    (d / "config.json").write_text(json.dumps(config, indent=2))
    return d


# --- one engine (subprocess) ------------------------------------------------------------------------------------


def _engine_main(args: argparse.Namespace) -> None:
    import random

    if args.toy:
        sys.path.insert(0, str(REPO))
        from arctic_gen.testing import cpu_vllm_env

        cpu_vllm_env()
    from vllm import LLM, SamplingParams

    kwargs = dict(model=args.model, load_format="dummy", skip_tokenizer_init=True, enable_prefix_caching=False,
                  max_model_len=args.prompt_len + 1024, seed=0)
    if args.toy:
        kwargs.update(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=256 * 2**20,
                      max_num_batched_tokens=1024)
    else:
        kwargs.update(dtype="bfloat16", gpu_memory_utilization=0.85)
    if args.custom_ops:
        kwargs["compilation_config"] = {"custom_ops": list(args.custom_ops)}
    started = time.perf_counter()
    llm = LLM(**kwargs)
    startup_s = time.perf_counter() - started
    rng = random.Random(0)
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]

    def prompts(n: int, length: int) -> list[dict]:
        return [{"prompt_token_ids": [rng.randrange(10, vocab - 10) for _ in range(length)]} for _ in range(n)]

    def timed(batch: list[dict], max_tokens: int) -> float:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        t0 = time.perf_counter()
        outs = llm.generate(batch, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        assert all(len(o.outputs[0].token_ids) == max_tokens for o in outs)
        return elapsed

    timed(prompts(4, 64), 4)  # warm-up
    prefill_batch = prompts(args.num_prompts, args.prompt_len)
    prefill_s = timed(prefill_batch, 1)
    decode_batch = prompts(args.decode_batch, args.decode_prompt_len)
    base_s = timed(decode_batch, 1)
    full_s = timed(decode_batch, 1 + args.decode_tokens)
    result = {
        "prefill_tokens_per_s": args.num_prompts * args.prompt_len / prefill_s,
        "decode_tokens_per_s": args.decode_batch * args.decode_tokens / max(full_s - base_s, 1e-9),
        "prefill_s": prefill_s, "decode_s": full_s - base_s, "startup_s": startup_s,
    }
    Path(args.result).write_text(json.dumps(result))


def _run_engine(model: Path, args: argparse.Namespace, scratch: Path) -> dict:
    result = scratch / f"{model.name}.result.json"
    cmd = [sys.executable, __file__, "_engine", "--model", str(model), "--result", str(result),
           "--prompt-len", str(args.prompt_len), "--num-prompts", str(args.num_prompts),
           "--decode-batch", str(args.decode_batch), "--decode-tokens", str(args.decode_tokens),
           "--decode-prompt-len", str(args.decode_prompt_len)]
    if args.custom_ops:
        cmd += ["--custom-ops", *args.custom_ops]
    if args.toy:
        cmd.append("--toy")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)])))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"engine for {model.name} failed (rc {proc.returncode})")
    row = json.loads(result.read_text())
    row["wall_s"] = time.perf_counter() - t0
    return row


def bench(args: argparse.Namespace) -> int:
    shape = TOY if args.toy else LLAMA_8B
    k = args.k if args.k is not None else shape["num_hidden_layers"] // 2
    if args.toy:
        args.prompt_len, args.num_prompts = min(args.prompt_len, 256), min(args.num_prompts, 8)
        args.decode_batch, args.decode_tokens = min(args.decode_batch, 4), min(args.decode_tokens, 16)
    scratch = Path(tempfile.mkdtemp(prefix="swiftkv-bench-"))
    dtype = "float32" if args.toy else "bfloat16"
    plain = _run_engine(_model_dir(scratch, shape, None, dtype), args, scratch)
    swift = _run_engine(_model_dir(scratch, shape, k, dtype), args, scratch)
    import vllm

    row = {
        "model": "toy-llama-random" if args.toy else "llama-3.1-8b-shape-random",
        "K": k, "num_hidden_layers": shape["num_hidden_layers"],
        "prefill_tokens_per_s": round(swift["prefill_tokens_per_s"], 1),
        "plain_prefill_tokens_per_s": round(plain["prefill_tokens_per_s"], 1),
        "decode_tokens_per_s": round(swift["decode_tokens_per_s"], 1),
        "plain_decode_tokens_per_s": round(plain["decode_tokens_per_s"], 1),
        "agreement_before": None, "agreement_after": None,
        "prefill_speedup": round(swift["prefill_tokens_per_s"] / plain["prefill_tokens_per_s"], 3),
        "decode_ratio": round(swift["decode_tokens_per_s"] / plain["decode_tokens_per_s"], 3),
        "settings": {"prompt_len": args.prompt_len, "num_prompts": args.num_prompts,
                     "decode_batch": args.decode_batch, "decode_tokens": args.decode_tokens,
                     "decode_prompt_len": args.decode_prompt_len, "custom_ops": args.custom_ops,
                     "dtype": dtype, "load_format": "dummy", "prefix_caching": False},
        "timings_s": {"plain": plain, "swiftkv": swift},
        "vllm": vllm.__version__, "device": _device_name(args.toy),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": _commit(),
    }
    path = _write_rows(Path(args.out), [row])
    print(f"SwiftKV bench ({row['model']}, K={k}/{shape['num_hidden_layers']}, vLLM {row['vllm']}, {row['device']}):")
    print(f"  prefill  plain {row['plain_prefill_tokens_per_s']:>12,.0f} tok/s   swiftkv "
          f"{row['prefill_tokens_per_s']:>12,.0f} tok/s   x{row['prefill_speedup']:.3f} (target >= 1.7)")
    print(f"  decode   plain {row['plain_decode_tokens_per_s']:>12,.0f} tok/s   swiftkv "
          f"{row['decode_tokens_per_s']:>12,.0f} tok/s   x{row['decode_ratio']:.3f} (target >= 0.95)")
    print(f"  wrote {path}")
    return 0


def _device_name(toy: bool) -> str:
    if toy:
        return "cpu"
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


# --- distillation ------------------------------------------------------------------------------------------------


def distill_cmd(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    from arctic_gen.training.swiftkv.distill import DistillConfig, distill

    model = args.model
    if args.toy and model is None:
        from arctic_gen.testing import tiny_llama

        model = str(tiny_llama(layers=4))
    if model is None:
        raise SystemExit("--model is required (the SmolLM2 directory)")
    layers = json.loads((Path(model) / "config.json").read_text())["num_hidden_layers"]
    k = args.k if args.k is not None else layers // 2
    out_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="swiftkv-distill-"))
    config = DistillConfig(
        model=model, output_dir=str(out_dir), num_key_value_layers=k, max_steps=args.max_steps,
        max_time_s=args.budget_s, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
        warmup_steps=min(50, max(1, args.max_steps // 20)), eval_examples=args.eval_examples,
        max_examples=args.max_examples, corpus_packages=tuple(args.corpus_packages),
        save_every=max(args.max_steps // 4, 1), resume=False,
        device="cpu" if args.toy else "auto", progress=not args.no_progress)
    started = time.perf_counter()
    result = distill(config)
    row = {
        "model": Path(model).name, "K": k, "num_hidden_layers": layers,
        "prefill_tokens_per_s": None, "plain_prefill_tokens_per_s": None,
        "decode_tokens_per_s": None, "plain_decode_tokens_per_s": None,
        "agreement_before": round(result.agreement_before, 4) if result.agreement_before is not None else None,
        "agreement_after": round(result.agreement_after, 4) if result.agreement_after is not None else None,
        "held_out_kl_before": result.held_out_kl_before, "held_out_kl_after": result.held_out_kl_after,
        "steps": result.steps, "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "settings": {"batch_size": args.batch_size, "seq_len": args.seq_len, "lr": args.lr,
                     "max_steps": args.max_steps, "budget_s": args.budget_s, "temperature": config.temperature,
                     "mse_weight": config.mse_weight,
                     "corpus": f"docstrings: python stdlib + {'+'.join(args.corpus_packages)} (10% held out by name)",
                     "eval_examples": args.eval_examples},
        "device": _device_name(args.toy),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": _commit(),
    }
    path = _write_rows(Path(args.out), [row])
    print(f"SwiftKV distillation ({row['model']}, K={k}/{layers}, {result.steps} steps, "
          f"{row['train_seconds']} s on {row['device']}):")
    print(f"  next-token agreement with the teacher on held-out text: before {row['agreement_before']}, "
          f"after {row['agreement_after']} (target: after >= 0.85 and >= before + 0.2)")
    print(f"  held-out KL(T=2): before {result.held_out_kl_before:.4f}, after {result.held_out_kl_after:.4f}")
    print(f"  wrote {path}; checkpoint {result.checkpoint}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="prefill/decode throughput, plain Llama vs SwiftKV",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--out", default=os.environ.get("OUT", "load_tests/results"), help="where the JSON goes")
    b.add_argument("--k", type=int, default=None, help="num_key_value_layers (default: half the layers)")
    b.add_argument("--prompt-len", type=int, default=2048, help="prefill prompt length (tokens)")
    b.add_argument("--num-prompts", type=int, default=128, help="prefill requests (fills the batch many times)")
    b.add_argument("--decode-batch", type=int, default=128, help="concurrent requests in the decode measurement")
    b.add_argument("--decode-tokens", type=int, default=256, help="decode tokens per request")
    b.add_argument("--decode-prompt-len", type=int, default=8,
                   help="prompt length of the decode requests (short: the subtracted prefill stays negligible)")
    b.add_argument("--custom-ops", nargs="*", default=[],
                   help="vLLM compilation_config.custom_ops for BOTH variants, e.g. +rms_norm +silu_and_mul "
                        "+rotary_embedding (SwiftKV's prompt path runs eager: fused kernels matter there)")
    b.add_argument("--toy", action="store_true", help="tiny model on the CPU (checks the script)")
    d = sub.add_parser("distill", help="distill SmolLM2 to K = L/2; agreement before/after",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--model", default=None, help="teacher directory (SmolLM2 in HF format)")
    d.add_argument("--out", default=os.environ.get("OUT", "load_tests/results"), help="where the JSON goes")
    d.add_argument("--work-dir", default=None, help="training output directory (default: a temporary one)")
    d.add_argument("--k", type=int, default=None, help="num_key_value_layers (default: half the layers)")
    d.add_argument("--max-steps", type=int, default=3000, help="optimizer steps (schedule length)")
    d.add_argument("--budget-s", type=float, default=330.0, help="stop training after this many seconds")
    d.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    d.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    d.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    d.add_argument("--eval-examples", type=int, default=110, help="held-out examples scored")
    d.add_argument("--max-examples", type=int, default=None, help="corpus size cap")
    d.add_argument("--corpus-packages", nargs="*", default=["numpy", "torch"],
                   help="installed packages whose docstrings join the stdlib corpus")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.add_argument("--toy", action="store_true", help="tiny Llama on the CPU, a few steps (checks the script)")
    e = sub.add_parser("_engine")  # internal: one engine in its own process
    e.add_argument("--model", required=True)
    e.add_argument("--result", required=True)
    e.add_argument("--prompt-len", type=int, required=True)
    e.add_argument("--num-prompts", type=int, required=True)
    e.add_argument("--decode-batch", type=int, required=True)
    e.add_argument("--decode-tokens", type=int, required=True)
    e.add_argument("--decode-prompt-len", type=int, required=True)
    e.add_argument("--custom-ops", nargs="*", default=[])
    e.add_argument("--toy", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "bench":
        return bench(args)
    if args.cmd == "distill":
        if args.toy:
            args.max_steps, args.budget_s, args.batch_size = min(args.max_steps, 4), min(args.budget_s, 120), 2
            args.seq_len, args.eval_examples, args.max_examples = 64, 4, args.max_examples or 30
            args.corpus_packages = []
        return distill_cmd(args)
    _engine_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
