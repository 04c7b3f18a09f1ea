"""`arctic-embed batch` in-process on the CPU with MiniLM: 50,000 JSONL rows → Parquet, SIGKILLed midway and
restarted, RSS recorded along the way, vectors checked against the server's.

Rows are two vocabulary words each ([CLS] a b [SEP] = 4 tokens), all distinct, so the 50K rows stay inside the CI
budget on 2 cores and every id can be matched to its own vector.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

N_ROWS = 50_000
KILL_AT = 25_000
CHUNK = 2048
TOKENS_PER_ROW = 4


def _words(model_path: Path, count: int) -> list[str]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    vocab = sorted(w for w in tok.get_vocab() if w.isalpha() and w.isascii() and w.islower() and len(w) >= 4)
    words = [w for w in vocab if len(tok.encode(w).ids) == 3][:count]
    assert len(words) == count
    return words


def _text(words: list[str], i: int) -> str:
    return f"{words[i // len(words)]} {words[i % len(words)]}"


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory, minilm_path: Path) -> tuple[Path, list[str]]:
    words = _words(minilm_path, 250)
    path = tmp_path_factory.mktemp("batch") / "docs.jsonl"
    texts = [_text(words, i) for i in range(N_ROWS)]
    with open(path, "w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"doc_id": f"doc-{i:05d}", "title": f"title {i}", "body": text}) + "\n")
    return path, texts


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _rows_done(manifest: Path) -> int:
    try:
        return int(json.loads(manifest.read_text())["rows_done"])
    except (OSError, ValueError, KeyError):
        return 0


def _run(jsonl_path: Path, out: Path, log: Path, kill_at: int | None) -> tuple[int, list[dict], list[int]]:
    """Run the job as a user would; sample (rows committed, RSS) from outside; SIGKILL it at `kill_at` rows."""
    cmd = [sys.executable, "-m", "arctic_embed", "batch", "--input", str(jsonl_path), "--output", str(out),
           "--text-field", "body", "--id-field", "doc_id", "--chunk-rows", str(CHUNK), "--in-flight", "2",
           "--torch-threads", "2"]
    samples: list[dict] = []
    with open(log, "ab") as err, open(log.with_suffix(".out"), "ab") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        children: set[int] = set()
        deadline = time.monotonic() + 1500
        while proc.poll() is None and time.monotonic() < deadline:
            rows = _rows_done(out / "_manifest.json")
            kids = _children(proc.pid)
            children.update(kids)
            driver = _rss_kb(proc.pid)
            samples.append({"rows": rows, "driver_rss_kb": driver,
                            "total_rss_kb": driver + sum(_rss_kb(k) for k in kids)})
            if kill_at is not None and rows >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.1)
        if proc.poll() is None and kill_at is None:
            proc.kill()  # past the deadline: do not leave it running
        rc = proc.wait(60)
    return rc, samples, sorted(children)


@pytest.fixture(scope="module")
def job(jsonl, tmp_path_factory) -> dict:
    path, _ = jsonl
    work = tmp_path_factory.mktemp("batch-out")
    out, log = work / "vectors", work / "job.log"
    rc1, first, children = _run(path, out, log, kill_at=KILL_AT)
    killed_at = _rows_done(out / "_manifest.json")
    deadline = time.monotonic() + 30  # the tokenizer and replica processes see EOF and leave
    while any(Path(f"/proc/{c}").exists() and _rss_kb(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = [c for c in children if Path(f"/proc/{c}").exists() and _rss_kb(c)]
    rc2, second, _ = _run(path, out, log, kill_at=None)
    return {"out": out, "log": log.read_text(errors="replace"), "stdout": log.with_suffix(".out").read_text(),
            "rc": (rc1, rc2), "killed_at": killed_at, "first": first, "second": second, "orphans": orphans}


def test_sigkill_midway_then_restart_gives_every_row_exactly_once(job, jsonl) -> None:
    _, texts = jsonl
    assert job["rc"] == (-signal.SIGKILL, 0), job["log"][-2000:]
    assert KILL_AT <= job["killed_at"] < N_ROWS, "the kill did not land midway"
    assert not job["orphans"], "worker processes outlived the killed job"
    assert f"resuming at row {job['killed_at']:,}" in job["log"]
    table = pq.read_table(job["out"])
    ids = table.column("id").to_pylist()
    assert len(ids) == N_ROWS and len(set(ids)) == N_ROWS
    assert ids == [f"doc-{i:05d}" for i in range(N_ROWS)]  # each once, in input order
    assert set(table.column("dims").to_pylist()) == {384}
    # Exact token accounting: the summary line, the manifest and the per-row column agree with the tokenizer.
    tokens = table.column("tokens").to_numpy()
    assert (tokens == TOKENS_PER_ROW).all()
    total = N_ROWS * TOKENS_PER_ROW
    assert f"embedded {N_ROWS:,} rows, {total:,} input tokens" in job["stdout"]
    assert json.loads((job["out"] / "_manifest.json").read_text())["tokens_done"] == total
    # The progress bar shows a rate and an ETA.
    assert "row/s" in job["log"] and "tok/s" in job["log"] and "<" in job["log"]


def _window(samples: list[dict], lo: int, hi: int) -> np.ndarray:
    """Driver RSS (MiB) of the samples taken while rows lo..hi were committed, with the workers up."""
    kb = [s["driver_rss_kb"] for s in samples if lo <= s["rows"] <= hi and s["total_rss_kb"] > s["driver_rss_kb"] > 0]
    assert kb, f"no samples between rows {lo} and {hi}"
    return np.asarray(kb) / 1024


def test_rss_stays_flat_from_10k_to_50k_rows(job) -> None:
    """The job's own process (reader, engine core, writer) holds the same memory at 50K rows as at 10K. The first
    run covers rows 10K..kill, the resumed one kill..50K (a resumed job seeks past the committed rows)."""
    early = _window(job["first"], 10_000, 20_000)
    late = _window(job["second"], N_ROWS - 10_000, N_ROWS)
    first_run = _window(job["first"], 10_000, N_ROWS)
    second_run = _window(job["second"], job["killed_at"] + CHUNK, N_ROWS)
    figures = {"driver_rss_mib_median_rows_10k_20k": round(float(np.median(early)), 1),
               "driver_rss_mib_median_rows_40k_50k": round(float(np.median(late)), 1),
               "driver_rss_mib_range_first_run_10k_to_kill": [round(float(first_run.min()), 1),
                                                              round(float(first_run.max()), 1)],
               "driver_rss_mib_range_resumed_run": [round(float(second_run.min()), 1),
                                                    round(float(second_run.max()), 1)],
               "killed_at_rows": job["killed_at"]}
    print("batch RSS:", json.dumps(figures))
    if os.environ.get("ARCTIC_BATCH_RSS_OUT"):
        Path(os.environ["ARCTIC_BATCH_RSS_OUT"]).write_text(json.dumps(figures, indent=1) + "\n")
    assert abs(np.median(late) - np.median(early)) < 32, figures
    assert first_run.max() - first_run.min() < 48 and second_run.max() - second_run.min() < 48, figures


def test_vectors_equal_the_servers(job, jsonl, embed_server) -> None:
    from arctic_embed.client import EmbedClient

    _, texts = jsonl
    table = pq.read_table(job["out"])
    sample = sorted(random.Random(0).sample(range(N_ROWS), 400))
    ours = table.column("vector").combine_chunks().flatten().to_numpy().reshape(N_ROWS, 384)[sample]
    with EmbedClient(embed_server.target, timeout_s=120) as client:
        theirs = client.embed([texts[i] for i in sample], batch_size=100)
    cos = (ours * theirs).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.9999, cos.min()


def test_server_engine_int8_with_scales(jsonl, embed_server, tmp_path: Path) -> None:
    """`--target` (the server engine): int8 vectors with their scales dequantize to the server's float32 ones."""
    from arctic_embed.client import EmbedClient

    _, texts = jsonl
    sample = texts[:300]
    src = tmp_path / "sample.csv"
    with open(src, "w") as f:
        f.write("n,body\n" + "".join(f"{i},{t}\n" for i, t in enumerate(sample)))
    out = tmp_path / "int8"
    result = subprocess.run([sys.executable, "-m", "arctic_embed", "batch", "--target", embed_server.target,
                             "--input", str(src), "--text-field", "body", "--id-field", "n", "--output", str(out),
                             "--dtype", "int8", "--request-batch-size", "64", "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"embedded 300 rows, {300 * TOKENS_PER_ROW:,} input tokens" in result.stdout
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(range(300))
    q = table.column("vector").combine_chunks().flatten().to_numpy().reshape(300, 384).astype(np.float32)
    ours = q * table.column("scales").to_numpy()[:, None]
    with EmbedClient(embed_server.target, timeout_s=120) as client:
        theirs = client.embed(sample, batch_size=100)
    cos = (ours * theirs).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.999, cos.min()
