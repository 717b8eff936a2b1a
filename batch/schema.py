"""The output schema, in one place.

An output row is the input row (original columns unchanged) plus:
- each task's columns (`sentiment`, `sentiment_probs`, `translation_<lang>`, ...),
- `<task>_model`: which model (and adapter) produced them,
- `run_id`: the run that wrote the row,
- `error`: null when every task succeeded or skipped; else `task: reason; task: reason`,
- `skip_reason`: null, or why a task had nothing to infer (`sentiment: empty text`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

ERROR = "error"
SKIP_REASON = "skip_reason"
RUN_ID = "run_id"
SOURCE_FILE = "__source_file"  # internal: which input file a row came from; dropped before writing
# internal per-row usage, summed into the run summary and dropped before writing
REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS = "__requests", "__input_tokens", "__output_tokens"
USAGE_COLUMNS = (REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS)


def text_values(batch: pa.Table, column: str) -> tuple[list[str | None], list[str | None]]:
    """The text of every row, and per row an error when the text cannot be used at all."""
    values = batch.column(column)
    n_rows = batch.num_rows
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values.to_pylist(), [None] * n_rows
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        texts: list[str | None] = []
        errors: list[str | None] = []
        for raw in values.to_pylist():
            try:
                texts.append(None if raw is None else raw.decode("utf-8"))
                errors.append(None)
            except UnicodeDecodeError as exc:
                texts.append(None)
                errors.append(f"text is not valid UTF-8 (byte {exc.start})")
        return texts, errors
    reason = f"text column {column!r} has type {values.type}, expected string"
    return [None] * n_rows, [reason] * n_rows


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
    return counts
