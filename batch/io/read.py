"""Read: find the input files, check them, and stream their rows into Ray Data.

Planning happens on the driver and reads only Parquet footers (row counts, schemas), so a
bad file is found before any engine starts. Reading happens in Ray tasks, one per file
slice (a run of row groups, or a piece of a large one: `read_slices`), yielding bounded
batches tagged with their source file: that
tag is what lets the writer commit output file by file, and a rerun resume.

Files of one input may differ in their columns. Ray Data batches rows of several files
together, and a batch has one schema, so every block leaves the reader in the same one
(`output_schema`): the union of the files' columns, a file lacking a column gets nulls in
it, types widened where they combine (int32 and int64 -> int64), the text column always
`string` with the per-row reason its text cannot be used (`schema.normalize_text`).

A file whose bytes fail to read (a corrupt page, bad compression, cut short) is not fatal:
the read stage yields one marker row for it (`schema.READ_ERROR`) that the later stages
pass through without work and the writer turns into an "unreadable" record, so the driver
quarantines the whole file and the other files publish. A storage failure (access denied,
the store failing past its retries) is not the file's fault: it stops the run, naming the
URI (`storage.storage_fault` tells the two apart).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from batch import schema
from batch.config import ConfigError, InputConfig, StorageConfig
from batch.io.storage import Location, expand_input, storage_error, storage_fault

READ_BATCH_ROWS = 4096  # rows per block handed downstream; bounds memory per read task
# The run's first slice is cut to this many rows, read by a task of its own: the first
# block through prepare, the engine and parse is small, so the first answers are written
# as soon as the engine is up instead of after a full batch (BENCHMARKS.md, "Start-up").
FIRST_SLICE_ROWS = 64
MAX_PIECES_PER_GROUP = 16


@dataclass(frozen=True)
class InputFile:
    uri: str
    size: int
    rows: int
    row_groups: tuple[int, ...]  # rows per row group
    columns: tuple[str, ...]
    # Arrow schema of the file's rows as the read stage yields them: the footer's, with
    # the text column as string (added when the file lacks it). None: unknown, no union.
    schema: pa.Schema | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class BadInput:
    """An input file that cannot be read at all: its rows cannot be annotated."""

    uri: str
    reason: str
    rows: int | None = None  # from the footer; None when even the footer cannot be read


def plan_inputs(config: InputConfig, storage: StorageConfig) -> tuple[list[InputFile], list[BadInput]]:
    """Every input file with its footer facts; files that cannot be used are returned as
    BadInput with the reason (corrupt, id column missing). Raises ConfigError when two
    files give a column types that do not combine (see `output_schema`), StorageError when
    the store fails (access denied, past its retries): that is not the file's fault."""
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
    output_schema(files)  # a column whose types conflict stops the run here, before Ray starts
    return files, bad


def output_schema(files: list[InputFile]) -> pa.Schema | None:
    """The schema every block of these files leaves the reader in: the union of their
    columns in order of first appearance, each type widened to fit every file (Arrow's
    permissive promotion: int32+int64 -> int64, int64+double -> double, null+T -> T).
    None when a file's schema is unknown. Raises ConfigError naming the column and two
    files when its types do not combine (int64 in one file, string in another)."""
    if not files or any(file.schema is None for file in files):
        return None
    fields: dict[str, pa.Field] = {}
    first: dict[str, str] = {}
    for file in files:
        for column in file.schema:
            if column.name not in fields:
                fields[column.name], first[column.name] = pa.field(column.name, column.type), file.uri
                continue
            try:
                merged = pa.unify_schemas(
                    [pa.schema([fields[column.name]]), pa.schema([pa.field(column.name, column.type)])],
                    promote_options="permissive",
                )
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                raise ConfigError(
                    f"input column {column.name!r} has type {column.type} in {file.uri} but "
                    f"{fields[column.name].type} in {first[column.name]}: the input files must agree on the "
                    f"type of every column but the text column"
                ) from None
            fields[column.name] = merged.field(0)
    return pa.schema(list(fields.values()))


def _inspect(uri: str, size: int, config: InputConfig, storage: StorageConfig) -> InputFile | BadInput:
    location = Location(uri, storage)
    try:
        with location.fs.open_input_file(location.path) as handle:
            metadata = pq.ParquetFile(handle).metadata
            arrow_schema = metadata.schema.to_arrow_schema()
            names = tuple(arrow_schema.names)
    except Exception as exc:  # noqa: BLE001 - a storage failure stops the run; any other is the file's bytes
        if storage_fault(exc) is not None:
            raise storage_error(uri, exc, storage) from exc
        return BadInput(uri, unreadable_reason(exc))
    if config.id_column not in names:
        return BadInput(uri, f"no id column {config.id_column!r}; its columns: {', '.join(names)}", metadata.num_rows)
    if reserved := [name for name in names if name.startswith("__")]:
        reason = f"column names starting with '__' are reserved for the job: {', '.join(reserved)}"
        return BadInput(uri, reason, metadata.num_rows)
    row_groups = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    read_schema = pa.schema([pa.field(f.name, f.type) for f in arrow_schema if f.name != config.text_column])
    text_field = pa.field(config.text_column, pa.string())
    if config.text_column in names:
        read_schema = read_schema.insert(names.index(config.text_column), text_field)
    else:
        read_schema = read_schema.append(text_field)
    return InputFile(
        uri=uri, size=size, rows=metadata.num_rows, row_groups=row_groups, columns=names, schema=read_schema
    )


