"""Batch jobs without a model: readers, writers, the commit/resume protocol and one-line errors.

A deterministic fake engine (vector = a function of the text) stands in for the model, so every output row can be
checked against its input row; the real-model tests are in test_batch.py.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arctic_embed.batch import BatchConfig, BatchError, EmbedOptions, run_batch
from arctic_embed.batch.engine import ChunkEmbeddings
from arctic_embed.batch.options import OUTPUT_DTYPES
from arctic_embed.batch.readers import open_reader

DIM = 8


def fake_vector(text: str) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(text)) % 2**32)
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeEngine:
    """Embeds with `fake_vector`; tokens = words + 2; fails on the chunk that holds `fail_at_row` if set."""

    model_name = "fake"
    dim = DIM

    def __init__(self, fail_at_row: int | None = None) -> None:
        self.fail_at_row = fail_at_row
        self.seen = 0
        self.closed = False

    def describe(self) -> str:
        return "fake engine"

    async def start(self) -> None:
        return None

    async def embed(self, texts: list[str], options: EmbedOptions) -> ChunkEmbeddings:
        await asyncio.sleep(0)
        first = self.seen
        self.seen += len(texts)
        if self.fail_at_row is not None and first <= self.fail_at_row < self.seen:
            raise RuntimeError("replica exploded")
        x = np.stack([fake_vector(t) for t in texts])
        tokens = np.array([len(t.split()) + 2 for t in texts], np.int32)
        if options.dtype == "int8":
            peak = np.abs(x).max(axis=1)
            q = np.round(x * (127 / peak[:, None])).astype(np.int8)
            return ChunkEmbeddings(q.view(np.uint8), DIM, "int8", tokens, (peak / 127).astype(np.float32))
        data = x.astype({"float32": "<f4", "float16": "<f2"}[options.dtype]).view(np.uint8)
        return ChunkEmbeddings(data.reshape(len(texts), -1), DIM, options.dtype, tokens, None)

    async def close(self) -> None:
        self.closed = True


def texts(n: int) -> list[str]:
    return [f"row {i} " + "word " * (i % 5) for i in range(n)]


def write_jsonl(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        for i, t in enumerate(texts(n)):
            f.write(json.dumps({"key": f"k{i}", "body": t, "other": i}) + "\n")
            if i % 97 == 0:
                f.write("\n")  # blank lines are skipped, not rows
    return path


def config(tmp_path: Path, src: Path, **kw) -> BatchConfig:
    kw.setdefault("text_field", "body")
    kw.setdefault("chunk_rows", 64)
    return BatchConfig(input=str(src), output=str(tmp_path / "out"), progress=False, **kw)


def read_output(path: Path) -> pa.Table:
    return pq.read_table(path)


def test_output_dtypes_match_the_service() -> None:
    from arctic_embed.encoding import OUTPUT_DTYPES as SERVICE_DTYPES

    assert OUTPUT_DTYPES == SERVICE_DTYPES


@pytest.mark.parametrize("fmt", ["text", "jsonl", "csv", "parquet"])
def test_readers_stream_every_row_once_and_resume_from_any_row(tmp_path: Path, fmt: str) -> None:
    n = 1000
    rows = texts(n)
    src = tmp_path / f"in.{ {'text': 'txt'}.get(fmt, fmt) }"
    if fmt == "text":
        src.write_text("".join(t + "\n" for t in rows))
    elif fmt == "jsonl":
        write_jsonl(src, n)
    elif fmt == "csv":
        with open(src, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["key", "body"])
            w.writerows([f"k{i}", t] for i, t in enumerate(rows))
    else:
        pq.write_table(pa.table({"key": [f"k{i}" for i in range(n)], "body": rows}), src, row_group_size=300)
    id_field = "" if fmt == "text" else "key"
    reader = open_reader(str(src), fmt, "body", id_field)
    assert reader.total_rows() == n
    chunks = list(reader.chunks(0, None, 128))
    assert [c.rows for c in chunks] == [128] * 7 + [104]
    assert sum((c.texts for c in chunks), []) == rows
    ids = sum((c.ids.to_pylist() for c in chunks), [])
    assert ids == (list(range(n)) if fmt == "text" else [f"k{i}" for i in range(n)])
    # Resume after chunk 3: by byte offset for line formats, by skipping rows (row groups) for the others.
    resumed = list(open_reader(str(src), fmt, "body", id_field).chunks(384, chunks[2].end_offset, 128))
    assert sum((c.texts for c in resumed), []) == rows[384:]
    assert resumed[0].first_row == 384


def test_reader_errors_are_one_line_with_the_row(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"body": "ok"}\n{"text": "no body here"}\n')
    with pytest.raises(BatchError, match=r"line 2: no field 'body' \(fields: text\); choose the text field"):
        list(open_reader(str(src), "jsonl", "body", "").chunks(0, None, 10))
    src.write_text('{"body": "ok"}\n{"body": 1}\n')
    with pytest.raises(BatchError, match="line 2: field 'body' is int, not a string"):
        list(open_reader(str(src), "jsonl", "body", "").chunks(0, None, 10))
    src.write_text('{"body": "ok"}\nnot json\n')
    with pytest.raises(BatchError, match="line 2: not valid JSON"):
        list(open_reader(str(src), "jsonl", "body", "").chunks(0, None, 10))
    pq.write_table(pa.table({"text": ["a", None, "c"]}), tmp_path / "nulls.parquet")
    with pytest.raises(BatchError, match="row 1: 'text' is empty"):
        list(open_reader(str(tmp_path / "nulls.parquet"), "parquet", "text", "").chunks(0, None, 10))
    with pytest.raises(BatchError, match="has no column 'body'"):
        open_reader(str(tmp_path / "nulls.parquet"), "parquet", "body", "").total_rows()


@pytest.mark.parametrize("dtype,vector_format", [("float32", "list"), ("float16", "list"), ("int8", "list"),
                                                 ("float32", "bytes")])
def test_parquet_output_schema_and_values(tmp_path: Path, dtype: str, vector_format: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", 300)
    summary = run_batch(config(tmp_path, src, id_field="key", vector_format=vector_format,
                               embed=EmbedOptions(dtype=dtype)), engine=FakeEngine())
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"k{i}" for i in range(300)]
    assert set(table.column("dims").to_pylist()) == {DIM} and set(table.column("dtype").to_pylist()) == {dtype}
    expected = np.stack([fake_vector(t) for t in texts(300)])
    column = table.column("vector").combine_chunks()
    if vector_format == "bytes":
        assert pa.types.is_fixed_size_binary(column.type)
        got = np.frombuffer(column.buffers()[1], "<f4").reshape(300, DIM)
    else:
        assert pa.types.is_fixed_size_list(column.type) and column.type.list_size == DIM
        got = column.flatten().to_numpy().reshape(300, DIM).astype(np.float32)
    if dtype == "int8":
        got = got * table.column("scales").to_numpy()[:, None]
    assert np.abs(got - expected).max() < (1e-6 if dtype == "float32" else 1e-2)
    assert ("scales" in table.column_names) == (dtype == "int8")
    tokens = sum(len(t.split()) + 2 for t in texts(300))
    assert summary.input_tokens == tokens == sum(table.column("tokens").to_pylist())
    assert f"{tokens:,} input tokens" in summary.line()
    meta = json.loads(table.schema.metadata[b"arctic_embed"])
    assert meta["model"] == "fake" and meta["dtype"] == dtype


def test_npy_output_keeps_input_order_and_scales(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", 200)
    cfg = BatchConfig(input=str(src), output=str(tmp_path / "v.npy"), text_field="body", chunk_rows=64,
                      progress=False, embed=EmbedOptions(dtype="int8"))
    run_batch(cfg, engine=FakeEngine())
    vectors, scales = np.load(tmp_path / "v.npy"), np.load(tmp_path / "v.scales.npy")
    assert vectors.shape == (200, DIM) and vectors.dtype == np.int8 and scales.shape == (200,)
    expected = np.stack([fake_vector(t) for t in texts(200)])
    assert np.abs(vectors * scales[:, None] - expected).max() < 1e-2
    assert not (tmp_path / "v.npy.parts").exists()
    with pytest.raises(BatchError, match="already exists"):
        run_batch(cfg, engine=FakeEngine())


def test_a_crash_midway_resumes_without_duplicates_or_gaps(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", 1000)
    cfg = config(tmp_path, src, id_field="key")
    engine = FakeEngine(fail_at_row=500)
    with pytest.raises(BatchError, match=r"rows 448\.\.511: replica exploded"):
        run_batch(cfg, engine=engine)
    assert engine.closed
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["rows_done"] == 448 and not manifest["complete"]
    # A part written after the last manifest update (a crash between the two renames) must not count.
    orphan = tmp_path / "out" / "part-000000000448.parquet"
    pq.write_table(pa.table({"id": ["bogus"]}), orphan)
    (tmp_path / "out" / ".part-000000000512.parquet.tmp").write_bytes(b"half a file")
    summary = run_batch(cfg, engine=FakeEngine())
    assert summary.resumed_from == 448 and summary.run_rows == 552 and summary.rows == 1000
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"k{i}" for i in range(1000)]
    got = table.column("vector").combine_chunks().flatten().to_numpy().reshape(1000, DIM)
    assert np.allclose(got, np.stack([fake_vector(t) for t in texts(1000)]))
    assert summary.input_tokens == sum(table.column("tokens").to_pylist())
    assert not list((tmp_path / "out").glob(".*.tmp"))
    again = run_batch(cfg, engine=FakeEngine())
    assert again.run_rows == 0 and again.rows == 1000 and "already complete" in again.line()


def test_resume_refuses_other_options_or_a_changed_input(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", 300)
    with pytest.raises(BatchError):
        run_batch(config(tmp_path, src), engine=FakeEngine(fail_at_row=200))
    with pytest.raises(BatchError, match=r"other options \(embed\)"):
        run_batch(config(tmp_path, src, embed=EmbedOptions(dtype="float16")), engine=FakeEngine())
    with open(src, "a") as f:
        f.write(json.dumps({"body": "one more"}) + "\n")
    with pytest.raises(BatchError, match="changed since this job started"):
        run_batch(config(tmp_path, src), engine=FakeEngine())
    summary = run_batch(config(tmp_path, src, overwrite=True), engine=FakeEngine())
    assert summary.rows == 301 and summary.resumed_from == 0


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arctic_embed", "batch", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    missing = _cli("--input", "nope.jsonl", "--output", "out", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "arctic-embed batch: error: input 'nope.jsonl' does not exist"
    write_jsonl(tmp_path / "in.jsonl", 10)
    from arctic_embed.testing import free_port

    no_server = _cli("--input", "in.jsonl", "--text-field", "body", "--output", "out", "--target",
                     f"127.0.0.1:{free_port()}", cwd=tmp_path)
    assert no_server.returncode == 1
    lines = no_server.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arctic-embed batch: error: no embedding server at 127.0.0.1:")
    assert "Traceback" not in no_server.stderr


SLOW_JOB = """
import asyncio, sys
import numpy as np
from arctic_embed.batch import BatchConfig, Interrupted, run_batch
from arctic_embed.batch.engine import ChunkEmbeddings

