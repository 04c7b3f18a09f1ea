"""Output writers: Parquet part files or one .npy array, each chunk committed atomically (temp file, fsync, rename).

Parquet output is a directory: `part-<first row>.parquet` files (readable as one table by `pyarrow.parquet.
read_table(dir)`, pandas, Spark, DuckDB, Ray) plus `_manifest.json`. Columns: `id` (int64 or string), `vector`
(fixed-size list of the dtype, or fixed-size binary), `dims`, `dtype`, `tokens`, and `scales` for int8/uint8.
The .npy output keeps input order: `<name>.npy` [n, dim] (bfloat16 widened to float32; binary as packed uint8 bits),
and `<name>.scales.npy` for int8/uint8; its parts live in `<name>.npy.parts/` until the job finishes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from arctic_embed.batch.engine import ChunkEmbeddings

ARROW_TYPES = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8(), "uint8": pa.uint8()}
NUMPY_TYPES = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "int8": "i1", "uint8": "u1", "binary": "u1"}
MANIFEST = "_manifest.json"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """`write(file)` into a hidden temp file next to `path`, fsync, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def vector_array(emb: ChunkEmbeddings, vector_format: str = "list") -> pa.Array:
    n, width = emb.data.shape
    arrow_type = ARROW_TYPES.get(emb.dtype)
    if vector_format == "bytes" or arrow_type is None:
        data = np.ascontiguousarray(emb.data)
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(data)])
    values = np.ascontiguousarray(emb.data).reshape(-1).view(NUMPY_TYPES[emb.dtype])
    return pa.FixedSizeListArray.from_arrays(pa.array(values, type=arrow_type), emb.dim)


def chunk_table(ids: pa.Array, emb: ChunkEmbeddings, vector_format: str = "list",
                metadata: dict | None = None) -> pa.Table:
    """The output rows of one chunk (the same schema for the local job and the Ray path)."""
    n = emb.rows
    columns = {"id": ids, "vector": vector_array(emb, vector_format),
               "dims": pa.array(np.full(n, emb.dim, np.int32)), "dtype": pa.array([emb.dtype] * n, pa.string()),
               "tokens": pa.array(emb.tokens.astype(np.int32, copy=False))}
    if emb.scales is not None:
        columns["scales"] = pa.array(np.asarray(emb.scales, np.float32))
    table = pa.table(columns)
    if metadata:
        table = table.replace_schema_metadata({"arctic_embed": json.dumps(metadata)})
    return table


def drop_uncommitted_parts(root: Path, rows_done: int, counted_suffix: str) -> int:
    """Remove `root`'s temp files (`.*.tmp`) and its `part-<first row>.*` files at or past `rows_done` (written after
    the last manifest update); returns how many removed parts end with `counted_suffix`."""
    dropped = 0
    for path in root.iterdir():
        name = path.name
        if name.startswith(".") and name.endswith(".tmp"):
            path.unlink()
        elif name.startswith("part-") and int(name[5:].split(".", 1)[0]) >= rows_done:
            path.unlink()
            dropped += name.endswith(counted_suffix)
    return dropped


class ParquetWriter:
    """A directory of part files named by their first row, so the committed prefix is known from the manifest."""

    def __init__(self, out_dir: str, vector_format: str, metadata: dict) -> None:
        self.root = Path(out_dir)
        self.vector_format = vector_format
        self.metadata = metadata

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir()))

    def prepare(self, overwrite: bool) -> None:
        if overwrite and self.root.exists():
            shutil.rmtree(self.root) if self.root.is_dir() else self.root.unlink()
        self.root.mkdir(parents=True, exist_ok=True)

    def part_path(self, first_row: int) -> Path:
        return self.root / f"part-{first_row:012d}.parquet"

    def drop_uncommitted(self, rows_done: int) -> int:
        """Remove temp files and parts at or past `rows_done` (written after the last manifest update)."""
        return drop_uncommitted_parts(self.root, rows_done, ".parquet")

    def write(self, first_row: int, ids: pa.Array, emb: ChunkEmbeddings) -> None:
        import pyarrow.parquet as pq

        table = chunk_table(ids, emb, self.vector_format, self.metadata)
        # No dictionary or min/max statistics for the vectors: both cost more than the rest of the write together
        # and buy nothing for floats.
        small = [name for name in table.column_names if name != "vector"]
        atomic_write(self.part_path(first_row), lambda f: pq.write_table(
            table, f, compression="snappy", use_dictionary=["dtype"], write_statistics=small))

    def finish(self) -> str:
        return str(self.root)


class NpyWriter:
    """Parts as .npy files in `<out>.parts/`; `finish()` joins them into `<out>` with flat memory (memmap)."""

    def __init__(self, out_path: str) -> None:
        self.out = Path(out_path)
        self.root = Path(out_path + ".parts")

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def scales_path(self) -> Path:
        return self.out.with_name(self.out.name[:-4] + ".scales.npy")

    def exists(self) -> bool:
        return self.root.exists() or self.out.exists()

    def prepare(self, overwrite: bool) -> None:
        if overwrite:
            shutil.rmtree(self.root, ignore_errors=True)
            for path in (self.out, self.scales_path):
                path.unlink(missing_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def part_path(self, first_row: int, kind: str = "vectors") -> Path:
        return self.root / f"part-{first_row:012d}.{kind}.npy"

    def drop_uncommitted(self, rows_done: int) -> int:
        """Remove temp files and parts at or past `rows_done`; counts vector parts (each has a scales part too)."""
        return drop_uncommitted_parts(self.root, rows_done, ".vectors.npy")

    def write(self, first_row: int, ids: pa.Array, emb: ChunkEmbeddings) -> None:
        vectors = emb.data.view(NUMPY_TYPES[emb.dtype])
        if emb.dtype == "bfloat16":
            vectors = (vectors.astype(np.uint32) << 16).view(np.float32)
        if emb.scales is not None:  # scales first: a committed vectors part always has its scales
            atomic_write(self.part_path(first_row, "scales"), lambda f: np.save(f, emb.scales))
        atomic_write(self.part_path(first_row, "vectors"), lambda f: np.save(f, vectors))

    def finish(self) -> str:
        parts = sorted(self.root.glob("part-*.vectors.npy"))
        self._join(parts, self.out)
        scale_parts = sorted(self.root.glob("part-*.scales.npy"))
        if scale_parts:
            self._join(scale_parts, self.scales_path)
        shutil.rmtree(self.root)
        return str(self.out)

    @staticmethod
    def _join(parts: list[Path], out: Path) -> None:
        shapes, dtype = [], np.dtype(np.float32)
        for path in parts:  # headers only (a memory map reads nothing else)
            head = np.load(path, mmap_mode="r")
            shapes.append(head.shape)
            dtype = head.dtype
            del head
        total = sum(shape[0] for shape in shapes)
        tmp = out.with_name(f".{out.name}.tmp")
        target = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype,
                                           shape=(total, *shapes[0][1:]) if shapes else (0,))
        row = 0
        for path, shape in zip(parts, shapes, strict=True):  # one part in memory at a time
            target[row:row + shape[0]] = np.load(path)
            row += shape[0]
        target.flush()
        del target
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)


Writer = ParquetWriter | NpyWriter