def unreadable_reason(exc: BaseException) -> str:
    """Why a file's bytes cannot be read, in one line."""
    detail = (str(exc).strip().splitlines() or [""])[0]
    detail = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in detail)  # thrift echoes raw bytes
    return f"not a readable Parquet file: {type(exc).__name__}: {detail}"


def read_slices(
    files: list[InputFile], union: pa.Schema | None, rows_per_slice: int = 1024, first_rows: int = FIRST_SLICE_ROWS
) -> list[dict]:
    """Split files into slices, the unit of one read task and of one block downstream:
    runs of whole row groups of about `rows_per_slice` rows. A row group larger than that
    (pyarrow writes up to a million rows per group) is cut by row count into at most
    MAX_PIECES_PER_GROUP pieces: each piece decodes the group up to its own rows, so more
    pieces would cost more decoding than they save in waiting. The run's first slice is cut
    again to its first `first_rows` rows (FIRST_SLICE_ROWS).

    Each slice carries the schema its rows leave the reader in: `union`, which the caller
    plans over every input file (`output_schema`), those committed by an earlier attempt
    included, so that every part of one output has one schema."""
    target = union.serialize().to_pybytes() if union is not None else None
    slices = []
    for file in files:
        start, rows = 0, 0
        for index, group_rows in enumerate(file.row_groups):
            if group_rows > rows_per_slice:
                if start < index:
                    slices.append(_slice(file, start, index, target))
                pieces = min(MAX_PIECES_PER_GROUP, math.ceil(group_rows / rows_per_slice))
                size = math.ceil(group_rows / pieces)
                for offset in range(0, group_rows, size):
                    slices.append(_slice(file, index, index + 1, target, skip=offset, take=min(size, group_rows - offset)))
                start, rows = index + 1, 0
                continue
            rows += group_rows
            if rows >= rows_per_slice:
                slices.append(_slice(file, start, index + 1, target))
                start, rows = index + 1, 0
        if start < len(file.row_groups) or not file.row_groups:
            slices.append(_slice(file, start, len(file.row_groups), target))
    for position, item in enumerate(slices):
        rows = _slice_rows(item, files)
        if rows > first_rows:
            head = {**item, "take_rows": first_rows}
            tail = {**item, "skip_rows": item["skip_rows"] + first_rows, "take_rows": rows - first_rows}
            slices[position : position + 1] = [head, tail]
            break
    return slices


def _slice(file: InputFile, first_group: int, end_group: int, schema_bytes: bytes | None, skip: int = 0, take: int | None = None) -> dict:
    # every key in every slice: Arrow takes a table's columns from its first row
    return {"uri": file.uri, "first_group": first_group, "end_group": end_group, "schema": schema_bytes,
            "skip_rows": skip, "take_rows": take}  # fmt: skip


def _slice_rows(item: dict, files: list[InputFile]) -> int:
    if item["take_rows"] is not None:
        return item["take_rows"]
    file = next(f for f in files if f.uri == item["uri"])
    return sum(file.row_groups[item["first_group"] : item["end_group"]]) - item["skip_rows"]


def first_texts(item: dict, config: InputConfig, storage: StorageConfig, rows: int = FIRST_SLICE_ROWS) -> tuple[str, ...]:
    """Up to `rows` texts from the start of one slice (the run's first), for the stages to
    warm up on; none if they cannot be read (the read stage then says why, per file). Only
    the text column, streamed (`buffer_size`): the first pages of a large row group, not
    its whole column chunk, while Ray starts."""
    try:
        location = Location(item["uri"], storage)
        with location.fs.open_input_file(location.path) as handle:
            parquet = pq.ParquetFile(handle, buffer_size=1 << 20)
            if config.text_column not in parquet.schema_arrow.names or item["first_group"] >= item["end_group"]:
                return ()
            groups = list(range(item["first_group"], item["end_group"]))
            texts: list = []
            for batch in parquet.iter_batches(batch_size=rows, row_groups=groups, columns=[config.text_column]):
                texts += batch.column(0).to_pylist()[: rows - len(texts)]
                if len(texts) >= rows:
                    break
    except Exception:  # noqa: BLE001 - a warm-up sample only
        return ()
    return tuple(t for t in texts if isinstance(t, str))


