"""What a batch job is asked to do: input, output, embedding options and which engine runs it."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The same as arctic_embed.encoding.OUTPUT_DTYPES (tests check it), spelled out so that a job against a server
# does not import torch.
OUTPUT_DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8", "binary")
INPUT_FORMATS = ("auto", "text", "jsonl", "csv", "parquet")
OUTPUT_FORMATS = ("auto", "parquet", "npy")
VECTOR_FORMATS = ("list", "bytes")
_SUFFIX_FORMATS = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                   ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class BatchError(Exception):
    """A batch job cannot go on; the message is one line that says what to do about it."""


@dataclass(frozen=True)
class EmbedOptions:
    """Per-input options, the same as a request to the server carries."""

    dtype: str = "float32"
    """Output dtype: float32, float16, bfloat16, int8, uint8 (both with per-row scales) or binary (packed bits)."""
    dimensions: int | None = None
    """Matryoshka truncation; None = the model's full dimension."""
    normalize: bool = True
    prefix: str = ""
    prompt_name: str = ""
    truncate: bool = True
    """False: an input over the model's limit fails the job (with its row number) instead of being cut."""
    truncate_left: bool = False


@dataclass
class EngineOptions:
    """Which engine embeds: a running server (`target`) or the model loaded in this job (tokenizer pool + replicas)."""

    target: str = ""
    """host:port of a running `arctic-embed serve`; empty = in-process."""
    model_path: str = ""
    """In-process: model directory; empty = the bundled all-MiniLM-L6-v2."""
    engine: str = "torch"
    model_dtype: str = "auto"
    devices: list[str] = field(default_factory=list)
    """In-process: e.g. ["cuda:0", "cuda:1"]; empty = every GPU, or the CPU when there is none."""
    replicas_per_device: int = 1
    tokenizer_workers: int = 0
    """In-process tokenizer processes; 0 = one per spare core (at least 1)."""
    max_batch_tokens: int = 16384
    max_batch_size: int = 512
    torch_threads: int = 0
    request_batch_size: int = 256
    """Server: inputs per request."""
    concurrency: int = 8
    """Server: requests in flight."""
    connect_timeout_s: float = 10.0


@dataclass
class BatchConfig:
    """One batch job. Paths and fields are checked by `validate()` before anything is loaded."""

    input: str = ""
    output: str = ""
    input_format: str = "auto"
    """text (one input per line), jsonl, csv, parquet; auto = from the file's suffix."""
    text_field: str = "text"
    """jsonl/csv/parquet: the field holding the text."""
    id_field: str = ""
    """jsonl/csv/parquet: a field carried to the output as `id`; empty = the row number (0-based)."""
    output_format: str = "auto"
    """parquet (a directory of part files) or npy (one [n, dim] array); auto = npy when the path ends in .npy."""
    vector_format: str = "list"
    """Parquet: `list` (fixed-size list of the dtype) or `bytes` (fixed-size binary). bfloat16 and binary are
    always bytes (Arrow has no bfloat16; binary vectors are packed bits)."""
    chunk_rows: int = 4096
    """Rows per committed part: the unit of resumption."""
    in_flight: int = 4
    """Chunks being embedded at once (memory is bounded by in_flight × chunk_rows)."""
    overwrite: bool = False
    """Start over even if the output holds a finished or unfinished job."""
    progress: bool = True
    embed: EmbedOptions = field(default_factory=EmbedOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)

    def resolved_input_format(self) -> str:
        if self.input_format != "auto":
            return self.input_format
        suffixes = [s.lower() for s in Path(self.input).suffixes if s.lower() not in (".gz",)]
        fmt = _SUFFIX_FORMATS.get(suffixes[-1] if suffixes else "")
        if fmt is None:
            raise BatchError(f"cannot tell the format of {self.input!r} from its name; pass --input-format "
                             f"({', '.join(INPUT_FORMATS[1:])})")
        return fmt

    def resolved_output_format(self) -> str:
        if self.output_format != "auto":
            return self.output_format
        return "npy" if self.output.lower().endswith(".npy") else "parquet"

    def validate(self) -> None:
        if not self.input:
            raise BatchError("no input: pass --input FILE")
        if not self.output:
            raise BatchError("no output: pass --output DIR (Parquet parts) or FILE.npy")
        if not os.path.isfile(self.input):
            what = "is a directory, not a file" if os.path.isdir(self.input) else "does not exist"
            raise BatchError(f"input {self.input!r} {what}")
        for name, value, allowed in (("input format", self.input_format, INPUT_FORMATS),
                                     ("output format", self.output_format, OUTPUT_FORMATS),
                                     ("vector format", self.vector_format, VECTOR_FORMATS),
                                     ("dtype", self.embed.dtype, OUTPUT_DTYPES)):
            if value not in allowed:
                raise BatchError(f"unknown {name} {value!r}; one of {', '.join(allowed)}")
        self.resolved_input_format()
        if self.chunk_rows < 1 or self.in_flight < 1:
            raise BatchError("--chunk-rows and --in-flight must be at least 1")
        if self.embed.dimensions is not None and self.embed.dimensions < 1:
            raise BatchError("--dimensions must be at least 1 (leave it out for the full size)")

    def identity(self) -> dict:
        """What must not change between a job and its resumption."""
        return {"input_format": self.resolved_input_format(), "text_field": self.text_field,
                "id_field": self.id_field, "output_format": self.resolved_output_format(),
                "vector_format": self.vector_format, "embed": asdict(self.embed)}
