"""The seed's offline example, as written except for the local model path and the speculation method.

    python load_tests/gen_offline_example.py --model DIR [--method auto|suffix|arctic|ngram|none] [--max-tokens 800]

`--method auto` uses "suffix" when the plugin's suffix proposer is in this build, else vLLM's "ngram" (vLLM's own
"suffix" would need the arctic-inference package, which must not be installed next to our plugin). Prints the
text and one JSON line with tokens/s and speculation counters. CPU machines: add `--cpu` (float32, small KV cache).
"""

from __future__ import annotations

import argparse
import json
import time

SPECULATIVE_CONFIGS = {
    "suffix": {"method": "suffix", "suffix_cache_max_depth": 16},
    "ngram": {"method": "ngram", "num_speculative_tokens": 8, "prompt_lookup_max": 5, "prompt_lookup_min": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--method", default="auto", choices=["auto", "suffix", "arctic", "ngram", "none"])
    parser.add_argument("--speculator", help="speculator directory for --method arctic")
    parser.add_argument("--max-tokens", type=int, default=800)
    parser.add_argument("--cpu", action="store_true", help="float32, 64 MiB KV cache, eager (CPU machines)")
    parser.add_argument("--eager", action="store_true", help="enforce_eager (no torch.compile / CUDA graphs)")
    parser.add_argument("--ulysses-sequence-parallel-size", type=int, default=1,
                        help="SP ranks (CPU: set VLLM_CPU_OMP_THREADS_BIND to one core list per rank, e.g. '0|1')")
    parser.add_argument("--enable-shift-parallel", action="store_true")
    parser.add_argument("--shift-parallel-threshold", type=int, default=512)
    args = parser.parse_args()

    import vllm
    import vllm.plugins
    from vllm import LLM, SamplingParams

    vllm.plugins.load_general_plugins()

    method = args.method
    if method == "auto":
        from arctic_gen.patches.engine_args import proposer_available

        method = "suffix" if proposer_available("suffix") else "ngram"
    if method == "arctic":
        speculative_config = {"method": "arctic", "model": args.speculator, "num_speculative_tokens": 3,
                              "enable_suffix_decoding": True, "disable_by_batch_size": 64}
    else:
        speculative_config = SPECULATIVE_CONFIGS.get(method)
    extra = {"dtype": "float32", "kv_cache_memory_bytes": 64 * 2**20, "enforce_eager": True,
             "max_model_len": 1024} if args.cpu else {}
    if args.eager:
        extra["enforce_eager"] = True

    start = time.perf_counter()
    llm = LLM(
        model=args.model,
        tensor_parallel_size=1,
        ulysses_sequence_parallel_size=args.ulysses_sequence_parallel_size,
        enable_shift_parallel=args.enable_shift_parallel,
        shift_parallel_threshold=args.shift_parallel_threshold,
        speculative_config=speculative_config,
        disable_log_stats=False,
        **extra,
    )
    load_s = time.perf_counter() - start

    conversation = [
        {
            "role": "user",
            "content": "Write an essay about the importance of higher education.",
        },
    ]

    sampling_params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)

    start = time.perf_counter()
    outputs = llm.chat(conversation, sampling_params=sampling_params)
    gen_s = time.perf_counter() - start
    completion = outputs[0].outputs[0]
    print(completion.text)

    counters = {}
    for metric in llm.get_metrics():
        if metric.name.startswith("vllm:spec_decode_num_") and hasattr(metric, "value"):
            counters[metric.name.removeprefix("vllm:spec_decode_")] = metric.value
    print(json.dumps({"method": method, "vllm": vllm.__version__, "load_s": round(load_s, 1),
                      "completion_tokens": len(completion.token_ids), "finish_reason": completion.finish_reason,
                      "tokens_per_s": round(len(completion.token_ids) / gen_s, 1), "spec": counters,
                      "parallel_steps": (llm.collective_rpc("arctic_parallel_stats")[0]["steps"]
                                         if args.ulysses_sequence_parallel_size > 1 else None)}))


if __name__ == "__main__":
    main()
