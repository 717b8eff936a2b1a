"""From an output URI to the report dictionary: resolve which columns to read, count every
file, and shape the counts into what `report.json` holds (and the page and charts show).

The dictionary is plain JSON data on purpose: the HTML page and the charts are drawn from it
alone, so what a person sees and what a machine reads cannot disagree.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from batch.config import StorageConfig
from batch.io.write import SUCCESS, SUMMARY
from batch.report.aggregate import (
    FREQS,
    RATIO_BINS,
    RATIO_LOG2_MAX,
    RATIO_LOG2_MIN,
    Counts,
    RatioHistogram,
    Roles,
    TargetCounts,
    count_table,
    flags_column,
    is_time_type,
    merge,
    period_label,
    period_step_us,
    translation_column,
    translation_targets,
)
from batch.report.alerts import AlertSettings, alerts, negative_share_series
from batch.report.source import (
    IO_THREADS,
    Output,
    ReportError,
    iter_batches,
    open_output,
    read_side_file,
    side_file_exists,
)
from batch.schema import ERROR, SKIP_REASON
from batch.tasks.sentiment import DEFAULT_LABELS

REPORT_VERSION = 1
SENTIMENT_COLUMN = "sentiment"
DEFAULT_LANGUAGE_COLUMN = "source_lang"
DEFAULT_TEXT_COLUMN = "text"
MAX_PERIODS = 50_000  # a timeline longer than this is almost surely bad timestamps, not data
HISTOGRAM_MERGE = 5  # report.json carries the ratio histogram at 400/5 = 80 bins
RATIO_NORMAL = (0.5, 2.0)  # length ratios outside this are counted as suspicious


@dataclass(frozen=True)
class ReportOptions:
    """What the command line chose. None means: take it from the output (or its run summary)."""

    time_column: str | None = None
    freq: str = "day"
    language_column: str | None = None
    labels: tuple[str, ...] | None = None
    negative_label: str = "negative"
    alert: AlertSettings = field(default_factory=AlertSettings)
    text_column: str | None = None


def build_report(uri: str, options: ReportOptions, storage: StorageConfig = StorageConfig()) -> dict[str, Any]:
    """The whole report as JSON-ready data. Raises ReportError naming the URI or option."""
    output = open_output(uri, storage)
    summary, summary_note = read_side_file(uri, storage, SUMMARY)
    job = summary.get("job") if isinstance(summary, dict) and isinstance(summary.get("job"), dict) else {}
    roles = resolve_roles(output, options, job)
    counts = count_output(output, roles)

    notes = [summary_note] if summary_note else []
    published = side_file_exists(uri, storage, SUCCESS)
    if not published:
        notes.append(f"{uri}: no {SUCCESS}: this output is not (or not yet) published; figures may be partial")
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "output_uri": uri,
        "published": published,
        "files": len(output.files),
        "rows": counts.rows,
        "columns": {"language": roles.language, "time": roles.time, "text": roles.text},
        "run": run_section(summary, counts, notes),
        "outcomes": outcomes_section(counts),
        "sentiment": None,
        "translation": None,
        "notes": notes,
    }
    if roles.sentiment is not None:
        labels = resolve_labels(options, job)
        report["sentiment"] = sentiment_section(counts, roles, labels, options, notes)
    if roles.targets:
        report["translation"] = translation_section(counts, roles)
    return report


# --- which columns ----------------------------------------------------------------------


def resolve_roles(output: Output, options: ReportOptions, job: dict[str, Any]) -> Roles:
    """Check every named column against the output, once, before reading any rows."""
    columns = output.columns
    listing = ", ".join(columns)

    def must_exist(option: str, name: str) -> str:
        if name not in columns:
            raise ReportError(f"{option} {name}: no such column in {output.uri}; columns: {listing}")
        return name

    if options.freq not in FREQS:
        raise ReportError(f"--freq {options.freq}: expected one of {', '.join(FREQS)}")
    sentiment = SENTIMENT_COLUMN if SENTIMENT_COLUMN in columns else None
    targets = translation_targets(columns)
    if sentiment is None and not targets:
        raise ReportError(
            f"{output.uri}: neither a {SENTIMENT_COLUMN!r} column nor translation_<lang> columns, "
            f"so there is nothing to report; columns: {listing}"
        )
    time = None
    if options.time_column is not None:
        time = must_exist("--time-column", options.time_column)
        type_ = output.column_type(time)
        if not is_time_type(type_):
            raise ReportError(
                f"--time-column {time}: column of type {type_} in {output.uri}; "
                "expected a timestamp, a date or ISO-8601 strings"
            )
    if options.language_column is not None:
        language = must_exist("--lang-column", options.language_column)
    else:
        language = DEFAULT_LANGUAGE_COLUMN if DEFAULT_LANGUAGE_COLUMN in columns else None
    if options.text_column is not None:
        text = must_exist("--text-column", options.text_column)
    else:
        configured = (job.get("input") or {}).get("text_column") if isinstance(job.get("input"), dict) else None
        text = next((name for name in (configured, DEFAULT_TEXT_COLUMN) if name and name in columns), None)
    return Roles(
        sentiment=sentiment,
        language=language,
        time=time,
        freq=options.freq,
        text=text if targets else None,
        targets=targets,
        flagged_targets=tuple(t for t in targets if flags_column(t) in columns),
        skip_reason=SKIP_REASON if SKIP_REASON in columns else None,
        error=ERROR if ERROR in columns else None,
    )


def resolve_labels(options: ReportOptions, job: dict[str, Any]) -> tuple[str, ...]:
    """--labels, else the labels the run was configured with, else the task's defaults."""
    labels = options.labels
    if labels is None:
        configured = ((job.get("tasks") or {}).get("sentiment") or {}).get("labels")
        labels = tuple(configured) if configured else DEFAULT_LABELS
    if options.negative_label not in labels:
        raise ReportError(f"--negative-label {options.negative_label}: not one of the labels {', '.join(labels)}")
    return tuple(labels)


