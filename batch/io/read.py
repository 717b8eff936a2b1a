"""Read: find the input files, check them, and stream their rows into Ray Data.

Planning happens on the driver and reads only Parquet footers (row counts, schemas), so a
bad file is found before any engine starts. Reading happens in Ray tasks, one per file
slice (a run of row groups), yielding bounded batches tagged with their source file: that
tag is what lets the writer commit output file by file, and a rerun resume.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from batch import schema
from batch.config import ConfigError, InputConfig, StorageConfig
from batch.io.storage import Location, expand_input

READ_BATCH_ROWS = 4096  # rows per block handed downstream; bounds memory per read task


@dataclass(frozen=True)
class InputFile:
    uri: str
    size: int
    rows: int
    row_groups: tuple[int, ...]  # rows per row group
    columns: tuple[str, ...]


@dataclass(frozen=True)
class BadInput:
    """An input file that cannot be read at all: its rows cannot be annotated."""

    uri: str
    reason: str


def plan_inputs(config: InputConfig, storage: StorageConfig) -> tuple[list[InputFile], list[BadInput]]:
    """Every input file with its footer facts; files that cannot be used are returned as
    BadInput with the reason (corrupt, id column missing)."""
    uris: list[tuple[str, int]] = []
    for i, uri in enumerate(config.uris):
        found = expand_input(uri, storage)
        if not found:
            raise ConfigError(f"input.uris[{i}]: no Parquet files at {uri}")
        uris.extend(found)
    uris = sorted(set(uris))
    with ThreadPoolExecutor(max_workers=16) as pool:
        inspected = list(pool.map(lambda item: _inspect(item[0], item[1], config, storage), uris))
    files = [item for item in inspected if isinstance(item, InputFile)]
    bad = [item for item in inspected if isinstance(item, BadInput)]
    return files, bad


def _inspect(uri: str, size: int, config: InputConfig, storage: StorageConfig) -> InputFile | BadInput:
    location = Location(uri, storage)
    try:
        with location.fs.open_input_file(location.path) as handle:
            metadata = pq.ParquetFile(handle).metadata
            names = tuple(metadata.schema.to_arrow_schema().names)
    except (pa.ArrowInvalid, OSError) as exc:
        return BadInput(uri, f"not a readable Parquet file: {exc}")
    if config.id_column not in names:
        return BadInput(uri, f"no id column {config.id_column!r}; its columns: {', '.join(names)}")
    if reserved := [name for name in names if name.startswith("__")]:
        return BadInput(uri, f"column names starting with '__' are reserved for the job: {', '.join(reserved)}")
    row_groups = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    return InputFile(uri=uri, size=size, rows=metadata.num_rows, row_groups=row_groups, columns=names)


def read_slices(files: list[InputFile], rows_per_slice: int = 65_536) -> list[dict]:
    """Split files into runs of whole row groups of about `rows_per_slice` rows: the unit
    of one read task."""
    slices = []
    for file in files:
        start, rows = 0, 0
        for index, group_rows in enumerate(file.row_groups):
            rows += group_rows
            if rows >= rows_per_slice:
                slices.append({"uri": file.uri, "first_group": start, "end_group": index + 1})
                start, rows = index + 1, 0
        if start < len(file.row_groups) or not file.row_groups:
            slices.append({"uri": file.uri, "first_group": start, "end_group": len(file.row_groups)})
    return slices


def make_reader(config: InputConfig, storage: StorageConfig):
    """The read stage: a Ray Data `map_batches` generator over slice descriptions."""

    def read(slices: pa.Table) -> Iterator[pa.Table]:
        for item in slices.to_pylist():
            yield from _read_slice(item, config, storage)

    return read


def _read_slice(item: dict, config: InputConfig, storage: StorageConfig) -> Iterator[pa.Table]:
    location = Location(item["uri"], storage)
    with location.fs.open_input_file(location.path) as handle:
        parquet = pq.ParquetFile(handle)
        names = parquet.schema_arrow.names
        columns = None
        if config.columns is not None:
            wanted = [config.id_column, config.text_column, *config.columns]
            columns = [name for name in dict.fromkeys(wanted) if name in names]
        groups = list(range(item["first_group"], item["end_group"]))
        if not groups:  # a zero-row file: nothing to yield, and nothing is lost
            return
        for record_batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=groups, columns=columns):
            table = pa.Table.from_batches([record_batch])
            if config.text_column not in table.column_names:
                # Missing text column: the rows still flow, and each gets an error saying so.
                table = table.append_column(config.text_column, pa.nulls(table.num_rows, pa.null()))
            yield table.append_column(schema.SOURCE_FILE, pa.array([item["uri"]] * table.num_rows, pa.string()))
