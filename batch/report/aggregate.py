"""Pure aggregation, the frame's part: a pyarrow table in, small mergeable counts out.

Each output file is folded into a `Counts` on its own and the partial counts are added
together, so a report over millions of rows holds counts, never rows. The frame counts what
every output has (rows, skip reasons, errors, unreadable times) and prepares, once per batch,
what every task's counting shares (`Batch`: language, period and segment values per row);
each task kind (batch/report/sections/) counts its own columns into its own counts.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FREQS = ("day", "hour")
MAX_ERROR_EXAMPLES = 5


@dataclass(frozen=True)
class Roles:
    """Which frame columns a report reads, and as what. Resolved once from the schema
    (see build.resolve_roles); every name here exists in the output."""

    language: str | None = None
    time: str | None = None
    freq: str = "day"
    segments: tuple[str, ...] = ()
    skip_reason: str | None = None
    error: str | None = None

    def columns(self) -> list[str]:
        names = [self.language, self.time, *self.segments, self.skip_reason, self.error]
        return list(dict.fromkeys(name for name in names if name is not None))


@dataclass
class Segment:
    """One segment column of a batch, as (row, value) pairs: a list column (a multi-label
    topic) gives a pair per value of the row, so the row counts in each of its values."""

    rows: np.ndarray  # row index of each pair
    values: pa.Array  # string value of each pair (null: the row has no value)


@dataclass
class Batch:
    """One batch of output rows with what every task's counting shares, computed once."""

    table: pa.Table
    language: pa.Array  # string per row (null: unknown)
    periods: pa.Array  # period start per row, µs since the epoch (null: no usable time)
    skip_reason: pa.Array
    error: pa.Array
    segments: dict[str, Segment]

    @property
    def num_rows(self) -> int:
        return self.table.num_rows


@dataclass
class Counts:
    """Everything the frame shows, plus each task's own counts (by task name). `add`
    merges another file's counts; a task's counts have their own `add`."""

    rows: int = 0
    periods: Counter = field(default_factory=Counter)  # period start (None: no usable time) -> rows
    times_unreadable: int = 0  # a time value was there but is not a date/time
    failed_rows: int = 0
    failed_by_task: Counter = field(default_factory=Counter)
    skip_reasons: Counter = field(default_factory=Counter)  # "task: reason" -> rows
    error_examples: list[str] = field(default_factory=list)
    tasks: dict[str, Any] = field(default_factory=dict)

    def add(self, other: "Counts") -> None:
        self.rows += other.rows
        self.periods.update(other.periods)
        self.times_unreadable += other.times_unreadable
        self.failed_rows += other.failed_rows
        self.failed_by_task.update(other.failed_by_task)
        self.skip_reasons.update(other.skip_reasons)
        for example in other.error_examples:
            if len(self.error_examples) < MAX_ERROR_EXAMPLES and example not in self.error_examples:
                self.error_examples.append(example)
        for name, counts in other.tasks.items():
            if name in self.tasks:
                self.tasks[name].add(counts)
            else:
                self.tasks[name] = counts


def merge(parts: Iterable[Counts]) -> Counts:
    total = Counts()
    for part in parts:
        total.add(part)
    return total


# --- one table -> Counts -----------------------------------------------------------------


def count_table(table: pa.Table, roles: Roles, tasks: Iterable[Any] = ()) -> Counts:
    """Fold one batch of output rows into counts: the frame's, then each task's."""
    counts = Counts(rows=table.num_rows)
    if table.num_rows == 0:
        return counts
    skip_reason = strings(table, roles.skip_reason)
    error = strings(table, roles.error)
    _count_outcomes(counts, skip_reason, error)
    if roles.time is not None:
        periods, counts.times_unreadable = period_starts(table.column(roles.time).combine_chunks(), roles.freq)
    else:
        periods = pa.nulls(table.num_rows, pa.int64())
    for item in pc.value_counts(periods).to_pylist():
        counts.periods[item["values"]] += item["counts"]
    batch = Batch(
        table=table,
        language=strings(table, roles.language),
        periods=periods,
        skip_reason=skip_reason,
        error=error,
        segments={name: segment_pairs(table.column(name).combine_chunks()) for name in roles.segments},
    )
    for task in tasks:
        counts.tasks[task.name] = task.count(batch)
    return counts


def strings(table: pa.Table, column: str | None) -> pa.Array:
    """A column as one string array; all nulls when the role has no column."""
    if column is None:
        return pa.nulls(table.num_rows, pa.string())
    return as_strings(table.column(column).combine_chunks())


