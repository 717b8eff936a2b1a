"""Pure aggregation: a pyarrow table in, small mergeable counts out.

Each output file is folded into a `Counts` on its own and the partial counts are added
together, so a report over millions of rows holds counts, never rows. Everything a report
shows (overall, by language, by period) is derived afterwards from these counts, which is
why they are keyed finely: (period, language, label) for sentiment, per target and source
language for translation.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FREQS = ("day", "hour")
# The targets TranslationConfig accepts, as their column suffix (batch/text/locales.py):
# fr, pt_br, zh_hant, es_419, zh_hant_tw; never translation_model or translation_<t>_flags.
TARGET_COLUMN = re.compile(r"^translation_([a-z]{2,3}(?:_[a-z]{4})?(?:_(?:[a-z]{2}|\d{3}))?)$")
MAX_ERROR_EXAMPLES = 5

# Length ratios are kept as a histogram of log2(ratio), so quantiles need no rows in memory:
# 400 bins over 1/32 .. 32 is ~1.7% relative resolution; values beyond go to the end bins
# (exact min and max are kept separately).
RATIO_LOG2_MIN, RATIO_LOG2_MAX, RATIO_BINS = -5.0, 5.0, 400
RATIO_BIN_WIDTH = (RATIO_LOG2_MAX - RATIO_LOG2_MIN) / RATIO_BINS


def translation_column(target: str) -> str:
    return f"translation_{target}"


def flags_column(target: str) -> str:
    return f"translation_{target}_flags"


def translation_targets(columns: Iterable[str]) -> tuple[str, ...]:
    """Target languages of an output, from its `translation_<lang>` columns (not
    `translation_model` nor `translation_<lang>_flags`)."""
    return tuple(match.group(1) for name in columns if (match := TARGET_COLUMN.match(name)))


@dataclass(frozen=True)
class Roles:
    """Which output columns a report reads, and as what. Resolved once from the schema
    (see build.resolve_roles); every name here exists in the output."""

    sentiment: str | None = None
    language: str | None = None
    time: str | None = None
    freq: str = "day"
    text: str | None = None
    targets: tuple[str, ...] = ()
    flagged_targets: tuple[str, ...] = ()  # targets that have a translation_<lang>_flags column
    skip_reason: str | None = None
    error: str | None = None

    def columns(self) -> list[str]:
        names = [self.sentiment, self.language, self.time, self.text, self.skip_reason, self.error]
        names += [translation_column(t) for t in self.targets]
        names += [flags_column(t) for t in self.flagged_targets]
        return list(dict.fromkeys(name for name in names if name is not None))


# --- mergeable counts ------------------------------------------------------------------


@dataclass
class RatioHistogram:
    """Output chars / source chars, as a fixed log-scale histogram: mergeable across files,
    bounded in memory, good for quantiles to within a bin (~1.7%)."""

    bins: np.ndarray = field(default_factory=lambda: np.zeros(RATIO_BINS, dtype=np.int64))
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add_values(self, ratios: np.ndarray) -> None:
        if ratios.size == 0:
            return
        with np.errstate(divide="ignore"):
            logs = np.log2(ratios)
        index = np.clip(np.floor((logs - RATIO_LOG2_MIN) / RATIO_BIN_WIDTH), 0, RATIO_BINS - 1).astype(np.int64)
        self.bins += np.bincount(index, minlength=RATIO_BINS)
        self.count += int(ratios.size)
        self.total += float(ratios.sum())
        self.low = min(self.low, float(ratios.min()))
        self.high = max(self.high, float(ratios.max()))

    def add(self, other: "RatioHistogram") -> None:
        self.bins += other.bins
        self.count += other.count
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)

    def quantile(self, q: float) -> float | None:
        """Interpolated within the bin, in log space, and clamped to the exact min/max."""
        if self.count == 0:
            return None
        cumulative = np.cumsum(self.bins)
        target = q * self.count
        index = int(np.searchsorted(cumulative, target, side="left"))
        index = min(index, RATIO_BINS - 1)
        before = cumulative[index - 1] if index > 0 else 0
        inside = self.bins[index]
        fraction = (target - before) / inside if inside else 0.5
        value = 2.0 ** (RATIO_LOG2_MIN + (index + fraction) * RATIO_BIN_WIDTH)
        return min(max(value, self.low), self.high)

    def share_outside(self, low: float, high: float) -> float | None:
        """Share of ratios below `low` or above `high` (bin resolution): a quick signal of
        truncated or run-on translations."""
        if self.count == 0:
            return None
        edges = RATIO_LOG2_MIN + np.arange(RATIO_BINS + 1) * RATIO_BIN_WIDTH
        below = self.bins[edges[1:] <= math.log2(low)].sum()
        above = self.bins[edges[:-1] >= math.log2(high)].sum()
        return float(below + above) / self.count


@dataclass
class TargetCounts:
    """One translation target language."""

    translated: int = 0
    skipped: int = 0
    failed: int = 0
    flagged: int = 0
    flags: Counter = field(default_factory=Counter)
    ratios: dict[str | None, RatioHistogram] = field(default_factory=dict)  # by source language

    def add(self, other: "TargetCounts") -> None:
        self.translated += other.translated
        self.skipped += other.skipped
        self.failed += other.failed
        self.flagged += other.flagged
        self.flags.update(other.flags)
        for language, histogram in other.ratios.items():
            self.ratios.setdefault(language, RatioHistogram()).add(histogram)

    def all_ratios(self) -> RatioHistogram:
        merged = RatioHistogram()
        for histogram in self.ratios.values():
            merged.add(histogram)
        return merged


@dataclass
class Counts:
    """Everything a report shows, before presentation. `add` merges another file's counts."""

    rows: int = 0
    # sentiment: (period start in µs since the epoch, language, label) -> rows; None = unknown
    sentiment: Counter = field(default_factory=Counter)
    sentiment_skipped: int = 0  # sentiment is null because the task skipped the row
    sentiment_failed: int = 0  # ... because the task failed on it
    times_unreadable: int = 0  # a time value was there but is not a date/time
    # row outcomes, every task
    failed_rows: int = 0
    failed_by_task: Counter = field(default_factory=Counter)
    skip_reasons: Counter = field(default_factory=Counter)  # "task: reason" -> rows
    error_examples: list[str] = field(default_factory=list)
    # translation: (language, what) -> rows; what: rows, skipped, failed, flagged
    languages: Counter = field(default_factory=Counter)
    targets: dict[str, TargetCounts] = field(default_factory=dict)

    def add(self, other: "Counts") -> None:
        self.rows += other.rows
        self.sentiment.update(other.sentiment)
        self.sentiment_skipped += other.sentiment_skipped
        self.sentiment_failed += other.sentiment_failed
        self.times_unreadable += other.times_unreadable
        self.failed_rows += other.failed_rows
        self.failed_by_task.update(other.failed_by_task)
        self.skip_reasons.update(other.skip_reasons)
        for example in other.error_examples:
            if len(self.error_examples) < MAX_ERROR_EXAMPLES and example not in self.error_examples:
                self.error_examples.append(example)
        self.languages.update(other.languages)
        for target, counts in other.targets.items():
            self.targets.setdefault(target, TargetCounts()).add(counts)