# --- counting ---------------------------------------------------------------------------


def count_output(output: Output, roles: Roles) -> Counts:
    """Every file folded into counts, a few files at a time; rows are never all in memory."""
    columns = roles.columns()

    def count_file(file) -> Counts:
        return merge(count_table(table, roles) for table in iter_batches(output, file, columns))

    with ThreadPoolExecutor(max_workers=min(IO_THREADS, len(output.files))) as pool:
        return merge(pool.map(count_file, output.files))


# --- sections ---------------------------------------------------------------------------


def share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def label_block(by_label: Counter, labels: list[str]) -> dict[str, Any]:
    """rows, labelled rows, and per-label counts and shares (shares of labelled rows)."""
    labelled = sum(n for label, n in by_label.items() if label is not None)
    return {
        "rows": sum(by_label.values()),
        "labelled": labelled,
        "counts": {label: by_label.get(label, 0) for label in labels},
        "shares": {label: share(by_label.get(label, 0), labelled) for label in labels},
    }


def sentiment_section(
    counts: Counts, roles: Roles, labels: tuple[str, ...], options: ReportOptions, notes: list[str]
) -> dict[str, Any]:
    overall: Counter = Counter()
    by_language: dict[str | None, Counter] = defaultdict(Counter)
    by_period: dict[int | None, Counter] = defaultdict(Counter)
    for (period, language, label), n in counts.sentiment.items():
        overall[label] += n
        by_language[language][label] += n
        by_period[period][label] += n
    unexpected = sorted(label for label in overall if label is not None and label not in labels)
    if unexpected:
        notes.append(f"sentiment labels outside {', '.join(labels)}: {', '.join(unexpected)} (shown after them)")
    order = [*labels, *unexpected]
    section: dict[str, Any] = {
        "labels": order,
        "unexpected_labels": unexpected,
        "negative_label": options.negative_label,
        "overall": {
            **label_block(overall, order),
            "unlabelled": overall.get(None, 0),
            "skipped": counts.sentiment_skipped,
            "failed": counts.sentiment_failed,
        },
        "by_language": [
            {"language": language, **label_block(by_label, order)}
            for language, by_label in sorted(by_language.items(), key=lambda item: (-sum(item[1].values()), str(item[0])))
        ],
        "over_time": None,
        "alerts": None,
    }
    if roles.time is not None:
        section["over_time"], section["alerts"] = timeline(counts, by_period, roles, order, options, notes)
    return section


