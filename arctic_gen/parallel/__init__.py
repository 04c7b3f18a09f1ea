"""Arctic Ulysses (sequence parallelism) and Shift Parallelism for the vLLM plugin.

`ulysses`: the SP process group, the per-rank attention-head layout and the two attention paths (all-to-all over
a sequence slice, or per-head attention over replicated tokens). `shift`: the per-step choice between the two
modes and its counters. The vLLM seams live in `arctic_gen.patches` (parallel_state, multiproc_executor,
attention, gpu_model_runner, worker_base) and the engine arguments in `arctic_gen.patches.engine_args`.
"""