def merge(parts: Iterable[Counts]) -> Counts:
    total = Counts()
    for part in parts:
        total.add(part)
    return total


# --- one table -> Counts -----------------------------------------------------------------


def count_table(table: pa.Table, roles: Roles) -> Counts:
    """Fold one batch of output rows into counts."""
    counts = Counts(rows=table.num_rows)
    if table.num_rows == 0:
        return counts
    skip_reason = _strings(table, roles.skip_reason)
    error = _strings(table, roles.error)
    _count_outcomes(counts, skip_reason, error)
    language = _strings(table, roles.language)
    if roles.sentiment is not None:
        _count_sentiment(counts, table, roles, language, skip_reason, error)
    if roles.targets:
        _count_translation(counts, table, roles, language, skip_reason, error)
    return counts


def _strings(table: pa.Table, column: str | None) -> pa.Array:
    """A column as one string array; all nulls when the role has no column."""
    if column is None:
        return pa.nulls(table.num_rows, pa.string())
    values = table.column(column).combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    return values if pa.types.is_string(values.type) else pc.cast(values, pa.string())


def mentions_task(outcomes: pa.Array, task: str) -> np.ndarray:
    """Rows whose `skip_reason` / `error` ("task: reason; task: reason") has a part for `task`."""
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


def _count_sentiment(
    counts: Counts, table: pa.Table, roles: Roles, language: pa.Array, skip_reason: pa.Array, error: pa.Array
) -> None:
    label = _strings(table, roles.sentiment)
    if roles.time is not None:
        periods, unreadable = period_starts(table.column(roles.time).combine_chunks(), roles.freq)
        counts.times_unreadable += unreadable
    else:
        periods = pa.nulls(table.num_rows, pa.int64())
    keys = pa.table({"period": periods, "language": language, "label": label})
    grouped = keys.group_by(["period", "language", "label"], use_threads=False).aggregate([([], "count_all")])
    for row in grouped.to_pylist():
        counts.sentiment[(row["period"], row["language"], row["label"])] += row["count_all"]
    unlabeled = ~label.is_valid().to_numpy(zero_copy_only=False)
    skipped = unlabeled & mentions_task(skip_reason, "sentiment")
    counts.sentiment_skipped += int(skipped.sum())
    counts.sentiment_failed += int((unlabeled & ~skipped & mentions_task(error, "sentiment")).sum())


