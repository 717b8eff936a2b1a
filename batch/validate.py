"""`validate`: every check that needs no engine, so a bad night fails in seconds.

The job file is already typed and validated by `batch.config`; this adds what needs the
storage: the inputs exist, every file is readable Parquet with the id and text columns
(text as a string, or binary holding UTF-8), the files agree on column types, and the
output location is writable. Duplicate ids are reported (reading only the id column), as
a note: every input row is kept, so the output has an id as many times as the input.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch.config import JobConfig
from batch.io.read import output_schema, plan_inputs
from batch.io.storage import Location
from batch.text.privacy import missing_hash_columns

DUPLICATE_EXAMPLES = 5


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
    type_problems, type_notes = _text_types(job, files)
    problems += type_problems
    problems += _writable(job)
    rows = sum(file.rows for file in files)
    notes = [f"inputs: {len(files) + len(bad_inputs)} Parquet files, {rows} rows", f"output: {job.output.uri}"]
    notes += [f"task {name}: model {cfg.model}" for name, cfg in job.enabled_tasks().items()]
    notes += type_notes + _duplicate_ids(job, files)
    return problems, notes


def _text_types(job: JobConfig, files) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    for file in files:
        if job.input.text_column not in file.columns:
            continue
        location = Location(file.uri, job.storage)
        with location.fs.open_input_file(location.path) as handle:
            field = pq.ParquetFile(handle).schema_arrow.field(job.input.text_column)
        type_ = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
            notes.append(
                f"{file.uri}: text column {field.name!r} is binary: decoded as UTF-8, a row that is not gets an error"
            )
        elif not (pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_null(type_)):
            problems.append(f"{file.uri}: text column {field.name!r} has type {field.type}, expected string")
    return problems, notes


def _duplicate_ids(job: JobConfig, files) -> list[str]:
    """A note on ids found more than once across all files: their count and a few examples."""
    id_column = job.input.id_column

    def ids(file) -> pa.ChunkedArray:
        location = Location(file.uri, job.storage)
        with location.fs.open_input_file(location.path) as handle:
            return pq.read_table(handle, columns=[id_column]).column(0)

    if not files:
        return []
    with ThreadPoolExecutor(max_workers=16) as pool:
        columns = list(pool.map(ids, files))
    id_type = output_schema(files).field(id_column).type  # the files' id types, widened to one
    counts = pc.value_counts(pa.chunked_array([c.cast(id_type) for c in columns], type=id_type).drop_null())
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