class Slow:
    model_name, dim = "slow", 4
    def describe(self): return "slow fake"
    async def start(self): pass
    async def close(self): pass
    async def embed(self, texts, options):
        await asyncio.sleep(0.05)
        x = np.ones((len(texts), 4), np.float32)
        return ChunkEmbeddings(x.view(np.uint8), 4, "float32", np.full(len(texts), 3, np.int32), None)

try:
    print(run_batch(BatchConfig(input=sys.argv[1], output=sys.argv[2], text_field="body", id_field="key",
                                chunk_rows=16, in_flight=2, progress=False), engine=Slow()).line(), flush=True)
except Interrupted as exc:
    print(exc, file=sys.stderr)
    sys.exit(130)
"""


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path) -> None:
    import signal
    import time

    src = write_jsonl(tmp_path / "in.jsonl", 2000)
    script = tmp_path / "slow_job.py"
    script.write_text(SLOW_JOB)
    out = tmp_path / "out"
    cmd = [sys.executable, str(script), str(src), str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = out / "_manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if manifest.is_file() and json.loads(manifest.read_text() or "{}").get("rows_done", 0) >= 160:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done = json.loads(manifest.read_text())["rows_done"]
    assert f"interrupted: {done:,} of 2,000 rows committed" in err and "run the same command again" in err
    assert 160 <= done < 2000 and "Traceback" not in err
    finished = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert f"resumed at row {done:,}" in finished.stdout
    ids = read_output(out).column("id").to_pylist()
    assert ids == [f"k{i}" for i in range(2000)]
