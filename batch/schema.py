"""The output schema, in one place.

An output row is the input row (original columns unchanged) plus:
- each task's columns (`sentiment`, `sentiment_probs`, `translation_<lang>`, ...),
- `<task>_model`: which model (and adapter) produced them,
- `run_id`: the run that wrote the row,
- `error`: null when every task succeeded or skipped; else `task: reason; task: reason`,
- `skip_reason`: null, or why a task had nothing to infer (`sentiment: empty text`).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

ERROR = "error"
SKIP_REASON = "skip_reason"
RUN_ID = "run_id"
SOURCE_FILE = "__source_file"  # internal: which input file a row came from; dropped before writing
TEXT_ERROR = "__text_error"  # internal: why a row's text cannot be used (set by the reader); dropped before writing
# internal: on the one marker row the reader yields for a file whose bytes failed to read,
# the reason (null on every other row); the writer turns the marker into an "unreadable" record
READ_ERROR = "__read_error"
# internal per-row usage, summed into the run summary and dropped before writing
REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS = "__requests", "__input_tokens", "__output_tokens"
CACHE_HITS = "__cache_hits"
CACHED_ROWS = "__cached_rows"  # a task's columns taken whole from the row cache (per row and task)
# busy time of the stage that handled the row's block, charged to the block's first row
READ_MS, PREPARE_MS, INFER_MS, PARSE_MS = "__read_ms", "__prepare_ms", "__infer_ms", "__parse_ms"
USAGE_COLUMNS = (REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS, CACHE_HITS, CACHED_ROWS, READ_MS, PREPARE_MS, INFER_MS, PARSE_MS)
# internal, between stages: per row, the pickled {task: Plan | Skip | RowError} (prepare ->
# infer -> parse), and per task the pickled answers to that row's requests (infer -> parse)
PLANS = "__plans"
# internal, prepare -> parse: per row, the pickled MaskedText (batch/text/privacy.py), null
# when nothing was masked
MASKED = "__masked"


def results_column(task: str) -> str:
    return f"__results_{task}"


def normalize_text(table: pa.Table, column: str) -> pa.Table:
    """The read stage's view of one file's rows: the text column as `string` whatever the
    file stored, and TEXT_ERROR saying per row why its text cannot be used (null when it
    can). Every block then has the same text type, so Ray can batch rows of different
    files together, and `text_values` needs no more than these two columns.

    - string, large_string, dictionary of strings: cast to string; a null-typed column
      (a file whose texts are all null) is string nulls (those rows are skipped, not failed);
    - binary: decoded as UTF-8; a row that is not valid UTF-8 gets null text and an error
      (Arrow strings are always valid UTF-8, so this is also how lone surrogates arrive);
    - any other type (int64, ...): every row gets an error naming the column and its type;
      the values are kept as text where Arrow can cast them (numbers, dates), else null;
    - no such column: every row gets an error saying so, and a null text.
    """
    n_rows = table.num_rows
    if column not in table.column_names:
        texts: pa.Array = pa.nulls(n_rows, pa.string())
        errors = [f"no text column {column!r} in this file"] * n_rows
        table = table.append_column(pa.field(column, pa.string()), texts)
    else:
        values = table.column(column)
        texts, errors = _decode(values, column)
        index = table.schema.get_field_index(column)
        table = table.set_column(index, pa.field(column, pa.string()), texts)
    return set_column(table, pa.field(TEXT_ERROR, pa.string()), errors)


def _decode(values: pa.ChunkedArray, column: str) -> tuple[pa.Array, list[str | None]]:
    """(texts as a string array, per-row error) for a text column of any type."""
    n_rows = len(values)
    type_ = values.type
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_null(type_) or pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return values.cast(pa.string()).combine_chunks(), [None] * n_rows
    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
        texts: list[str | None] = []
        errors: list[str | None] = []
        for raw in values.to_pylist():
            try:
                texts.append(None if raw is None else raw.decode("utf-8"))
                errors.append(None)
            except UnicodeDecodeError as exc:
                texts.append(None)
                errors.append(f"text is not valid UTF-8 (byte {exc.start})")
        return pa.array(texts, pa.string()), errors
    reason = f"text column {column!r} has type {values.type}, expected string"
    try:
        as_text = values.cast(pa.string()).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        as_text = pa.nulls(n_rows, pa.string())
    return as_text, [reason] * n_rows


def text_values(batch: pa.Table, column: str) -> tuple[list[str | None], list[str | None]]:
    """The text of every row, and per row an error when the text cannot be used at all.
    Batches from the read stage carry both (see `normalize_text`); any other table is
    decoded here the same way."""
    if TEXT_ERROR not in batch.column_names:
        batch = normalize_text(batch, column)
    return batch.column(column).to_pylist(), batch.column(TEXT_ERROR).to_pylist()


def set_column(batch: pa.Table, field: pa.Field, values: list[Any]) -> pa.Table:
    array = pa.array(values, type=field.type)
    index = batch.schema.get_field_index(field.name)
    if index >= 0:
        return batch.set_column(index, field, array)
    return batch.append_column(field, array)


def merge_outcomes(batch: pa.Table, errors: list[list[str]], skips: list[list[str]]) -> pa.Table:
    """Fold this stage's per-row errors and skip reasons into the `error` and `skip_reason`
    columns, keeping what earlier stages recorded."""
    for name, new in ((ERROR, errors), (SKIP_REASON, skips)):
        before = batch.column(name).to_pylist() if name in batch.column_names else [None] * batch.num_rows
        merged = ["; ".join(filter(None, [old, *extra])) or None for old, extra in zip(before, new)]
        batch = set_column(batch, pa.field(name, pa.string()), merged)
    return batch


def add_usage(batch: pa.Table, usage: dict[str, list[int]]) -> pa.Table:
    """Add this stage's engine usage to the row's internal usage columns."""
    for name, values in usage.items():
        if name in batch.column_names:
            values = [a + b for a, b in zip(batch.column(name).to_pylist(), values)]
        batch = set_column(batch, pa.field(name, pa.int64()), values)
    return batch


def charge_busy_time(batch: pa.Table, column: str, started: float) -> pa.Table:
    """Add the stage's busy time since `started` (perf_counter) to the batch's first row."""
    if not batch.num_rows:
        return batch
    return add_usage(batch, {column: [int((time.perf_counter() - started) * 1000)] + [0] * (batch.num_rows - 1)})


def internal_columns(batch: pa.Table) -> list[str]:
    return [name for name in batch.column_names if name.startswith("__")]


def outcome_counts(batch: pa.Table) -> Counter:
    """rows, failed, skipped-by-reason, engine usage: the figures a run summary adds up."""
    counts: Counter = Counter(rows=batch.num_rows)
    for name in USAGE_COLUMNS:
        if name in batch.column_names:
            counts[name.strip("_")] += pa.compute.sum(batch.column(name)).as_py() or 0
    for error in batch.column(ERROR).to_pylist():
        if error is not None:
            counts["failed"] += 1
    for skip in batch.column(SKIP_REASON).to_pylist():
        if skip is not None:
            for reason in skip.split("; "):
                counts[f"skipped: {reason}"] += 1
    counts.update(_language_flags(batch))
    return counts


# Flags that say something about the row's source language (a model that does not cover
# it), counted per language in the summary: "flagged: unsupported_language (th)".
LANGUAGE_FLAGS = ("unsupported_language", "fallback")


def _language_flags(batch: pa.Table) -> Counter:
    flag_columns = [name for name in batch.column_names if name.endswith("_flags")]
    if "source_lang" not in batch.column_names or not flag_columns:
        return Counter()
    counts: Counter = Counter()
    languages = batch.column("source_lang").to_pylist()
    per_column = [batch.column(name).to_pylist() for name in flag_columns]
    for row, language in enumerate(languages):
        flags = {flag for column in per_column for flag in (column[row] or ())}
        for flag in LANGUAGE_FLAGS:
            if flag in flags:
                counts[f"flagged: {flag} ({language})"] += 1
    return counts