def make_reader(config: InputConfig, storage: StorageConfig):
    """The read stage: a Ray Data `map_batches` generator over slice descriptions."""

    def read(slices: pa.Table) -> Iterator[pa.Table]:
        for item in slices.to_pylist():
            started = time.perf_counter()
            for table in _read_slice_or_marker(item, config, storage):
                yield schema.charge_busy_time(table, schema.READ_MS, started)
                started = time.perf_counter()

    return read


def _read_slice_or_marker(item: dict, config: InputConfig, storage: StorageConfig) -> Iterator[pa.Table]:
    """The slice's rows; if the file's bytes fail at any point (page, decompression, cut
    short), one marker row after whatever was yielded: the driver then drops the file's
    rows of this attempt, so a file is published all or nothing."""
    try:
        yield from _read_slice(item, config, storage)
    except Exception as exc:  # noqa: BLE001 - a storage failure stops the run; any other is the file's bytes
        if storage_fault(exc) is not None:
            raise storage_error(item["uri"], exc, storage) from exc
        yield _unreadable_marker(item, config, unreadable_reason(exc))


def _read_slice(item: dict, config: InputConfig, storage: StorageConfig) -> Iterator[pa.Table]:
    location = Location(item["uri"], storage)
    target = _block_schema(item, config)
    with location.fs.open_input_file(location.path) as handle:
        # pages written with a CRC are checked: a flipped byte is caught, not published
        parquet = pq.ParquetFile(handle, page_checksum_verification=True)
        names = parquet.schema_arrow.names
        columns = None
        if config.columns is not None:
            wanted = [config.id_column, config.text_column, *config.columns]
            columns = [name for name in dict.fromkeys(wanted) if name in names]
        groups = list(range(item["first_group"], item["end_group"]))
        if not groups:  # a zero-row file: nothing to yield, and nothing is lost
            return
        skip, take = item.get("skip_rows") or 0, item.get("take_rows")
        batch_rows = min(READ_BATCH_ROWS, take) if take else READ_BATCH_ROWS
        for record_batch in parquet.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns):
            if skip:  # the rows an earlier slice of this run took (see read_slices)
                dropped = min(skip, record_batch.num_rows)
                record_batch, skip = record_batch.slice(dropped), skip - dropped
                if record_batch.num_rows == 0:
                    continue
            if take is not None:
                if take == 0:
                    return
                record_batch = record_batch.slice(0, take)
                take -= record_batch.num_rows
            # The text as string with its per-row error (a missing or non-string text
            # column: the rows still flow, and each gets an error saying so).
            table = schema.normalize_text(pa.Table.from_batches([record_batch]), config.text_column)
            if target is not None:
                table = _conform(table, target)
            yield _tag(table, item["uri"], read_error=None)


def _block_schema(item: dict, config: InputConfig) -> pa.Schema | None:
    """The slice's union schema, projected to `input.columns`, with the text's error."""
    if not item.get("schema"):
        return None
    target = pa.ipc.read_schema(pa.py_buffer(item["schema"]))
    if config.columns is not None:
        wanted = {config.id_column, config.text_column, *config.columns}
        target = pa.schema([f for f in target if f.name in wanted])
    return target.append(pa.field(schema.TEXT_ERROR, pa.string()))


def _unreadable_marker(item: dict, config: InputConfig, reason: str) -> pa.Table:
    """One row in the blocks' schema, nulls but for its file and the reason. Its text error
    makes prepare plan no request for it (a RowError), so infer and parse pass it through."""
    target = _block_schema(item, config) or pa.schema(
        [pa.field(config.text_column, pa.string()), pa.field(schema.TEXT_ERROR, pa.string())]
    )
    marker = pa.Table.from_arrays([pa.nulls(1, f.type) for f in target], schema=target)
    marker = schema.set_column(marker, pa.field(schema.TEXT_ERROR, pa.string()), [f"unreadable input file: {reason}"])
    return _tag(marker, item["uri"], read_error=reason)


def _tag(table: pa.Table, uri: str, read_error: str | None) -> pa.Table:
    """Every block carries its source file and the read error column (null but in a
    marker): one schema for all blocks."""
    table = table.append_column(schema.SOURCE_FILE, pa.array([uri] * table.num_rows, pa.string()))
    return table.append_column(schema.READ_ERROR, pa.array([read_error] * table.num_rows, pa.string()))


def _conform(table: pa.Table, target: pa.Schema) -> pa.Table:
    """`table` in the target schema: its columns cast to the (widened) types, in the
    target's order, a column it lacks as nulls."""
    arrays = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in target
    ]
    return pa.Table.from_arrays(arrays, schema=target)
