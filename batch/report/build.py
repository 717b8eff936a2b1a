"""From an output URI to the report dictionary: resolve which columns to read and which
tasks the output holds, count every file, and shape the counts into what `report.json`
holds (and the page and charts show).

The frame names no task: the tasks come from the run summary (or the schema), and each is
counted and shaped by its kind's section (batch/report/sections/). An output with no known
task columns still gets its run and row-outcome sections.

The dictionary is plain JSON data on purpose: the HTML page and the charts are drawn from it
alone, so what a person sees and what a machine reads cannot disagree.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from batch.config import StorageConfig
from batch.io.write import SUCCESS, SUMMARY
from batch.report.aggregate import (
    FREQS,
    Counts,
    Roles,
    count_table,
    is_list_type,
    is_time_type,
    merge,
    period_label,
    period_step_us,
)
from batch.report.frame import Frame, ReportOptions
from batch.report.sections import KINDS, discover, label
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

__all__ = ["ReportOptions", "build_report"]

REPORT_VERSION = 2
DEFAULT_LANGUAGE_COLUMN = "source_lang"
MAX_PERIODS = 50_000  # a timeline longer than this is almost surely bad timestamps, not data


def build_report(uri: str, options: ReportOptions, storage: StorageConfig = StorageConfig()) -> dict[str, Any]:
    """The whole report as JSON-ready data. Raises ReportError naming the URI or option."""
    output = open_output(uri, storage)
    summary, summary_note = read_side_file(uri, storage, SUMMARY)
    job = summary.get("job") if isinstance(summary, dict) and isinstance(summary.get("job"), dict) else {}
    notes = [summary_note] if summary_note else []
    roles = resolve_roles(output, options)
    tasks = resolve_tasks(output, options, summary, job, notes)
    counts = count_output(output, roles, tasks)

    published = side_file_exists(uri, storage, SUCCESS)
    if not published:
        notes.append(f"{uri}: no {SUCCESS}: this output is not (or not yet) published; figures may be partial")
    frame = Frame(roles=roles, options=options, counts=counts, periods=timeline(counts, roles, notes), notes=notes)
    sections = {task.name: task.build(counts.tasks.get(task.name) or task.count_nothing(), frame) for task in tasks}
    if options.watch_label_given and roles.time is not None and not any(s.get("watch_label") for s in sections.values()):
        notes.append(f"--watch-label {options.watch_label}: no label task has this label, so nothing is watched")
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "output_uri": uri,
        "published": published,
        "files": len(output.files),
        "rows": counts.rows,
        "columns": {"language": roles.language, "time": roles.time, "segments": list(roles.segments)},
        "watch_label": options.watch_label,
        "run": run_section(summary, counts, notes),
        "outcomes": outcomes_section(counts),
        "tasks": sections,
        "alerts": [item for s in sections.values() for item in KINDS[s["kind"]].alerts(s)],
        "notes": notes,
    }
    # report_version 1 had each task's section at the top level under its name; kept there
    # too (where the name is not one of the frame's keys) for readers of that version
    for name, section in sections.items():
        report.setdefault(name, section)
    return report


# --- which columns and which tasks ----------------------------------------------------------


def resolve_roles(output: Output, options: ReportOptions) -> Roles:
    """Check every named frame column against the output, once, before reading any rows."""
    columns = output.columns
    listing = ", ".join(columns)

    def must_exist(option: str, name: str) -> str:
        if name not in columns:
            raise ReportError(f"{option} {name}: no such column in {output.uri}; columns: {listing}")
        return name

    if options.freq not in FREQS:
        raise ReportError(f"--freq {options.freq}: expected one of {', '.join(FREQS)}")
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
    for name in options.segments:
        must_exist("--segment", name)
        type_ = output.column_type(name)
        value_type = type_.value_type if is_list_type(type_) else type_
        if pa.types.is_dictionary(value_type):
            value_type = value_type.value_type
        if pa.types.is_nested(value_type) or pa.types.is_binary(value_type) or pa.types.is_large_binary(value_type):
            raise ReportError(
                f"--segment {name}: column of type {type_} in {output.uri}; expected strings (or numbers), "
                "or a list of them (a row then counts in each of its values)"
            )
    return Roles(
        language=language,
        time=time,
        freq=options.freq,
        segments=tuple(dict.fromkeys(options.segments)),
        skip_reason=SKIP_REASON if SKIP_REASON in columns else None,
        error=ERROR if ERROR in columns else None,
    )


def resolve_tasks(output: Output, options: ReportOptions, summary: Any, job: dict, notes: list[str]) -> list:
    """The output's tasks, each planned by its kind's section. `--label-column` replaces the
    label tasks by the columns it names (a task's own description when one has that column)."""
    descriptions, origin = discover(summary, output)
    chosen: list[dict] = []  # named on the command line: a problem with one is an error, not a note
    if options.label_columns:
        by_column = {d.get("column") or d["name"]: d for d in descriptions if d.get("kind") == label.KIND}
        others = {d["name"] for d in descriptions if d.get("kind") != label.KIND}
        for column in dict.fromkeys(options.label_columns):
            if column not in output.columns:
                raise ReportError(
                    f"--label-column {column}: no such column in {output.uri}; columns: {', '.join(output.columns)}"
                )
            name = column if column not in others else f"{column} (labels)"  # task names key the counts
            chosen.append(by_column.get(column) or {"name": name, "kind": label.KIND, "column": column})
        descriptions = [d for d in descriptions if d.get("kind") != label.KIND] + chosen
    tasks = []
    for description in descriptions:
        kind = KINDS.get(description.get("kind"))
        if kind is None:
            notes.append(f"task {description['name']}: kind {description.get('kind')!r} has no report section; "
                         f"only its row outcomes are shown")  # fmt: skip
            continue
        try:
            tasks.append(kind.plan(description, output, options, job))
        except ReportError as exc:
            if any(description is item for item in chosen):
                raise
            notes.append(f"{exc}; left out of the report")
    if not tasks:
        notes.append(f"{output.uri}: no task columns found ({origin}): only the run and row outcomes are reported")
    label_tasks = [task for task in tasks if isinstance(task, label.LabelTask)]
    if options.labels is not None:
        if len(label_tasks) != 1:
            names = ", ".join(task.name for task in label_tasks) or "none"
            raise ReportError(f"--labels: applies to one label task, and this report has {len(label_tasks)} ({names}); "
                              "choose one with --label-column")  # fmt: skip
        tasks = [label.with_labels(task, options.labels) if task is label_tasks[0] else task for task in tasks]
        label_tasks = [task for task in tasks if isinstance(task, label.LabelTask)]
    if options.watch_label_given:
        known = [task for task in label_tasks if task.labels is not None]
        if known and len(known) == len(label_tasks) and not any(options.watch_label in task.labels for task in known):
            listing = "; ".join(f"{task.name}: " * (len(known) > 1) + ", ".join(task.labels) for task in known)
            raise ReportError(f"--watch-label {options.watch_label}: not one of the labels {listing}")
    return tasks


# --- counting ---------------------------------------------------------------------------


def count_output(output: Output, roles: Roles, tasks: list) -> Counts:
    """Every file folded into counts, a few files at a time; rows are never all in memory."""
    columns = list(dict.fromkeys(roles.columns() + [name for task in tasks for name in task.columns()]))

    def count_file(file) -> Counts:
        return merge(count_table(table, roles, tasks) for table in iter_batches(output, file, columns))

    with ThreadPoolExecutor(max_workers=min(IO_THREADS, len(output.files))) as pool:
        return merge(pool.map(count_file, output.files))


def timeline(counts: Counts, roles: Roles, notes: list[str]) -> list[int]:
    """Every period from the first to the last (empty ones included: the alarm's window
    counts periods), the same for every task and segment."""
    if roles.time is None:
        return []
    starts = sorted(period for period in counts.periods if period is not None)
    step = period_step_us(roles.freq)
    if starts and (span := (starts[-1] - starts[0]) // step + 1) > MAX_PERIODS:
        first, last = period_label(starts[0], roles.freq), period_label(starts[-1], roles.freq)
        raise ReportError(
            f"--time-column {roles.time}: values span {first} .. {last}, {span} {roles.freq} periods, more than "
            f"{MAX_PERIODS}; check the column for bad timestamps, or use --freq day"
        )
    without_time = counts.periods.get(None, 0)
    if without_time:
        notes.append(
            f"{without_time} rows have no usable {roles.time} ({counts.times_unreadable} unreadable); "
            "they count overall and by language but not over time"
        )
    return list(range(starts[0], starts[-1] + step, step)) if starts else []


# --- the frame's sections -------------------------------------------------------------------


def outcomes_section(counts: Counts) -> dict[str, Any]:
    return {
        "failed_rows": counts.failed_rows,
        "failed_by_task": dict(counts.failed_by_task.most_common()),
        "skipped": dict(counts.skip_reasons.most_common()),
        "error_examples": counts.error_examples,
        "rows_without_time": counts.periods.get(None, 0) if counts.periods else None,
        "unreadable_times": counts.times_unreadable,
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
    configured = job.get("tasks") if isinstance(job.get("tasks"), dict) else {}
    section["job_name"] = job.get("name")
    described = summary.get("tasks") if isinstance(summary.get("tasks"), list) else None
    if described is not None:
        section["tasks"] = [f"{item.get('name')} ({item.get('kind')})" for item in described if isinstance(item, dict)]
    else:
        section["tasks"] = sorted(name for name, cfg in configured.items() if cfg)
    section["unreadable_inputs"] = summary.get("unreadable_inputs") or []
    section["models"] = sorted({engine.get("model") for engine in summary.get("engines") or [] if engine.get("model")})
    if isinstance(summary.get("rows_out"), int) and summary["rows_out"] != counts.rows:
        notes.append(f"the run summary says {summary['rows_out']} rows out, the data files hold {counts.rows}")
    return section
