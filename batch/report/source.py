"""Reading a published output: its data files, their schemas, and batches of only the
columns a report needs.

A nightly output can hold millions of rows, so nothing here loads a whole output: files are
read one at a time, in batches, column-projected. Names starting with `_` or `.` (the
manifest, the summary, `_SUCCESS`, leftover `_staging/`) are not data and are skipped, the
same rule the job's own reader and Arrow/Spark follow.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from batch.config import StorageConfig
from batch.io.storage import Location, StorageError, expand_input

BATCH_ROWS = 65_536  # rows per batch: bounds memory per file being read
IO_THREADS = 8  # files read at once; the work is mostly waiting on storage


class ReportError(Exception):
    """A report that cannot be made; the message names the URI or the option and column."""


@dataclass(frozen=True)
class OutputFile:
    uri: str
    schema: pa.Schema
    rows: int


@dataclass(frozen=True)
class Output:
    """The data files of one output and the union of their columns. Files of one output
    normally share a schema, but original columns may differ between input files, so a
    column is looked up across all of them."""

    uri: str
    storage: StorageConfig
    files: tuple[OutputFile, ...]

    @property
    def location(self) -> Location:
        return Location(self.uri, self.storage)

    @property
    def columns(self) -> list[str]:
        names: dict[str, None] = {}
        for file in self.files:
            names.update(dict.fromkeys(file.schema.names))
        return list(names)

    @property
    def rows(self) -> int:
        return sum(file.rows for file in self.files)

    def column_type(self, name: str) -> pa.DataType | None:
        for file in self.files:
            index = file.schema.get_field_index(name)
            if index >= 0:
                return file.schema.field(index).type
        return None


def open_output(uri: str, storage: StorageConfig) -> Output:
    """Every data file under `uri` with its footer facts; an error naming the URI when
    there is nothing to report on or a file cannot be read."""
    try:
        found = expand_input(uri, storage)
    except (OSError, StorageError) as exc:
        raise ReportError(f"{uri}: cannot list the output: {exc}") from None
    if not found:
        raise ReportError(f"{uri}: no Parquet data files here (names starting with '_' or '.' are not data)")
    with ThreadPoolExecutor(max_workers=min(IO_THREADS, len(found))) as pool:
        files = list(pool.map(lambda item: _footer(item[0], storage), found))
    return Output(uri=uri, storage=storage, files=tuple(files))


def _footer(uri: str, storage: StorageConfig) -> OutputFile:
    location = Location(uri, storage)
    try:
        with location.fs.open_input_file(location.path) as handle:
            metadata = pq.ParquetFile(handle).metadata
            return OutputFile(uri=uri, schema=metadata.schema.to_arrow_schema(), rows=metadata.num_rows)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReportError(f"{uri}: not a readable Parquet file: {exc}") from None


def iter_batches(output: Output, file: OutputFile, columns: list[str]) -> Iterator[pa.Table]:
    """Batches of `columns` from one file. A column this file lacks comes back as nulls of
    the type other files give it, so aggregation sees one shape for the whole output."""
    present = [name for name in columns if name in file.schema.names]
    missing = [name for name in columns if name not in file.schema.names]
    location = Location(file.uri, output.storage)
    try:
        with location.fs.open_input_file(location.path) as handle:
            parquet = pq.ParquetFile(handle)
            if present:
                batches = (pa.Table.from_batches([b]) for b in parquet.iter_batches(batch_size=BATCH_ROWS, columns=present))
            else:  # none of the wanted columns: only the row count matters
                groups = (parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups))
                batches = (_empty_table(n) for n in groups)
            for table in batches:
                for name in missing:
                    type_ = output.column_type(name) or pa.null()
                    table = table.append_column(pa.field(name, type_), pa.nulls(table.num_rows, type_))
                yield table.select(columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReportError(f"{file.uri}: reading failed: {exc}") from None


def _empty_table(rows: int) -> pa.Table:
    """A table with `rows` rows and no columns (Arrow keeps the row count)."""
    return pa.table({"_": pa.nulls(rows)}).drop_columns(["_"])


def read_side_file(output_uri: str, storage: StorageConfig, name: str) -> tuple[Any | None, str | None]:
    """A JSON file the job writes next to its output (`_summary.json`, `_manifest.json`):
    (content, None), (None, None) when absent, or (None, why) when unreadable, so a damaged
    summary makes a note in the report instead of no report."""
    target = Location(output_uri, storage).join(name)
    try:
        if not target.exists():
            return None, None
        return target.read_json(), None
    except (OSError, StorageError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"{target.uri}: unreadable: {exc}"


def side_file_exists(output_uri: str, storage: StorageConfig, name: str) -> bool:
    try:
        return Location(output_uri, storage).join(name).exists()
    except (OSError, StorageError):
        return False
