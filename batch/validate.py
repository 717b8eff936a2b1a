"""`validate`: every check that needs no engine, so a bad night fails in seconds.

The job file is already typed and validated by `batch.config`; this adds what needs the
storage: the inputs exist, every file is readable Parquet with the id and text columns
(text as a string, or binary holding UTF-8), the files agree on column types, and the
output location is writable. Every page of every file is read (column by column, row
group by row group, so memory holds one column chunk), because a file whose footer is
fine can still have a corrupt page: such a file is a problem, named with its row count.
Duplicate ids are reported (from the id column read on the way), as a note: every input
row is kept, so the output has an id as many times as the input.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch.config import JobConfig
from batch.io.read import InputFile, output_schema, plan_inputs, unreadable_reason
from batch.io.storage import Location, storage_error, storage_fault
from batch.text.privacy import missing_hash_columns

DUPLICATE_EXAMPLES = 5


@dataclass
class FileRead:
    """What reading every page of one input file found."""

    file: InputFile
    ids: pa.ChunkedArray | None = None
    text_type: pa.DataType | None = None  # as stored; None when the file has no text column
    problem: str | None = None


def validate_job_inputs(job: JobConfig) -> tuple[list[str], list[str]]:
    """(problems, notes). Problems make validation fail; notes describe what was found."""
    problems: list[str] = []
    files, bad_inputs = plan_inputs(job.input, job.storage)
    for bad in bad_inputs:
        problems.append(f"{bad.uri}: {bad.reason}")
    for file in files:
        if job.input.text_column not in file.columns:
            problems.append(
                f"{file.uri}: no text column {job.input.text_column!r}; its columns: {', '.join(file.columns)}"
            )
        if job.input.columns:
            if absent := [c for c in job.input.columns if c not in file.columns]:
                problems.append(f"{file.uri}: input.columns names columns it lacks: {', '.join(absent)}")
    if missing := missing_hash_columns(job.privacy, {column for file in files for column in file.columns}):
        problems.append(f"privacy.hash_columns: no column {missing[0]!r} in any input file")
    with ThreadPoolExecutor(max_workers=4) as pool:
        reads = list(pool.map(lambda file: _read_every_page(job, file), files))
    problems += [read.problem for read in reads if read.problem]
    readable = [read for read in reads if not read.problem]
    type_problems, type_notes = _text_types(job, readable)
    problems += type_problems
    problems += _writable(job)
    rows = sum(file.rows for file in files)
    notes = [f"inputs: {len(files) + len(bad_inputs)} Parquet files, {rows} rows", f"output: {job.output.uri}"]
    notes += [f"task {name}: model {cfg.model}" for name, cfg in job.enabled_tasks().items()]
    notes += type_notes + _duplicate_ids(job, readable)
    return problems, notes


def _read_every_page(job: JobConfig, file: InputFile) -> FileRead:
    """Decode every page of the file, one column chunk at a time, keeping only the ids. A
    storage failure is named as one; anything else means the file's bytes are bad."""
    location = Location(file.uri, job.storage)
    try:
        with location.fs.open_input_file(location.path) as handle:
            parquet = pq.ParquetFile(handle, page_checksum_verification=True)
            stored = parquet.schema_arrow
            text_type = stored.field(job.input.text_column).type if job.input.text_column in stored.names else None
            id_chunks: list[pa.Array] = []
            for group in range(parquet.num_row_groups):
                for name in stored.names:
                    column = parquet.read_row_group(group, columns=[name]).column(0)
                    if name == job.input.id_column:
                        id_chunks.extend(column.chunks)
        ids = pa.chunked_array(id_chunks, type=stored.field(job.input.id_column).type)
        return FileRead(file, ids, text_type)
    except Exception as exc:  # noqa: BLE001 - whatever the bytes or the store do, it is this file's problem line
        if storage_fault(exc) is not None:
            return FileRead(file, problem=str(storage_error(file.uri, exc, job.storage)))
        return FileRead(file, problem=f"{file.uri}: {unreadable_reason(exc)} ({file.rows} rows)")


def _text_types(job: JobConfig, reads: list[FileRead]) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    name = job.input.text_column
    for read in reads:
        if read.text_type is None:
            continue
        type_ = read.text_type.value_type if pa.types.is_dictionary(read.text_type) else read.text_type
        if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
            notes.append(
                f"{read.file.uri}: text column {name!r} is binary: decoded as UTF-8, a row that is not gets an error"
            )
        elif not (pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_null(type_)):
            problems.append(f"{read.file.uri}: text column {name!r} has type {read.text_type}, expected string")
    return problems, notes


def _duplicate_ids(job: JobConfig, reads: list[FileRead]) -> list[str]:
    """A note on ids found more than once across all files: their count and a few examples."""
    if not reads:
        return []
    id_type = output_schema([read.file for read in reads]).field(job.input.id_column).type  # widened to one
    chunks = [chunk for read in reads for chunk in read.ids.cast(id_type).chunks]
    counts = pc.value_counts(pa.chunked_array(chunks, type=id_type).drop_null())
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if not len(repeated):
        return []
    most = repeated.take(pc.sort_indices(pc.negate(repeated.field("counts"))))[:DUPLICATE_EXAMPLES]
    examples = ", ".join(f"{item['values']!r} ({item['counts']} rows)" for item in most.to_pylist())
    rows = pc.sum(repeated.field("counts")).as_py()
    return [
        f"duplicate ids: {len(repeated)} ids appear more than once ({rows} rows), e.g. {examples}; "
        f"every row is kept and annotated, so the output has each id as many times as the input"
    ]


def _writable(job: JobConfig) -> list[str]:
    probe = Location(job.output.uri, job.storage).join("_staging", f".probe-{uuid.uuid4().hex}")
    try:
        probe.write_json({"probe": True})
        probe.fs.delete_file(probe.path)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not writable"
        return [f"{job.output.uri}: output is not writable: {exc}"]
    return []
