"""Batch embedding jobs: files in, files out, resumable, with progress; in-process, against a server, or on Ray.

    from arctic_embed.batch import BatchConfig, run_batch
    summary = run_batch(BatchConfig(input="docs.jsonl", output="vectors/", id_field="doc_id"))
    print(summary.line())
"""

from arctic_embed.batch.job import BatchJob, BatchSummary, Interrupted, run_batch
from arctic_embed.batch.options import BatchConfig, BatchError, EmbedOptions, EngineOptions

__all__ = ["BatchConfig", "BatchError", "BatchJob", "BatchSummary", "EmbedOptions", "EngineOptions", "Interrupted",
           "run_batch"]
