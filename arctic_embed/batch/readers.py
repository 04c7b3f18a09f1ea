"""Streaming input readers: text (one input per line), JSONL, CSV and Parquet, in chunks of rows.

Memory stays flat in the input size: a reader holds one chunk at a time. Each chunk carries the ids of its rows
(a chosen field, or the 0-based row number) and, for line formats, the byte offset just past its last row, so a
resumed job seeks straight to where it stopped instead of re-reading the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from arctic_embed.batch.options import BatchError

_COUNT_BLOCK = 1 << 20


@dataclass
class Chunk:
    first_row: int
    texts: list[str]
    ids: pa.Array
    end_offset: int | None = None
    """Line formats: the byte offset just past the chunk's last row."""

    @property
    def rows(self) -> int:
        return len(self.texts)


def normalize_ids(ids: pa.Array) -> pa.Array:
    """Ids are int64 or string in the output, whatever integer or string type they had."""
    if pa.types.is_integer(ids.type):
        return ids.cast(pa.int64())
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        return ids.cast(pa.string())
    try:
        return ids.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BatchError(f"ids of type {ids.type} cannot be carried (use an integer or string field)") from exc


def _row_numbers(first: int, n: int) -> pa.Array:
    return pa.array(range(first, first + n), type=pa.int64())


class _LineReader:
    """Shared by text and JSONL: binary line iteration with byte offsets."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._total: int | None = None

    def _keep(self, line: bytes) -> bool:
        return True

    def total_rows(self) -> int:
        if self._total is None:
            self._total = self._count()
        return self._total

    def _count(self) -> int:
        n = 0
        last = b"\n"
        with open(self.path, "rb") as f:
            while block := f.read(_COUNT_BLOCK):
                n += block.count(b"\n")
                last = block[-1:]
        return n + (last != b"\n")

    def _parse(self, line: bytes, row: int, line_no: int) -> tuple[str, object]:
        raise NotImplementedError

    def _ids(self, values: list[object], first_row: int) -> pa.Array:
        return _row_numbers(first_row, len(values))

    def chunks(self, start_row: int, start_offset: int | None, chunk_rows: int) -> Iterator[Chunk]:
        with open(self.path, "rb") as f:
            row = 0
            offset = 0
            line_no = 0
            if start_offset is not None:
                f.seek(start_offset)
                row, offset = start_row, start_offset
                line_no = -1  # unknown after a seek: errors then name the row instead of the line
            texts: list[str] = []
            ids: list[object] = []
            first = row
            for line in f:
                offset += len(line)
                if line_no >= 0:
                    line_no += 1
                if not self._keep(line):
                    continue
                if row < start_row:
                    row += 1
                    continue
                text, ident = self._parse(line, row, line_no)
                texts.append(text)
                ids.append(ident)
                row += 1
                if len(texts) == chunk_rows:
                    yield Chunk(first, texts, self._ids(ids, first), offset)
                    texts, ids, first = [], [], row
            if texts:
                yield Chunk(first, texts, self._ids(ids, first), offset)


class TextReader(_LineReader):
    """One input per line (trailing newline removed); ids are line numbers from 0."""

    def _parse(self, line: bytes, row: int, line_no: int) -> tuple[str, object]:
        return line.rstrip(b"\r\n").decode("utf-8", "replace"), None


class JsonlReader(_LineReader):
    """One JSON object per line; blank lines are skipped (and not counted as rows)."""

    def __init__(self, path: str, text_field: str, id_field: str) -> None:
        super().__init__(path)
        self.text_field = text_field
        self.id_field = id_field

    def _keep(self, line: bytes) -> bool:
        return bool(line.strip())

    def _count(self) -> int:
        with open(self.path, "rb") as f:
            return sum(1 for line in f if line.strip())

    def _where(self, row: int, line_no: int) -> str:
        return f"{self.path} line {line_no}" if line_no >= 0 else f"{self.path} row {row}"

    def _parse(self, line: bytes, row: int, line_no: int) -> tuple[str, object]:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise BatchError(f"{self._where(row, line_no)}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise BatchError(f"{self._where(row, line_no)}: expected a JSON object, got {type(obj).__name__}")
        text = obj.get(self.text_field)
        if not isinstance(text, str):
            if self.text_field not in obj:
                keys = ", ".join(sorted(obj)) or "none"
                raise BatchError(f"{self._where(row, line_no)}: no field {self.text_field!r} (fields: {keys}); "
                                 "choose the text field with --text-field")
            raise BatchError(f"{self._where(row, line_no)}: field {self.text_field!r} is "
                             f"{type(text).__name__}, not a string")
        ident = None
        if self.id_field:
            if self.id_field not in obj:
                raise BatchError(f"{self._where(row, line_no)}: no id field {self.id_field!r}")
            ident = obj[self.id_field]
            if isinstance(ident, bool) or not isinstance(ident, (int, str)):
                raise BatchError(f"{self._where(row, line_no)}: id {ident!r} is not an integer or a string")
        return text, ident

    def _ids(self, values: list[object], first_row: int) -> pa.Array:
        if not self.id_field:
            return _row_numbers(first_row, len(values))
        kinds = {type(v) for v in values}
        if len(kinds) > 1:
            raise BatchError(f"{self.path}: ids mix integers and strings in rows {first_row}.."
                             f"{first_row + len(values) - 1}; use one type")
        return normalize_ids(pa.array(values))


class _ArrowReader:
    """Shared by CSV and Parquet: record batches re-cut into chunks of exactly `chunk_rows`."""

    def __init__(self, path: str, text_field: str, id_field: str) -> None:
        self.path = path
        self.text_field = text_field
        self.id_field = id_field

    def _columns(self) -> list[str]:
        return [self.text_field] + ([self.id_field] if self.id_field and self.id_field != self.text_field else [])

    def _check_columns(self, names: list[str]) -> None:
        for role, name in (("text", self.text_field), ("id", self.id_field)):
            if name and name not in names:
                flag = "--text-field" if role == "text" else "--id-field"
                raise BatchError(f"{self.path} has no column {name!r} (columns: {', '.join(names)}); "
                                 f"choose the {role} column with {flag}")

    def _batches(self, start_row: int) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(row number of the batch's first row, batch), starting at or before `start_row`."""
        raise NotImplementedError

    def chunks(self, start_row: int, start_offset: int | None, chunk_rows: int) -> Iterator[Chunk]:
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        first = start_row
        for batch_first, batch in self._batches(start_row):
            if batch_first + batch.num_rows <= start_row:
                continue
            if batch_first < start_row:
                batch = batch.slice(start_row - batch_first)
            pending.append(batch)
            pending_rows += batch.num_rows
            while pending_rows >= chunk_rows:
                table = pa.Table.from_batches(pending)
                yield self._chunk(first, table.slice(0, chunk_rows))
                rest = table.slice(chunk_rows)
                pending = rest.to_batches()
                pending_rows = rest.num_rows
                first += chunk_rows
        if pending_rows:
            yield self._chunk(first, pa.Table.from_batches(pending))

    def _chunk(self, first: int, table: pa.Table) -> Chunk:
        text = table.column(self.text_field)
        if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
            raise BatchError(f"{self.path}: column {self.text_field!r} is {text.type}, not a string column")
        nulls = text.null_count
        if nulls:
            index = pc.index(pc.is_null(text), True).as_py()
            raise BatchError(f"{self.path} row {first + index}: {self.text_field!r} is empty (null); "
                             f"{nulls} such row(s) in rows {first}..{first + table.num_rows - 1}")
        texts = text.to_pylist()
        if self.id_field:
            ids = table.column(self.id_field).combine_chunks()
            if ids.null_count:
                index = pc.index(pc.is_null(ids), True).as_py()
                raise BatchError(f"{self.path} row {first + index}: id {self.id_field!r} is null")
            ids = normalize_ids(ids)
        else:
            ids = _row_numbers(first, table.num_rows)
        return Chunk(first, texts, ids)