def _count_translation(
    counts: Counts, table: pa.Table, roles: Roles, language: pa.Array, skip_reason: pa.Array, error: pa.Array
) -> None:
    codes, languages = _codes(language)
    skipped_row = mentions_task(skip_reason, "translation")
    failed_row = mentions_task(error, "translation")
    flagged_row = np.zeros(table.num_rows, dtype=bool)
    source_chars = _chars(table, roles.text)
    for target in roles.targets:
        result = counts.targets.setdefault(target, TargetCounts())
        output = _strings(table, translation_column(target))
        translated = output.is_valid().to_numpy(zero_copy_only=False)
        result.translated += int(translated.sum())
        result.skipped += int((~translated & skipped_row).sum())
        result.failed += int((~translated & ~skipped_row & failed_row).sum())
        if target in roles.flagged_targets:
            flagged = _count_flags(result, table.column(flags_column(target)).combine_chunks())
            flagged_row |= flagged
        if source_chars is not None:
            output_chars = pc.utf8_length(output).fill_null(0).to_numpy(zero_copy_only=False)
            usable = translated & (source_chars > 0)
            ratios = output_chars / np.where(source_chars > 0, source_chars, 1)
            for code in np.unique(codes[usable]):
                histogram = result.ratios.setdefault(languages[code], RatioHistogram())
                histogram.add_values(ratios[usable & (codes == code)])
    for what, mask in (("rows", None), ("skipped", skipped_row), ("failed", failed_row), ("flagged", flagged_row)):
        per_code = np.bincount(codes, weights=None if mask is None else mask.astype(np.int64), minlength=len(languages))
        for code, n in enumerate(per_code):
            if n:
                counts.languages[(languages[code], what)] += int(n)


def _codes(values: pa.Array) -> tuple[np.ndarray, list[str | None]]:
    """An integer code per row and the value of each code (None for null)."""
    encoded = pc.dictionary_encode(values, null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def _chars(table: pa.Table, column: str | None) -> np.ndarray | None:
    """Characters (code points, like Python's len) of the source text per row; 0 when null."""
    if column is None:
        return None
    values = table.column(column).combine_chunks()
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        values = pa.array([None if v is None else v.decode("utf-8", "replace") for v in values.to_pylist()], pa.string())
    elif not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = _strings(table, column)
    return pc.utf8_length(values).fill_null(0).to_numpy(zero_copy_only=False)


def _count_flags(result: TargetCounts, flags: pa.Array) -> np.ndarray:
    if pa.types.is_list(flags.type) or pa.types.is_large_list(flags.type):
        lengths = pc.list_value_length(flags).fill_null(0).to_numpy(zero_copy_only=False)
        for item in pc.value_counts(pc.list_flatten(flags).drop_null()).to_pylist():
            result.flags[str(item["values"])] += item["counts"]
    else:  # not the documented list<string>; any non-null value counts as a flag
        lengths = flags.is_valid().to_numpy(zero_copy_only=False).astype(np.int64)
    flagged = lengths > 0
    result.flagged += int(flagged.sum())
    return flagged


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
