"""Report and eval of a label task (kind `label`): sentiment, topic (multi-label), emotion, or
any label column (`--label-column`, e.g. gold labels).

Counts per file (mergeable): rows per (period, language, label), labelled rows per (period,
language), and per segment value and period the labelled and watched rows. From them: the
label distribution overall, by language and over time, the watched label's share per
period with its alarm, and the same alarm per value of each `--segment` column.

A multi-label row (a list column) counts once for each of its labels; shares are of
labelled rows, so they need not add up to 1. Eval: accuracy, macro-F1, per-label precision /
recall / F1 and a confusion matrix (single-label), or per-label and micro/macro F1 and exact
match (multi-label); per group with `--by`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.report.aggregate import Batch, as_strings, is_list_type, mentions_task
from batch.report.alerts import alerts as alerting, share_series
from batch.report.frame import Frame, ReportOptions, share
from batch.report.source import Output, ReportError

KIND = "label"
# Old job files name the task, not its kind: `tasks: {sentiment: {...}}` is a label task
# with the sentiment preset's labels (batch/tasks/, kept here so a report needs no task code).
LEGACY = {"sentiment": ("negative", "neutral", "positive")}
PROBS_SUFFIX = "_probs"
MISSING = "(missing)"
UNKNOWN_GROUP = "(unknown)"
MAX_SEGMENT_VALUES = 10_000  # distinct values of one --segment column: more is an id, not a segment


# --- which label tasks an output has -------------------------------------------------------


def describe(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """A task description (the run summary's `tasks` entry) from an old summary's job config."""
    labels = config.get("labels") or LEGACY.get(name)
    return {"name": name, "kind": KIND, "column": config.get("column") or name,
            "labels": list(labels) if labels else None, "multi": bool(config.get("multi", False))}  # fmt: skip


def infer(output: Output) -> list[dict[str, Any]]:
    """Label tasks from the schema alone: a column X with a map column X_probs beside it (a
    list X is multi-label), and an old output's `sentiment` column."""
    found = []
    for name in output.columns:
        type_ = output.column_type(name)
        probs = output.column_type(name + PROBS_SUFFIX)
        if (probs is not None and pa.types.is_map(probs)) or (name in LEGACY and pa.types.is_string(type_)):
            found.append({"name": name, "kind": KIND, "column": name, "labels": list(LEGACY.get(name, ())) or None,
                          "multi": is_list_type(type_)})  # fmt: skip
    return found


@dataclass
class LabelCounts:
    labels: Counter = field(default_factory=Counter)  # (period, language, label) -> rows; label None: unlabelled
    labelled: Counter = field(default_factory=Counter)  # (period, language) -> labelled rows
    # (segment column, value, period) -> labelled rows / rows with the watched label
    segment_labelled: Counter = field(default_factory=Counter)
    segment_watched: Counter = field(default_factory=Counter)
    skipped: int = 0  # unlabelled because the task skipped the row
    failed: int = 0  # ... because the task failed on it

    def add(self, other: "LabelCounts") -> None:
        self.labels.update(other.labels)
        self.labelled.update(other.labelled)
        self.segment_labelled.update(other.segment_labelled)
        self.segment_watched.update(other.segment_watched)
        self.skipped += other.skipped
        self.failed += other.failed


@dataclass(frozen=True)
class LabelTask:
    name: str
    column: str
    labels: tuple[str, ...] | None  # None: not configured; the labels found in the data, sorted
    multi: bool
    watch: str

    def columns(self) -> list[str]:
        return [self.column]

    def count_nothing(self) -> LabelCounts:
        return LabelCounts()

    def count(self, batch: Batch) -> LabelCounts:
        counts = LabelCounts()
        values = batch.table.column(self.column).combine_chunks()
        if pa.types.is_null(values.type):  # a file where every value is null
            values = pa.nulls(len(values), pa.list_(pa.string()) if self.multi else pa.string())
        periods, language, n = batch.periods, batch.language, batch.num_rows
        if is_list_type(values.type):
            flat = as_strings(pc.list_flatten(values))
            parents = pc.list_parent_indices(values)
            labelled = values.is_valid().to_numpy(zero_copy_only=False)
            _group(counts.labels, {"period": periods.take(parents), "language": language.take(parents), "label": flat})
            unlabelled = pa.array(~labelled)
            _group(counts.labels, {"period": periods.filter(unlabelled), "language": language.filter(unlabelled),
                                   "label": pa.nulls(int((~labelled).sum()), pa.string())})  # fmt: skip
            hit = pc.equal(flat, self.watch).fill_null(False).to_numpy(zero_copy_only=False)
            parent_rows = parents.to_numpy(zero_copy_only=False)
            watched = np.bincount(parent_rows[hit], minlength=n)[:n] > 0
        else:
            label = as_strings(values)
            labelled = label.is_valid().to_numpy(zero_copy_only=False)
            _group(counts.labels, {"period": periods, "language": language, "label": label})
            watched = pc.equal(label, self.watch).fill_null(False).to_numpy(zero_copy_only=False)
        is_labelled = pa.array(labelled)
        _group(counts.labelled, {"period": periods.filter(is_labelled), "language": language.filter(is_labelled)})
        watchable = self.labels is None or self.watch in self.labels
        for column, segment in batch.segments.items() if watchable else ():
            keys = pa.table({"value": segment.values, "period": periods.take(pa.array(segment.rows)),
                             "labelled": labelled[segment.rows].astype(np.int64),
                             "watched": (watched & labelled)[segment.rows].astype(np.int64)})  # fmt: skip
            grouped = keys.group_by(["value", "period"], use_threads=False).aggregate(
                [("labelled", "sum"), ("watched", "sum")]
            )
            for row in grouped.to_pylist():
                key = (column, row["value"], row["period"])
                counts.segment_labelled[key] += row["labelled_sum"]
                counts.segment_watched[key] += row["watched_sum"]
        skipped = ~labelled & mentions_task(batch.skip_reason, self.name)
        counts.skipped += int(skipped.sum())
        counts.failed += int((~labelled & ~skipped & mentions_task(batch.error, self.name)).sum())
        return counts

    # --- counts -> the report's section -------------------------------------------------

    def build(self, counts: LabelCounts, frame: Frame) -> dict[str, Any]:
        overall: Counter = Counter()
        by_language: dict[str | None, Counter] = defaultdict(Counter)
        by_period: dict[int | None, Counter] = defaultdict(Counter)
        for (period, language, label), n in counts.labels.items():
            overall[label] += n
            by_language[language][label] += n
            by_period[period][label] += n
        labelled_by_language: Counter = Counter()
        labelled_by_period: Counter = Counter()
        for (period, language), n in counts.labelled.items():
            labelled_by_language[language] += n
            labelled_by_period[period] += n
        seen = sorted(label for label in overall if label is not None)
        configured = list(self.labels) if self.labels else seen
        unexpected = [label for label in seen if label not in configured]
        if unexpected and self.labels:
            frame.notes.append(f"{self.name} labels outside {', '.join(configured)}: {', '.join(unexpected)} (shown after them)")
        order = [*configured, *unexpected]
        watch = self.watch if self.watch in order else None

        def block(by_label: Counter, labelled: int) -> dict[str, Any]:
            return {
                "rows": labelled + by_label.get(None, 0),
                "labelled": labelled,
                "counts": {label: by_label.get(label, 0) for label in order},
                "shares": {label: share(by_label.get(label, 0), labelled) for label in order},
            }

        section: dict[str, Any] = {
            "name": self.name,
            "kind": KIND,
            "column": self.column,
            "multi": self.multi,
            "labels": order,
            "unexpected_labels": unexpected if self.labels else [],
            "watch_label": watch,
            "overall": {
                **block(overall, sum(labelled_by_language.values())),
                "unlabelled": overall.get(None, 0),
                "skipped": counts.skipped,
                "failed": counts.failed,
            },
            "by_language": [
                {"language": language, **block(by_label, labelled_by_language[language])}
                for language, by_label in sorted(
                    by_language.items(), key=lambda item: (-sum(item[1].values()), str(item[0]))
                )
            ],
            "over_time": None,
            "alerts": None,
            "segments": self.segments(counts, frame, watch),
        }
        if frame.roles.time is not None:
            labels = frame.period_labels()
            section["over_time"] = {
                "time_column": frame.roles.time,
                "freq": frame.roles.freq,
                "timezone": "UTC",
                "rows_without_time": frame.counts.periods.get(None, 0),
                "unreadable_times": frame.counts.times_unreadable,
                "periods": [
                    {"period": label, **block(by_period.get(start, Counter()), labelled_by_period[start])}
                    for start, label in zip(frame.periods, labels)
                ],
            }
            if watch is not None:
                series = share_series(
                    [(p["period"], p["labelled"], p["counts"][watch]) for p in section["over_time"]["periods"]],
                    frame.options.alert,
                )
                section["alerts"] = {
                    "watch_label": watch,
                    "settings": frame.options.alert.to_dict(),
                    "series": [item.to_dict() for item in series],
                    "alerts": [item.to_dict() for item in alerting(series)],
                }
        return section

    def segments(self, counts: LabelCounts, frame: Frame, watch: str | None) -> list[dict[str, Any]] | None:
        """Per segment column, per value: labelled rows and the watched share overall, and
        with a time column the share per period and its alerts (values that never reach
        the minimum volume in one period cannot alert, so their series is left out)."""
        if not frame.roles.segments or watch is None:
            return None
        settings = frame.options.alert
        labels = frame.period_labels() if frame.roles.time is not None else None
        result = []
        for column in frame.roles.segments:
            values: dict[Any, dict[int | None, tuple[int, int]]] = defaultdict(dict)
            for (name, value, period), n in counts.segment_labelled.items():
                if name == column:
                    values[value][period] = (n, counts.segment_watched[(name, value, period)])
            rows = []
            for value, by_period in values.items():
                labelled = sum(n for n, _ in by_period.values())
                watched = sum(w for _, w in by_period.values())
                item = {"value": value, "labelled": labelled, "watched": watched, "share": share(watched, labelled),
                        "series": None, "alerts": []}  # fmt: skip
                if labels is not None and max((n for n, _ in by_period.values()), default=0) >= settings.min_count:
                    series = share_series(
                        [(label, *by_period.get(start, (0, 0))) for start, label in zip(frame.periods, labels)], settings
                    )
                    item["series"] = [entry.to_dict() for entry in series]
                    item["alerts"] = [entry.to_dict() for entry in alerting(series)]
                rows.append(item)
            if len(rows) > MAX_SEGMENT_VALUES:
                raise ReportError(
                    f"--segment {column}: {len(rows):,} distinct values, more than {MAX_SEGMENT_VALUES:,}; a segment "
                    "column is a category (a language, a topic), not an id or free text"
                )
            rows.sort(key=lambda item: (-item["labelled"], str(item["value"])))
            result.append({"column": column, "watch_label": watch, "min_count": settings.min_count, "values": rows})
        return result


def _group(counter: Counter, columns: dict[str, pa.Array]) -> None:
    """Add the row count per distinct key (the columns' values) to `counter`."""
    table = pa.table(columns)
    if table.num_rows == 0:
        return
    names = list(columns)
    for row in table.group_by(names, use_threads=False).aggregate([([], "count_all")]).to_pylist():
        key = tuple(row[name] for name in names)
        counter[key if len(key) > 1 else key[0]] += row["count_all"]


def plan(description: dict[str, Any], output: Output, options: ReportOptions, job: dict[str, Any]) -> LabelTask:
    column = description.get("column") or description["name"]
    if column not in output.columns:
        raise ReportError(f"{output.uri}: the run's task {description['name']!r} has no column {column!r} in the output")
    labels = description.get("labels")
    type_ = output.column_type(column)
    return LabelTask(
        name=description["name"],
        column=column,
        labels=tuple(labels) if labels else None,
        multi=bool(description.get("multi")) or is_list_type(type_),
        watch=options.watch_label,
    )


def with_labels(task: LabelTask, labels: tuple[str, ...]) -> LabelTask:
    return LabelTask(task.name, task.column, labels, task.multi, task.watch)


def alerts(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Every alert of this section, flat, for the page's header, --notify and --fail-on-alert."""
    found = []
    base = {"task": section["name"], "column": section["column"], "watch_label": section["watch_label"]}
    for item in (section.get("alerts") or {}).get("alerts") or []:
        found.append({**base, "segment": None, **item})
    for segment in section.get("segments") or []:
        for value in segment["values"]:
            for item in value["alerts"]:
                found.append({**base, "segment": {"column": segment["column"], "value": value["value"]}, **item})
    return found


# --- terminal ---------------------------------------------------------------------------------


def lines(section: dict[str, Any]) -> list[str]:
    overall = section["overall"]
    shares = ", ".join(f"{label} {value:.1%}" for label, value in overall["shares"].items() if value is not None)
    result = [f"  {section['name']}: {overall['labelled']:,} labelled" + (f" ({shares})" if shares else "")]
    if section.get("alerts") is not None or section.get("segments"):
        found = alerts(section)
        for item in found:
            where = f" [{item['segment']['column']}={item['segment']['value']}]" if item["segment"] else ""
            result.append(
                f"  ALERT {item['period']}{where}: {item['watch_label']} {item['share']:.1%} of {item['rows']:,} rows, "
                f"baseline {item['baseline']:.1%} (+{item['jump']:.1%})"
            )
        if not found:
            result.append("  no alerts")
    return result


# --- charts and page ----------------------------------------------------------------------------


def charts(section: dict[str, Any]) -> list:
    from batch.report.charts import charts_of

    name, watch = section["name"], section["watch_label"]
    made = [
        (f"{name}_overall", f"{name}: labels, overall", _overall_chart(section)),
        (f"{name}_by_language", f"{name} by language", _by_language_chart(section)),
        (f"{name}_over_time", f"{name} over time", _over_time_chart(section)),
        (f"{name}_watch_share", f"{name}: {watch} share against its trailing baseline", _watch_share_chart(section)),
    ]
    for segment in section.get("segments") or []:
        column = segment["column"]
        made.append((f"{name}_by_{column}", f"{name}: {watch} share by {column}", _segment_chart(segment)))
    return charts_of(made)


def _overall_chart(section: dict[str, Any]):
    from batch.report import charts as draw

    labels, overall = section["labels"], section["overall"]
    if not labels:
        return None
    colors = draw.label_colors(labels)
    figure = draw.Figure(figsize=(8, 0.5 + 0.45 * len(labels)))
    axes = figure.subplots()
    values = [overall["counts"][label] for label in labels]
    bars = axes.barh(labels, values, color=[colors[label] for label in labels])
    axes.invert_yaxis()
    for bar, label in zip(bars, labels):
        value_share = overall["shares"][label]
        text = f" {overall['counts'][label]:,}" + (f"  ({value_share:.1%})" if value_share is not None else "")
        axes.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=9)
    axes.set_xlabel(f"rows ({overall['labelled']:,} labelled of {overall['rows']:,})")
    axes.set_xlim(0, max(values + [1]) * 1.25)
    draw.tidy(axes)
    return figure, "Label counts overall: " + ", ".join(f"{label} {overall['counts'][label]}" for label in labels)


def _by_language_chart(section: dict[str, Any]):
    from batch.report import charts as draw

    labels = section["labels"]
    if not section["by_language"] or not labels:
        return None
    colors = draw.label_colors(labels)
    rows = [(draw.language_name(row["language"]), row) for row in section["by_language"][: draw.MAX_LANGUAGES]]
    rest = section["by_language"][draw.MAX_LANGUAGES :]
    if rest:
        merged = {"labelled": sum(row["labelled"] for row in rest),
                  "counts": {label: sum(row["counts"][label] for row in rest) for label in labels}}  # fmt: skip
        rows.append((f"other ({len(rest)} languages)", merged))
    figure = draw.Figure(figsize=(8, 0.8 + 0.35 * len(rows)))
    axes = figure.subplots()
    names = [f"{name}  (n={row['labelled']:,})" for name, row in rows]
    left = [0.0] * len(rows)
    for label in labels:
        widths = [(row["counts"][label] / row["labelled"]) if row["labelled"] else 0.0 for _, row in rows]
        axes.barh(names, widths, left=left, color=colors[label], label=label)
        left = [a + b for a, b in zip(left, widths)]
    axes.invert_yaxis()
    axes.set_xlim(0, max([1.0, *left]))  # a multi-label row counts once per label: shares may add up past 1
    axes.xaxis.set_major_formatter(draw.PercentFormatter(1.0))
    axes.set_xlabel("share of labelled rows")
    draw.legend_above(axes, ncols=min(len(labels), 6))
    draw.tidy(axes)
    return figure, f"Share of each label per language, {len(rows)} languages"


def _over_time_chart(section: dict[str, Any]):
    from batch.report import charts as draw

    over_time = section.get("over_time")
    labels = section["labels"]
    if not over_time or not over_time["periods"] or not labels:
        return None
    colors = draw.label_colors(labels)
    periods = over_time["periods"]
    x = [draw.parse_period(p["period"]) for p in periods]
    width = 0.8 if over_time["freq"] == "day" else 0.8 / 24  # in days
    figure = draw.Figure(figsize=(9, 3.8))
    axes = figure.subplots()
    if len(periods) <= draw.MAX_BARS:
        bottom = [0] * len(periods)
        for label in labels:
            heights = [p["counts"][label] for p in periods]
            axes.bar(x, heights, width=width, bottom=bottom, color=colors[label], label=label)
            bottom = [a + b for a, b in zip(bottom, heights)]
    else:  # hundreds of periods: bars turn to noise at this width; a stepped area reads better
        stacks = [[p["counts"][label] for p in periods] for label in labels]
        axes.stackplot(x, *stacks, colors=[colors[label] for label in labels], labels=labels, step="post")
    axes.set_ylabel(f"labelled rows per {over_time['freq']}")
    draw.legend_above(axes, ncols=min(len(labels), 6))
    draw.dates(axes)
    draw.tidy(axes, grid="y")
    return figure, f"Labelled rows per {over_time['freq']} by label, {periods[0]['period']} to {periods[-1]['period']}"


def _watch_share_chart(section: dict[str, Any]):
    from batch.report import charts as draw

    alert_section = section.get("alerts")
    if not alert_section or not alert_section["series"]:
        return None
    settings, series, watch = alert_section["settings"], alert_section["series"], alert_section["watch_label"]
    x = [draw.parse_period(item["period"]) for item in series]
    figure = draw.Figure(figsize=(9, 3.8))
    axes = figure.subplots()
    enough = [item["share"] if item["rows"] >= settings["min_count"] else None for item in series]
    few = [item["share"] if item["rows"] < settings["min_count"] else None for item in series]
    baseline = [item["baseline"] for item in series]
    limit = [None if b is None else min(1.0, b + settings["threshold"]) for b in baseline]
    marker = 4 if len(series) <= draw.MAX_BARS else 0
    color = draw.color_of(watch)
    axes.plot(x, draw.nan(enough), "o-", color=color, label=f"{watch} share", markersize=marker,
              linewidth=1.5 if marker else 0.8)  # fmt: skip
    axes.plot(x, draw.nan(few), "o", color=color, alpha=0.3, markersize=max(marker, 2),
              label=f"fewer than {settings['min_count']} rows (never alerts)")  # fmt: skip
    axes.plot(x, draw.nan(baseline), "--", color="#34495e", label=f"baseline (previous {settings['window']} periods)")
    axes.plot(x, draw.nan(limit), ":", color="#34495e", label=f"alert above baseline + {settings['threshold']:.0%}")
    draw.mark_alerts(axes, series, x)
    axes.set_ylim(0, 1.12)
    axes.yaxis.set_major_formatter(draw.PercentFormatter(1.0))
    axes.set_ylabel("share of labelled rows")
    draw.legend_above(axes, ncols=2, fontsize=8)
    draw.dates(axes)
    draw.tidy(axes, grid="y")
    named = [item["period"] for item in alert_section["alerts"]]
    return figure, f"{watch} share per period with baseline; alerts: " + (", ".join(named) or "none")


def _segment_chart(segment: dict[str, Any]):
    """The watched share per period of the biggest values that can alert, alerts ringed."""
    from batch.report import charts as draw

    values = [v for v in segment["values"] if v["series"]][: draw.MAX_LANGUAGES // 2]
    if not values:
        return None
    figure = draw.Figure(figsize=(9, 3.8))
    axes = figure.subplots()
    colors = iter(draw.OTHER_COLORS * 2)
    for value in values:
        series = value["series"]
        x = [draw.parse_period(item["period"]) for item in series]
        shares = [item["share"] if item["rows"] >= segment["min_count"] else None for item in series]
        axes.plot(x, draw.nan(shares), "o-", color=next(colors), markersize=3, linewidth=1.2,
                  label=f"{draw.language_name(value['value'])} (n={value['labelled']:,})")  # fmt: skip
        draw.mark_alerts(axes, series, x)
    axes.set_ylim(0, 1.12)
    axes.yaxis.set_major_formatter(draw.PercentFormatter(1.0))
    axes.set_ylabel(f"{segment['watch_label']} share (periods of {segment['min_count']}+ rows)")
    draw.legend_above(axes, ncols=min(len(values), 4), fontsize=8)
    draw.dates(axes)
    draw.tidy(axes, grid="y")
    alerted = [f"{v['value']} {a['period']}" for v in values for a in v["alerts"]]
    return figure, f"{segment['watch_label']} share by {segment['column']}; alerts: " + (", ".join(alerted) or "none")


def html(section: dict[str, Any], charts_by_id: dict[str, Any], report: dict[str, Any]) -> list[str]:
    from batch.report.page import esc, figure, language, language_column, num, pct, table

    name, labels, overall = section["name"], section["labels"], section["overall"]
    kind = "multi-label" if section["multi"] else "labels"
    lines = [f'<h2>{esc(name)} <span class="small">({kind}, column {esc(section["column"])})</span></h2>',
             "<h3>Overall</h3>"]  # fmt: skip
    lines.append(
        table(
            ["rows", "labelled", *labels, "unlabelled", "of which skipped", "of which failed"],
            [[num(overall["rows"]), num(overall["labelled"]),
              *(f"{num(overall['counts'][l])} ({pct(overall['shares'][l])})" for l in labels),
              num(overall["unlabelled"]), num(overall["skipped"]), num(overall["failed"])]],
        )  # fmt: skip
    )
    lines += figure(charts_by_id.get(f"{name}_overall"))
    lines.append(f"<h3>By language {language_column(report)}</h3>")
    lines.append(
        table(
            ["language", "rows", "labelled", *(f"{l} share" for l in labels)],
            [[language(row["language"]), num(row["rows"]), num(row["labelled"]), *(pct(row["shares"][l]) for l in labels)]
             for row in section["by_language"]],
        )  # fmt: skip
    )
    lines += figure(charts_by_id.get(f"{name}_by_language"))
    over_time = section.get("over_time")
    if not over_time:
        lines.append("<p>No time column given (<code>--time-column</code>): no timeline and no alerts.</p>")
    else:
        lines.append(
            f'<h3>Over time <span class="small">(by {esc(over_time["time_column"])}, '
            f'per {esc(over_time["freq"])}, UTC)</span></h3>'
        )
        lines += figure(charts_by_id.get(f"{name}_over_time"))
        lines += figure(charts_by_id.get(f"{name}_watch_share"))
        alert_section = section.get("alerts")
        if alert_section:
            lines.append(_series_table(alert_section["series"], alert_section["watch_label"]))
        else:
            lines.append(f"<p>No alarm: the watched label ({esc(report['watch_label'])}) is not one of these labels.</p>")
    for segment in section.get("segments") or []:
        lines.append(
            f'<h3>{esc(segment["watch_label"])} share by {esc(segment["column"])} '
            f'<span class="small">(values below {num(segment["min_count"])} labelled rows in every period never alert)'
            "</span></h3>"
        )
        lines += figure(charts_by_id.get(f"{name}_by_{segment['column']}"))
        flagged = ["alerted" if value["alerts"] else "" for value in segment["values"]]
        lines.append(
            table(
                [segment["column"], "labelled rows", segment["watch_label"], "share", "alerts"],
                [[language(v["value"]), num(v["labelled"]), num(v["watched"]), pct(v["share"]),
                  esc(", ".join(a["period"] for a in v["alerts"])) if v["series"] is not None or not over_time
                  else "(too small)"]
                 for v in segment["values"]],
                flagged,
            )  # fmt: skip
        )
    return lines


def _series_table(series: list[dict[str, Any]], watch: str) -> str:
    from batch.report.page import esc, num, pct, table

    return table(
        ["period", "labelled rows", watch, "share", "baseline", "baseline rows", "jump", "alert"],
        [[esc(i["period"]), num(i["rows"]), num(i["watched"]), pct(i["share"]), pct(i["baseline"]),
          num(i["baseline_rows"]), pct(i["jump"]), "ALERT" if i["alert"] else ""] for i in series],
        ["alerted" if item["alert"] else "" for item in series],
    )  # fmt: skip


# --- eval --------------------------------------------------------------------------------------


def score(
    predictions: Sequence[Any],
    gold: Sequence[Any],
    labels: Sequence[str] | None = None,
    groups: Sequence[str | None] | None = None,
    task: str = "sentiment",
) -> dict[str, Any]:
    """Single-label (values are strings) or multi-label (values are lists), overall and per group."""
    if len(predictions) != len(gold) or (groups is not None and len(groups) != len(gold)):
        raise ValueError("predictions, gold and groups must have one value per row")
    multi = any(isinstance(value, (list, tuple)) for value in (*gold, *predictions) if value is not None)
    scorer = _score_multi if multi else _score_single
    report = {"task": task, "kind": KIND, "multi": multi, **scorer(predictions, gold, labels)}
    if groups is not None:
        members: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(gold):
            if g is not None:
                members[UNKNOWN_GROUP if groups[i] is None else str(groups[i])].append(i)
        report["by_group"] = {
            group: _brief(scorer([predictions[i] for i in rows], [gold[i] for i in rows], labels))
            for group, rows in sorted(members.items(), key=lambda item: (-len(item[1]), item[0]))
        }
    return report


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("scored", "accuracy", "macro_f1", "micro_f1", "exact_match")
    return {key: result[key] for key in keys if key in result}


def _f1(tp: int, predicted: int, support: int) -> dict[str, float | int]:
    precision = tp / predicted if predicted else 0.0
    recall = tp / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def _classes(labels: Sequence[str] | None, seen: set) -> list[str]:
    """The labels scored: those seen in gold or predictions (a label in neither has no F1
    to speak of, so it does not drag macro-F1 down), in the configured order, then others."""
    return [label for label in labels or [] if label in seen] + sorted(seen - set(labels or []))


def _score_single(predictions: Sequence[str | None], gold: Sequence[str | None], labels: Sequence[str] | None) -> dict:
    pairs = [(g, p) for g, p in zip(gold, predictions) if g is not None]
    if not pairs:
        raise ValueError("no row has a gold label")
    seen = {g for g, _ in pairs} | {p for _, p in pairs if p is not None}
    classes = _classes(labels, seen)
    columns = classes + ([MISSING] if any(p is None for _, p in pairs) else [])
    counts = Counter((g, p if p is not None else MISSING) for g, p in pairs)
    per_class = {
        c: _f1(counts[(c, c)], sum(counts[(g, c)] for g in classes), sum(counts[(c, p)] for p in columns)) for c in classes
    }
    return {
        "rows": len(gold),
        "scored": len(pairs),
        "missing_prediction": sum(1 for _, p in pairs if p is None),
        "accuracy": sum(counts[(c, c)] for c in classes) / len(pairs),
        "macro_f1": sum(stats["f1"] for stats in per_class.values()) / len(classes),
        "per_class": per_class,
        "confusion": {"gold": classes, "predicted": columns, "matrix": [[counts[(g, p)] for p in columns] for g in classes]},
    }


def _score_multi(predictions: Sequence[Any], gold: Sequence[Any], labels: Sequence[str] | None) -> dict:
    """Each label a yes/no decision per row: per-label P/R/F1, macro-F1 (mean over labels),
    micro-F1 (over all decisions), exact match (the row's whole set right)."""
    pairs = [(_label_set(g), _label_set(p)) for g, p in zip(gold, predictions) if g is not None]
    if not pairs:
        raise ValueError("no row has a gold label")
    seen = set().union(*(g | p for g, p in pairs))
    classes = _classes(labels, seen)
    per_class = {
        c: _f1(sum(1 for g, p in pairs if c in g and c in p), sum(1 for _, p in pairs if c in p),
               sum(1 for g, _ in pairs if c in g))
        for c in classes
    }  # fmt: skip
    tp = sum(len(g & p) for g, p in pairs)
    return {
        "rows": len(gold),
        "scored": len(pairs),
        "missing_prediction": sum(1 for g, p in zip(gold, predictions) if g is not None and p is None),
        "exact_match": sum(1 for g, p in pairs if g == p) / len(pairs),
        "macro_f1": sum(stats["f1"] for stats in per_class.values()) / len(classes) if classes else 0.0,
        "micro_f1": _f1(tp, sum(len(p) for _, p in pairs), sum(len(g) for g, _ in pairs))["f1"],
        "per_class": per_class,
    }


def _label_set(value: Any) -> set[str]:
    """A row's labels as a set: a list column's values, or one gold label kept in a string
    column (the sample corpus's `gold_topic`), which is one label, not its characters."""
    if value is None:
        return set()
    return {value} if isinstance(value, str) else set(value)


def format_score(report: dict[str, Any]) -> str:
    from batch.evaluate import table

    per_class = table(
        ["label", "precision", "recall", "f1", "support"],
        [[c, s["precision"], s["recall"], s["f1"], s["support"]] for c, s in report["per_class"].items()],
    )
    head = (
        f"rows {report['rows']}, scored {report['scored']} (with a gold label), "
        f"missing prediction {report['missing_prediction']}\n"
    )
    if report.get("multi"):
        head += f"exact match {report['exact_match']:.4f}  macro-F1 {report['macro_f1']:.4f}  micro-F1 {report['micro_f1']:.4f}"
        parts = [head, per_class]
    else:
        head += f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}"
        confusion = report["confusion"]
        matrix = table(
            ["gold \\ predicted", *confusion["predicted"]],
            [[g, *row] for g, row in zip(confusion["gold"], confusion["matrix"])],
        )
        parts = [head, per_class, matrix]
    if "by_group" in report:
        metric = "exact_match" if report.get("multi") else "accuracy"
        parts.append(
            table(
                [report.get("group_by") or "group", "scored", metric, "macro-F1"],
                [[g, s["scored"], s[metric], s["macro_f1"]] for g, s in report["by_group"].items()],
            )
        )
    return "\n\n".join(parts)


def evaluate(read, uri: str, task: dict[str, Any], *, prediction: str | None, gold: str | None,
             by: str | None, tokenize: str | None = None) -> dict[str, Any]:  # fmt: skip
    """`python -m batch eval --task <label task>`: `read(uri, columns, optional)` gives the
    columns of the output; the prediction column defaults to the task's own."""
    name = task["name"]
    prediction = prediction or (task.get("column") if name != KIND else None)
    if not prediction:
        raise ValueError(f"--task {name} needs --prediction COLUMN (the label column to score)")
    if not gold:
        raise ValueError(f"--task {name} needs --gold COLUMN (e.g. gold_sentiment)")
    data = read(uri, [prediction, gold] + ([by] if by else []))
    groups = [None if g is None else str(g) for g in data.column(by).to_pylist()] if by else None
    labels = task.get("labels")
    report = score(data.column(prediction).to_pylist(), data.column(gold).to_pylist(), labels, groups, task=name)
    return {**report, "prediction": prediction, "gold": gold, "group_by": by}
