"""The batch job on a Ray cluster (optional extra `arctic-serve[ray]`): Ray Data reads the input, an actor pool runs
our engine (one model per actor, on the GPU Ray gives it), and Ray writes Parquet with the same schema as the local
job's output.

    import ray
    from arctic_embed.batch.ray_data import RayJob, run_ray_job
    ray.init()                                   # or ray.init(address="auto") on a cluster
    run_ray_job(RayJob(input="s3://bucket/docs/", output="s3://bucket/vectors/", id_column="doc_id",
                       actors=8, gpus_per_actor=1))

Inside an actor the engine is called directly (tokenizer + engine + on-device output encoding), not through the
replica processes: Ray already places one actor per GPU, and its CUDA_VISIBLE_DEVICES must not be second-guessed.
Batches travel as numpy (in) and Arrow (out), both zero-copy through the object store. Fault tolerance is Ray's
(task retries, actor restarts); the resumable manifest is the local job's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from arctic_embed.batch.engine import ChunkEmbeddings
from arctic_embed.batch.options import BatchError, EmbedOptions


@dataclass
class RayJob:
    input: str = ""
    """A Parquet file or directory (also JSONL or CSV by suffix), local or any filesystem Ray reads."""
    output: str = ""
    """A directory; Ray writes one Parquet file per block."""
    text_column: str = "text"
    id_column: str = "id"
    """Carried to the output as `id` (Ray has no global row numbers to fall back on)."""
    model_path: str = ""
    """Model directory every actor can read; empty = the bundled all-MiniLM-L6-v2."""
    engine: str = "torch"
    model_dtype: str = "auto"
    actors: int = 1
    gpus_per_actor: float = 0.0
    """0 = CPU actors."""
    cpus_per_actor: float = 1.0
    batch_rows: int = 1024
    """Rows per map_batches call."""
    max_batch_tokens: int = 16384
    max_batch_size: int = 512
    vector_format: str = "list"
    embed: EmbedOptions = field(default_factory=EmbedOptions)


class RayEmbedder:
    """The map_batches UDF: constructed once per actor, called with numpy batches, returns Arrow tables."""

    def __init__(self, job: dict) -> None:
        import torch

        from arctic_embed.config import default_model_path
        from arctic_embed.engines import create_engine
        from arctic_embed.model_files import read_model_spec
        from arctic_embed.tokenization import TextTokenizer

        self.job = RayJob(**{**job, "embed": EmbedOptions(**job["embed"])})
        path = self.job.model_path or str(default_model_path())
        self.spec = read_model_spec(path)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        threads = max(1, int(self.job.cpus_per_actor)) if self.device == "cpu" else 0
        self.engine = create_engine(self.job.engine)
        self.engine.load(self.spec, self.device, self.job.model_dtype, threads)
        self.tokenizer = TextTokenizer(path, self.spec.max_input_tokens, self.spec.do_lower_case)
        self.metadata = {"model": self.spec.name, "dim": self.spec.dim, **asdict(self.job.embed),
                         "vector_format": self.job.vector_format}

    def _tokenize_options(self):
        from arctic_embed.tokenization import TokenizeOptions

        options = self.job.embed
        prefix = options.prefix
        if options.prompt_name:
            if options.prompt_name not in self.spec.prompts:
                raise BatchError(f"unknown prompt_name {options.prompt_name!r} for {self.spec.name}")
            prefix = self.spec.prompts[options.prompt_name]
        elif self.spec.default_prompt_name and not prefix:
            prefix = self.spec.prompts.get(self.spec.default_prompt_name, "")
        return TokenizeOptions(prefix, options.truncate, options.truncate_left)

    def embed_texts(self, texts: list[str]) -> ChunkEmbeddings:
        import torch

        from arctic_embed.encoding import OutputOptions, encode_rows

        options = self.job.embed
        dims = options.dimensions
        if dims is not None and not 1 <= dims <= self.spec.dim:
            raise BatchError(f"dimensions={dims} is outside 1..{self.spec.dim}")
        output = OutputOptions(options.normalize, 0 if dims in (None, self.spec.dim) else dims, options.dtype)
        batch = self.tokenizer.encode(texts, self._tokenize_options())
        offsets = batch.offsets()
        rows: list[np.ndarray] = []
        scales: list[np.ndarray] = []
        start = 0
        n = int(batch.lengths.size)
        with torch.inference_mode():
            while start < n:  # engine batches within the token and sequence budgets
                end = start + 1
                while (end < n and end - start < self.job.max_batch_size
                       and offsets[end + 1] - offsets[start] <= self.job.max_batch_tokens):
                    end += 1
                x = self.engine.embed(batch.ids[offsets[start]:offsets[end]], batch.lengths[start:end])
                data, scale = encode_rows(x, output)
                rows.append(data.cpu().numpy())
                if scale is not None:
                    scales.append(scale.float().cpu().numpy())
                start = end
        return ChunkEmbeddings(np.concatenate(rows), output.dimensions or self.spec.dim, options.dtype,
                               batch.lengths.astype(np.int32), np.concatenate(scales) if scales else None)

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        from arctic_embed.batch.readers import normalize_ids
        from arctic_embed.batch.writers import chunk_table

        texts = [str(t) for t in batch[self.job.text_column].tolist()]
        ids = normalize_ids(pa.array(batch[self.job.id_column].tolist()))
        return chunk_table(ids, self.embed_texts(texts), self.job.vector_format, self.metadata)


def _read(job: RayJob):
    import ray.data

    columns = [job.text_column, job.id_column]
    suffix = job.input.rstrip("/").rsplit(".", 1)[-1].lower()
    if suffix in ("jsonl", "json", "ndjson"):
        return ray.data.read_json(job.input).select_columns(columns)
    if suffix == "csv":
        return ray.data.read_csv(job.input).select_columns(columns)
    return ray.data.read_parquet(job.input).select_columns(columns)  # projected into the read by Ray's optimizer


def embed_dataset(ds, job: RayJob):
    """`ds` (with the job's text and id columns) → a dataset of output rows (id, vector, dims, dtype, tokens[,
    scales]). Lazy, like every Ray Data transform."""
    return ds.map_batches(RayEmbedder, fn_constructor_kwargs={"job": asdict(job)}, batch_size=job.batch_rows,
                          batch_format="numpy", concurrency=job.actors, num_gpus=job.gpus_per_actor or None,
                          num_cpus=job.cpus_per_actor)


@dataclass
class RaySummary:
    output: str
    rows: int
    input_tokens: int
    seconds: float

    def line(self) -> str:
        return (f"embedded {self.rows:,} rows, {self.input_tokens:,} input tokens on Ray → {self.output} in "
                f"{self.seconds:.1f}s ({self.input_tokens / max(self.seconds, 1e-9):,.0f} tok/s)")


def run_ray_job(job: RayJob) -> RaySummary:
    """Read → embed on the actor pool → write Parquet; needs `ray.init()` first (or starts a local Ray)."""
    import time

    try:
        import ray  # noqa: F401
    except ImportError:
        raise BatchError("the Ray path needs Ray: pip install 'arctic-serve[ray]'") from None
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    started = time.perf_counter()
    embed_dataset(_read(job), job).write_parquet(job.output)
    seconds = time.perf_counter() - started
    table = pads.dataset(job.output, format="parquet").to_table(columns=["tokens"])
    return RaySummary(job.output, table.num_rows, int(pc.sum(table.column("tokens")).as_py() or 0), seconds)