class CsvReader(_ArrowReader):
    """CSV with a header row (pyarrow's streaming reader; quoted fields may span lines)."""

    def _open(self, columns: list[str] | None = None):
        import pyarrow.csv as pacsv

        convert = pacsv.ConvertOptions(include_columns=columns or self._columns(),
                                       column_types={self.text_field: pa.string()}, strings_can_be_null=False)
        try:
            return pacsv.open_csv(self.path, read_options=pacsv.ReadOptions(block_size=4 << 20),
                                  convert_options=convert)
        except pa.ArrowInvalid as exc:
            raise BatchError(f"{self.path}: cannot read as CSV ({str(exc).splitlines()[0]})") from None

    def _header(self) -> list[str]:
        import pyarrow.csv as pacsv

        try:
            reader = pacsv.open_csv(self.path, read_options=pacsv.ReadOptions(block_size=1 << 16))
        except pa.ArrowInvalid as exc:
            raise BatchError(f"{self.path}: cannot read as CSV ({str(exc).splitlines()[0]})") from None
        return reader.schema.names

    def total_rows(self) -> int:
        self._check_columns(self._header())
        return sum(batch.num_rows for batch in self._open([self.text_field]))

    def _batches(self, start_row: int) -> Iterator[tuple[int, pa.RecordBatch]]:
        self._check_columns(self._header())
        row = 0
        for batch in self._open():
            yield row, batch
            row += batch.num_rows


class ParquetReader(_ArrowReader):
    """Parquet: only the text and id columns are read, row group by row group; a resumed job skips whole groups."""

    def _file(self):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise BatchError(f"{self.path}: cannot read as Parquet ({exc})") from None

    def total_rows(self) -> int:
        pf = self._file()
        self._check_columns(pf.schema_arrow.names)
        return pf.metadata.num_rows

    def _batches(self, start_row: int) -> Iterator[tuple[int, pa.RecordBatch]]:
        pf = self._file()
        self._check_columns(pf.schema_arrow.names)
        row = 0
        groups: list[int] = []
        first = 0
        for i in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(i).num_rows
            if row + n > start_row:
                if not groups:
                    first = row
                groups.append(i)
            row += n
        if not groups:
            return
        row = first
        for batch in pf.iter_batches(batch_size=65536, row_groups=groups, columns=self._columns()):
            yield row, batch
            row += batch.num_rows


Reader = TextReader | JsonlReader | CsvReader | ParquetReader


def open_reader(path: str, fmt: str, text_field: str, id_field: str) -> Reader:
    if fmt == "text":
        if id_field:
            raise BatchError("--id-field needs a jsonl, csv or parquet input (text inputs are numbered by line)")
        return TextReader(path)
    if fmt == "jsonl":
        return JsonlReader(path, text_field, id_field)
    if fmt == "csv":
        return CsvReader(path, text_field, id_field)
    if fmt == "parquet":
        return ParquetReader(path, text_field, id_field)
    raise BatchError(f"unknown input format {fmt!r}")