def as_strings(values: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_string(values.type):
        return values
    return pc.cast(values, pa.string())


def is_list_type(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) or pa.types.is_large_list(type_)


def segment_pairs(values: pa.Array) -> Segment:
    """(row, value) pairs of a segment column: one per row for a scalar column, one per
    list value for a list column (a row with an empty or null list has none)."""
    if is_list_type(values.type):
        flat = pc.list_flatten(values)
        rows = pc.list_parent_indices(values).to_numpy(zero_copy_only=False).astype(np.int64)
        return Segment(rows=rows, values=as_strings(flat))
    return Segment(rows=np.arange(len(values), dtype=np.int64), values=as_strings(values))


def mentions_task(outcomes: pa.Array, task: str) -> np.ndarray:
    """Rows whose `skip_reason` / `error` ("task: reason; task: reason") has a part for `task`."""
    if outcomes.null_count == len(outcomes):  # the usual case: nothing skipped or failed in this batch
        return np.zeros(len(outcomes), dtype=bool)
    matched = pc.match_substring_regex(outcomes, rf"(^|; ){re.escape(task)}: ")
    return matched.fill_null(False).to_numpy(zero_copy_only=False)


def _count_outcomes(counts: Counts, skip_reason: pa.Array, error: pa.Array) -> None:
    """Skip reasons and failures, counted per distinct string (few), not per row."""
    for item in pc.value_counts(skip_reason.drop_null()).to_pylist():
        for reason in item["values"].split("; "):
            counts.skip_reasons[reason] += item["counts"]
    for item in pc.value_counts(error.drop_null()).to_pylist():
        message, n = item["values"], item["counts"]
        counts.failed_rows += n
        for task in set(re.findall(r"(?:^|; )([A-Za-z_][A-Za-z0-9_]*): ", message)) or {"(unknown)"}:
            counts.failed_by_task[task] += n
        if len(counts.error_examples) < MAX_ERROR_EXAMPLES:
            counts.error_examples.append(message)


def codes(values: pa.Array) -> tuple[np.ndarray, list[str | None]]:
    """An integer code per row and the value of each code (None for null)."""
    encoded = pc.dictionary_encode(values, null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


# --- time -------------------------------------------------------------------------------


def is_time_type(type_: pa.DataType) -> bool:
    """Types a time column may have: timestamps, dates, or ISO-8601 strings."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    return (
        pa.types.is_timestamp(type_)
        or pa.types.is_date(type_)
        or pa.types.is_string(type_)
        or pa.types.is_large_string(type_)
    )


def period_starts(values: pa.Array, freq: str) -> tuple[pa.Array, int]:
    """Start of each row's period (µs since the epoch, UTC) and how many values were present
    but unreadable. Naive timestamps and strings without an offset are taken as UTC."""
    if freq not in FREQS:
        raise ValueError(f"freq {freq!r}: expected one of {', '.join(FREQS)}")
    timestamps, unreadable = utc_timestamps(values)
    floored = pc.floor_temporal(timestamps, unit=freq)
    return pc.cast(pc.cast(floored, pa.timestamp("us")), pa.int64()), unreadable


def utc_timestamps(values: pa.Array) -> tuple[pa.Array, int]:
    """Any supported time column as timestamp[us, UTC]; unreadable values become null."""
    utc = pa.timestamp("us", tz="UTC")
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
        if pa.types.is_date(values.type) or values.type.tz is None:
            values = pc.cast(values, pa.timestamp("us"))
        return pc.cast(values, utc), 0
    if pa.types.is_large_string(values.type):
        values = pc.cast(values, pa.string())
    for target in (utc, pa.timestamp("us")):  # vectorized: all with an offset, or all without
        try:
            return pc.cast(pc.cast(values, target), utc), 0
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    parsed = [None if text is None else _parse_time(text) for text in values.to_pylist()]
    unreadable = sum(1 for text, value in zip(values.to_pylist(), parsed) if text is not None and value is None)
    return pa.array(parsed, utc), unreadable


def _parse_time(text: str) -> dt.datetime | None:
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def period_label(start_us: int, freq: str) -> str:
    start = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=start_us)
    return start.strftime("%Y-%m-%d") if freq == "day" else start.strftime("%Y-%m-%dT%H:00Z")


def period_step_us(freq: str) -> int:
    return (86_400 if freq == "day" else 3_600) * 1_000_000