def timeline(
    counts: Counts,
    by_period: dict[int | None, Counter],
    roles: Roles,
    labels: list[str],
    options: ReportOptions,
    notes: list[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every period from the first to the last (empty ones included: the alarm's window
    counts periods), with label counts, and the alert series over them."""
    starts = sorted(period for period in by_period if period is not None)
    step = period_step_us(roles.freq)
    if starts and (span := (starts[-1] - starts[0]) // step + 1) > MAX_PERIODS:
        first, last = period_label(starts[0], roles.freq), period_label(starts[-1], roles.freq)
        raise ReportError(
            f"--time-column {roles.time}: values span {first} .. {last}, {span} {roles.freq} periods, more than "
            f"{MAX_PERIODS}; check the column for bad timestamps, or use --freq day"
        )
    periods = []
    if starts:
        for start in range(starts[0], starts[-1] + step, step):
            block = label_block(by_period.get(start, Counter()), labels)
            periods.append({"period": period_label(start, roles.freq), **block})
    without_time = sum(by_period.get(None, Counter()).values())
    if without_time:
        notes.append(
            f"{without_time} rows have no usable {roles.time} ({counts.times_unreadable} unreadable); "
            "they count overall and by language but not over time"
        )
    negative = options.negative_label
    series = negative_share_series(
        [(p["period"], p["labelled"], p["counts"][negative]) for p in periods], options.alert
    )
    over_time = {
        "time_column": roles.time,
        "freq": roles.freq,
        "timezone": "UTC",
        "rows_without_time": without_time,
        "unreadable_times": counts.times_unreadable,
        "periods": periods,
    }
    alert_section = {
        "negative_label": negative,
        "settings": options.alert.to_dict(),
        "series": [item.to_dict() for item in series],
        "alerts": [item.to_dict() for item in alerts(series)],
    }
    return over_time, alert_section


def translation_section(counts: Counts, roles: Roles) -> dict[str, Any]:
    return {
        "source_text_column": roles.text,
        "targets": [target_block(counts, roles, target) for target in roles.targets],
        "by_source_language": source_language_rows(counts),
    }


def target_block(counts: Counts, roles: Roles, target: str) -> dict[str, Any]:
    """One target language: outcomes, flags, and length ratios (overall and per source language)."""
    result = counts.targets.get(target, TargetCounts())
    by_source = sorted(result.ratios.items(), key=lambda item: (-item[1].count, str(item[0])))
    histogram = result.all_ratios()
    return {
        "language": target,
        "column": translation_column(target),
        "rows": counts.rows,
        "translated": result.translated,
        "skipped": result.skipped,
        "failed": result.failed,
        "missing": counts.rows - result.translated - result.skipped - result.failed,
        "flagged": result.flagged if target in roles.flagged_targets else None,
        "flags": dict(result.flags.most_common()),
        "length_ratio": ratio_summary(histogram) if roles.text else None,
        "length_ratio_by_source_language": [
            {"language": language, **ratio_summary(h, brief=True)} for language, h in by_source
        ],
        "length_ratio_histogram": ratio_histogram(histogram) if roles.text else None,
    }


def source_language_rows(counts: Counts) -> list[dict[str, Any]]:
    """Rows, and rows whose translation was skipped, failed or flagged, per source language."""
    languages = {language for language, _ in counts.languages}
    ordered = sorted(languages, key=lambda language: (-counts.languages[(language, "rows")], str(language)))
    whats = ("rows", "skipped", "failed", "flagged")
    return [{"language": language, **{what: counts.languages[(language, what)] for what in whats}} for language in ordered]


def ratio_summary(histogram: RatioHistogram, brief: bool = False) -> dict[str, Any]:
    """Quantiles of output chars / source chars (to within ~2%: see aggregate.RatioHistogram)."""
    def q(value: float) -> float | None:
        result = histogram.quantile(value)
        return None if result is None else round(result, 3)

    if brief:
        return {"count": histogram.count, "p05": q(0.05), "median": q(0.5), "p95": q(0.95)}
    empty = histogram.count == 0
    outside = histogram.share_outside(*RATIO_NORMAL)
    return {
        "count": histogram.count,
        "mean": None if empty else round(histogram.total / histogram.count, 3),
        "min": None if empty else round(histogram.low, 3),
        "p05": q(0.05),
        "p25": q(0.25),
        "median": q(0.5),
        "p75": q(0.75),
        "p95": q(0.95),
        "max": None if empty else round(histogram.high, 3),
        "outside": {
            "low": RATIO_NORMAL[0],
            "high": RATIO_NORMAL[1],
            "share": None if outside is None else round(outside, 4),
        },
    }


def ratio_histogram(histogram: RatioHistogram) -> dict[str, Any]:
    """The histogram at coarser bins, for charts and for machines that want the shape."""
    merged = histogram.bins.reshape(RATIO_BINS // HISTOGRAM_MERGE, HISTOGRAM_MERGE).sum(axis=1)
    width = (RATIO_LOG2_MAX - RATIO_LOG2_MIN) / len(merged)
    edges = [round(2 ** (RATIO_LOG2_MIN + i * width), 5) for i in range(len(merged) + 1)]
    return {"edges": edges, "counts": [int(n) for n in merged], "scale": "log2"}


def outcomes_section(counts: Counts) -> dict[str, Any]:
    return {
        "failed_rows": counts.failed_rows,
        "failed_by_task": dict(counts.failed_by_task.most_common()),
        "skipped": dict(counts.skip_reasons.most_common()),
        "error_examples": counts.error_examples,
    }


SUMMARY_FIELDS = (
    "run_id", "input_files", "input_files_resumed", "rows_in", "rows_out", "rows_annotated", "rows_failed",
    "skipped", "wall_seconds", "rows_per_second",
)  # fmt: skip


def run_section(summary: Any, counts: Counts, notes: list[str]) -> dict[str, Any] | None:
    """The run summary's figures (rows in/annotated/skipped/failed, wall time), when there is one.
    `status` is left out: the job writes the summary before it marks itself published."""
    if not isinstance(summary, dict):
        return None
    section = {name: summary.get(name) for name in SUMMARY_FIELDS if name in summary}
    job = summary.get("job") if isinstance(summary.get("job"), dict) else {}
    section["job_name"] = job.get("name")
    section["tasks"] = sorted(name for name, cfg in (job.get("tasks") or {}).items() if cfg)
    section["unreadable_inputs"] = summary.get("unreadable_inputs") or []
    section["models"] = sorted({engine.get("model") for engine in summary.get("engines") or [] if engine.get("model")})
    if isinstance(summary.get("rows_out"), int) and summary["rows_out"] != counts.rows:
        notes.append(f"the run summary says {summary['rows_out']} rows out, the data files hold {counts.rows}")
    return section
