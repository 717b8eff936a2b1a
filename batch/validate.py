"""`validate`: every check that needs no engine, so a bad night fails in seconds.

The job file is already typed and validated by `batch.config`; this adds what needs the
storage: the inputs exist, every file is readable Parquet with the id and text columns
(text as a string), and the output location is writable.
"""

from __future__ import annotations

import uuid

import pyarrow as pa

from batch.config import JobConfig
from batch.io.read import plan_inputs
from batch.io.storage import Location


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
    problems += _text_types(job, files)
    problems += _writable(job)
    rows = sum(file.rows for file in files)
    notes = [f"inputs: {len(files) + len(bad_inputs)} Parquet files, {rows} rows", f"output: {job.output.uri}"]
    notes += [f"task {name}: model {cfg.model}" for name, cfg in job.enabled_tasks().items()]
    return problems, notes


def _text_types(job: JobConfig, files) -> list[str]:
    import pyarrow.parquet as pq

    problems = []
    for file in files:
        if job.input.text_column not in file.columns:
            continue
        location = Location(file.uri, job.storage)
        with location.fs.open_input_file(location.path) as handle:
            field = pq.ParquetFile(handle).schema_arrow.field(job.input.text_column)
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            problems.append(f"{file.uri}: text column {field.name!r} has type {field.type}, expected string")
    return problems


def _writable(job: JobConfig) -> list[str]:
    probe = Location(job.output.uri, job.storage).join("_staging", f".probe-{uuid.uuid4().hex}")
    try:
        probe.write_json({"probe": True})
        probe.fs.delete_file(probe.path)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not writable"
        return [f"{job.output.uri}: output is not writable: {exc}"]
    return []
