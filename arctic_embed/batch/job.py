"""A batch job: read chunks → embed (several in flight) → commit each chunk in input order → manifest.

Commit protocol (what makes a job resumable after SIGKILL or Ctrl-C without duplicating or losing a row):
  1. the chunk's part file is written to a temp name, fsynced and renamed to `part-<first row>`;
  2. then the manifest is rewritten the same way with `rows_done` (and the input byte offset) past that chunk.
A restarted job trusts only the manifest: parts at or past `rows_done` (written before a crash hit step 2) are
deleted and embedded again, and reading resumes at row `rows_done`. Chunks commit strictly in order, so the
committed rows are always a prefix of the input.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from arctic_embed.batch.engine import BatchEngine, ChunkEmbeddings
from arctic_embed.batch.options import BatchConfig, BatchError
from arctic_embed.batch.readers import Chunk, open_reader
from arctic_embed.batch.writers import NpyWriter, ParquetWriter, Writer, write_json

log = logging.getLogger(__name__)
MANIFEST_VERSION = 1


class Interrupted(BatchError):
    """Ctrl-C / SIGTERM: committed chunks stay; the same command resumes."""


@dataclass
class BatchSummary:
    output: str
    rows: int
    """Rows in the output (all runs of this job)."""
    input_tokens: int
    """Tokens embedded for those rows (special tokens included, after truncation): the sum of the `tokens` column."""
    run_rows: int
    run_tokens: int
    seconds: float
    resumed_from: int
    engine: str
    parts: int
    startup_seconds: float = 0.0
    """Of `seconds`: until the engine was ready (model load, worker start)."""

    def line(self) -> str:
        rate = self.run_rows / self.seconds if self.seconds else 0.0
        tok_rate = self.run_tokens / self.seconds if self.seconds else 0.0
        resumed = f", resumed at row {self.resumed_from:,}" if self.resumed_from else ""
        return (f"embedded {self.rows:,} rows, {self.input_tokens:,} input tokens → {self.output} "
                f"(this run: {self.run_rows:,} rows, {self.run_tokens:,} tokens in {self.seconds:.1f}s = "
                f"{rate:,.0f} rows/s, {tok_rate:,.0f} tok/s{resumed}; {self.engine})")


def make_engine(config: BatchConfig) -> BatchEngine:
    if config.engine.target:
        from arctic_embed.batch.remote import ServerEngine

        return ServerEngine(config.engine)
    from arctic_embed.batch.in_process import InProcessEngine

    return InProcessEngine(config.engine)


def _writer(config: BatchConfig, metadata: dict) -> Writer:
    if config.resolved_output_format() == "npy":
        if config.id_field:
            raise BatchError("a .npy output keeps rows in input order but has no place for ids; "
                             "use a Parquet output (a directory) to carry --id-field")
        return NpyWriter(config.output)
    return ParquetWriter(config.output, config.vector_format, metadata)


def _fingerprint(path: str) -> dict:
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class BatchJob:
    def __init__(self, config: BatchConfig, engine: BatchEngine | None = None) -> None:
        config.validate()
        self.config = config
        self.reader = open_reader(config.input, config.resolved_input_format(), config.text_field, config.id_field)
        self.engine = engine or make_engine(config)
        self.manifest: dict = {}
        self.startup_seconds = 0.0

    # ------------------------------------------------------------------------------------------- manifest
    def _load_manifest(self, writer: Writer) -> dict | None:
        path = writer.manifest_path
        if self.config.overwrite or not path.is_file():
            if writer.exists() and not self.config.overwrite:
                raise BatchError(f"output {self.config.output!r} already exists and holds no unfinished job; "
                                 "pass --overwrite to replace it, or choose another path")
            return None
        manifest = json.loads(path.read_text())
        if manifest.get("version") != MANIFEST_VERSION:
            raise BatchError(f"{path} was written by another version of this tool; pass --overwrite")
        if manifest["identity"] != self.config.identity():
            changed = sorted(k for k in manifest["identity"] if manifest["identity"][k] != self.config.identity()
                             .get(k))
            raise BatchError(f"{self.config.output!r} holds a job with other options ({', '.join(changed)}); "
                             "rerun with the same options to resume, or pass --overwrite to start over")
        if manifest["input"] != _fingerprint(self.config.input):
            raise BatchError(f"input {self.config.input!r} changed since this job started (size or mtime); "
                             "pass --overwrite to start over")
        return manifest

    def _check_model(self) -> None:
        model = {"name": self.engine.model_name, "dim": self.engine.dim}
        previous = self.manifest.get("model")
        if previous and previous != model:
            raise BatchError(f"{self.config.output!r} was started with model {previous['name']} "
                             f"({previous['dim']}-d), this run embeds with {model['name']} ({model['dim']}-d); "
                             "use the same model (and the same engine kind) or pass --overwrite")
        self.manifest["model"] = model

    def _commit(self, writer: Writer, chunk: Chunk, emb: ChunkEmbeddings) -> None:
        """Runs in a worker thread: part file first, then the manifest that makes it count."""
        if emb.rows != chunk.rows:
            raise BatchError(f"rows {chunk.first_row}..: the engine returned {emb.rows} vectors for {chunk.rows}")
        id_type = str(chunk.ids.type)
        if self.manifest.get("id_type") not in (None, id_type):
            raise BatchError(f"rows {chunk.first_row}..{chunk.first_row + chunk.rows - 1}: ids are {id_type}, "
                             f"earlier rows had {self.manifest['id_type']} ids; use one id type")
        writer.write(chunk.first_row, chunk.ids, emb)
        m = self.manifest
        m["id_type"] = id_type
        m["rows_done"] = chunk.first_row + chunk.rows
        m["tokens_done"] += int(emb.tokens.sum())
        m["input_offset"] = chunk.end_offset
        m["parts"] += 1
        m["updated_at"] = time.time()
        write_json(writer.manifest_path, m)

    # ------------------------------------------------------------------------------------------- run
    async def run(self) -> BatchSummary:
        config = self.config
        started = time.perf_counter()
        metadata = {"model": "", "dim": 0, **config.identity()["embed"], "vector_format": config.vector_format}
        writer = _writer(config, metadata)
        previous = self._load_manifest(writer)
        if previous is not None and previous.get("complete"):
            return self._summary(writer.root if isinstance(writer, ParquetWriter) else config.output,
                                 previous, 0, 0, 0.0, "already complete")
        total = await asyncio.to_thread(self.reader.total_rows)
        self.manifest = previous or {"version": MANIFEST_VERSION, "identity": config.identity(),
                                     "input": _fingerprint(config.input), "rows_done": 0, "tokens_done": 0,
                                     "input_offset": None, "parts": 0, "id_type": None, "complete": False,
                                     "started_at": time.time()}
        self.manifest["total_rows"] = total
        start_row = int(self.manifest["rows_done"])
        tokens_before = int(self.manifest["tokens_done"])
        await self.engine.start()
        self.startup_seconds = time.perf_counter() - started
        try:
            self._check_model()
            metadata.update(model=self.engine.model_name, dim=self.engine.dim)
            print(f"embedding {config.input} ({total:,} rows) with {self.engine.describe()}", file=sys.stderr)
            writer.prepare(config.overwrite)
            dropped = writer.drop_uncommitted(start_row)
            if start_row:
                print(f"resuming at row {start_row:,} ({self.manifest['parts']} committed parts"
                      f"{f', {dropped} uncommitted dropped' if dropped else ''})", file=sys.stderr)
            write_json(writer.manifest_path, self.manifest)
            await self._pipeline(writer, start_row, total, started)
        finally:
            await self.engine.close()
        output = await asyncio.to_thread(writer.finish)
        if isinstance(writer, ParquetWriter):
            self.manifest["complete"] = True
            write_json(writer.manifest_path, self.manifest)
        run_rows = int(self.manifest["rows_done"]) - start_row
        run_tokens = int(self.manifest["tokens_done"]) - tokens_before
        summary = self._summary(output, self.manifest, run_rows, run_tokens, time.perf_counter() - started,
                                self.engine.describe(), resumed_from=start_row)
        summary.startup_seconds = self.startup_seconds
        return summary

    def _summary(self, output: object, manifest: dict, run_rows: int, run_tokens: int, seconds: float,
                 engine: str, resumed_from: int = 0) -> BatchSummary:
        return BatchSummary(str(output), int(manifest["rows_done"]), int(manifest["tokens_done"]), run_rows,
                            run_tokens, seconds, resumed_from, engine, int(manifest["parts"]))

    async def _pipeline(self, writer: Writer, start_row: int, total: int, started: float) -> None:
        config = self.config
        chunks = self.reader.chunks(start_row, self.manifest.get("input_offset") if start_row else None,
                                    config.chunk_rows)
        queue: asyncio.Queue = asyncio.Queue(maxsize=config.in_flight)
        tasks: list[asyncio.Task] = []
        bar = _progress(config.progress, total, start_row)
        tokens_before = int(self.manifest["tokens_done"])

        async def produce() -> None:
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                task = asyncio.create_task(self.engine.embed(chunk.texts, config.embed))
                tasks.append(task)
                await queue.put((chunk, task))
            await queue.put(None)

        async def consume() -> None:
            while (item := await queue.get()) is not None:
                chunk, task = item
                try:
                    emb = await task
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one line naming the rows, whatever the engine raised
                    last = chunk.first_row + chunk.rows - 1
                    raise BatchError(f"rows {chunk.first_row:,}..{last:,}: {exc}") from None
                tasks.remove(task)
                # The commit runs to its end even if the job is interrupted meanwhile (a thread cannot be
                # cancelled): the interrupt path waits for it, so its message counts the rows truly committed.
                committing[0] = asyncio.ensure_future(asyncio.to_thread(self._commit, writer, chunk, emb))
                await asyncio.shield(committing[0])
                if bar is not None:
                    elapsed = max(time.perf_counter() - started - self.startup_seconds, 1e-9)
                    rate = (int(self.manifest["tokens_done"]) - tokens_before) / elapsed
                    bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
                    bar.update(chunk.rows)

        committing: list[asyncio.Future | None] = [None]
        producer = asyncio.create_task(produce())
        consumer = asyncio.create_task(consume())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        handled = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (e.g. under Ray)
                pass
        stopper = asyncio.create_task(stop.wait())
        try:
            pending = {producer, consumer, stopper}
            while not consumer.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    consumer.cancel()
                    if committing[0] is not None:
                        await asyncio.gather(committing[0], return_exceptions=True)
                    raise Interrupted(f"interrupted: {int(self.manifest['rows_done']):,} of {total:,} rows "
                                      f"committed to {config.output}; run the same command again to resume")
                for task in done:
                    task.result()  # raises what failed (a reader or engine error)
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            for task in (producer, consumer, stopper, *tasks):
                task.cancel()
            await asyncio.gather(producer, consumer, stopper, *tasks, return_exceptions=True)
            if bar is not None:
                bar.close()


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the summary line still comes
        return None
    return tqdm(total=total, initial=initial, unit="row", unit_scale=True, smoothing=0.05, mininterval=0.5,
                dynamic_ncols=True, file=sys.stderr, desc="embed")


def run_batch(config: BatchConfig, engine: BatchEngine | None = None) -> BatchSummary:
    """Run a job to the end (or resume one) and return its summary. Raises BatchError with a one-line message."""
    job = BatchJob(config, engine)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(job.run())
    return uvloop.run(job.run())
