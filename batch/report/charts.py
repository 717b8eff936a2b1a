"""Charts of the report dictionary as PNG bytes, drawn with matplotlib's Agg renderer.

Figures are built with `matplotlib.figure.Figure` directly, never through pyplot: no global
figure state, no GUI backend chosen behind anyone's back, nothing left open between charts.
Each chart reads only the report dictionary, the same data report.json holds.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import Any, Callable

from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

LABEL_COLORS = {"negative": "#c0392b", "neutral": "#95a5a6", "positive": "#27ae60"}
OTHER_COLORS = ["#2980b9", "#8e44ad", "#d35400", "#16a085", "#f1c40f", "#34495e", "#e84393", "#7f8c8d"]
OUTCOME_COLORS = {"translated": "#27ae60", "skipped": "#f1c40f", "failed": "#c0392b", "missing": "#95a5a6"}
MAX_LANGUAGES = 15  # languages charted one by one; the rest share a bar
MAX_BARS = 90  # periods drawn as bars; longer timelines are drawn as areas and lines
DPI = 110


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    alt: str
    png: bytes


def render_charts(report: dict[str, Any]) -> list[Chart]:
    """Every chart the report's data supports, in page order."""
    makers: list[tuple[str, str, Callable[[dict[str, Any]], tuple[Figure, str] | None]]] = [
        ("sentiment_overall", "Sentiment labels, overall", sentiment_overall),
        ("sentiment_by_language", "Sentiment by language", sentiment_by_language),
        ("sentiment_over_time", "Sentiment over time", sentiment_over_time),
        ("negative_share", "Negative share against its trailing baseline", negative_share),
        ("translation_outcomes", "Translation outcomes per target language", translation_outcomes),
        ("translation_by_language", "Rows by source language", translation_by_language),
        ("length_ratio", "Length ratio (output chars / source chars)", length_ratio),
    ]
    charts = []
    for chart_id, title, make in makers:
        made = make(report)
        if made is not None:
            figure, alt = made
            charts.append(Chart(chart_id, title, alt, to_png(figure)))
    return charts


def to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def label_colors(labels: list[str]) -> dict[str, str]:
    """Conventional colours for the usual labels, distinct ones for any others."""
    others = iter(OTHER_COLORS * (len(labels) // len(OTHER_COLORS) + 1))
    return {label: LABEL_COLORS.get(label.lower()) or next(others) for label in labels}


def language_name(language: str | None) -> str:
    return "(none)" if language is None else language


def parse_period(period: str) -> dt.datetime:
    return dt.datetime.fromisoformat(period.replace("Z", "+00:00"))


# --- sentiment ---------------------------------------------------------------------------


def sentiment_overall(report: dict[str, Any]) -> tuple[Figure, str] | None:
    section = report.get("sentiment")
    if not section:
        return None
    labels, overall = section["labels"], section["overall"]
    colors = label_colors(labels)
    figure = Figure(figsize=(8, 0.5 + 0.45 * len(labels)))
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
    _tidy(axes)
    alt = ", ".join(f"{label} {overall['counts'][label]}" for label in labels)
    return figure, f"Label counts overall: {alt}"


def sentiment_by_language(report: dict[str, Any]) -> tuple[Figure, str] | None:
    section = report.get("sentiment")
    if not section or not section["by_language"]:
        return None
    labels = section["labels"]
    colors = label_colors(labels)
    rows = _top_languages(section["by_language"], labels)
    figure = Figure(figsize=(8, 0.8 + 0.35 * len(rows)))
    axes = figure.subplots()
    names = [f"{name}  (n={row['labelled']:,})" for name, row in rows]
    left = [0.0] * len(rows)
    for label in labels:
        widths = [(row["counts"][label] / row["labelled"]) if row["labelled"] else 0.0 for _, row in rows]
        axes.barh(names, widths, left=left, color=colors[label], label=label)
        left = [a + b for a, b in zip(left, widths)]
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_xlabel("share of labelled rows")
    axes.legend(ncols=len(labels), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=9)
    _tidy(axes)
    return figure, f"Share of each label per language, {len(rows)} languages"


def _top_languages(by_language: list[dict[str, Any]], labels: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The biggest languages by name, the rest summed into one bar."""
    rows = [(language_name(row["language"]), row) for row in by_language[:MAX_LANGUAGES]]
    rest = by_language[MAX_LANGUAGES:]
    if rest:
        merged = {
            "labelled": sum(row["labelled"] for row in rest),
            "counts": {label: sum(row["counts"][label] for row in rest) for label in labels},
        }
        rows.append((f"other ({len(rest)} languages)", merged))
    return rows


def sentiment_over_time(report: dict[str, Any]) -> tuple[Figure, str] | None:
    section = report.get("sentiment")
    over_time = section and section.get("over_time")
    if not over_time or not over_time["periods"]:
        return None
    labels = section["labels"]
    colors = label_colors(labels)
    periods = over_time["periods"]
    x = [parse_period(p["period"]) for p in periods]
    width = 0.8 if over_time["freq"] == "day" else 0.8 / 24  # in days
    figure = Figure(figsize=(9, 3.8))
    axes = figure.subplots()
    if len(periods) <= MAX_BARS:
        bottom = [0] * len(periods)
        for label in labels:
            heights = [p["counts"][label] for p in periods]
            axes.bar(x, heights, width=width, bottom=bottom, color=colors[label], label=label)
            bottom = [a + b for a, b in zip(bottom, heights)]
    else:  # hundreds of periods: bars turn to noise at this width; a stepped area reads better
        stacks = [[p["counts"][label] for p in periods] for label in labels]
        axes.stackplot(x, *stacks, colors=[colors[label] for label in labels], labels=labels, step="post")
    axes.set_ylabel(f"labelled rows per {over_time['freq']}")
    axes.legend(ncols=len(labels), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=9)
    _dates(axes)
    _tidy(axes, grid="y")
    return figure, f"Labelled rows per {over_time['freq']} by label, {periods[0]['period']} to {periods[-1]['period']}"


def negative_share(report: dict[str, Any]) -> tuple[Figure, str] | None:
    section = report.get("sentiment")
    alert_section = section and section.get("alerts")
    if not alert_section or not alert_section["series"]:
        return None
    settings = alert_section["settings"]
    series = alert_section["series"]
    x = [parse_period(item["period"]) for item in series]
    figure = Figure(figsize=(9, 3.8))
    axes = figure.subplots()
    enough = [item["share"] if item["rows"] >= settings["min_count"] else None for item in series]
    few = [item["share"] if item["rows"] < settings["min_count"] else None for item in series]
    baseline = [item["baseline"] for item in series]
    limit = [None if b is None else min(1.0, b + settings["threshold"]) for b in baseline]
    marker = 4 if len(series) <= MAX_BARS else 0
    axes.plot(x, _nan(enough), "o-", color=LABEL_COLORS["negative"], label=f"{alert_section['negative_label']} share",
              markersize=marker, linewidth=1.5 if marker else 0.8)  # fmt: skip
    axes.plot(x, _nan(few), "o", color=LABEL_COLORS["negative"], alpha=0.3, markersize=max(marker, 2),
              label=f"fewer than {settings['min_count']} rows (never alerts)")  # fmt: skip
    axes.plot(x, _nan(baseline), "--", color="#34495e", label=f"baseline (previous {settings['window']} periods)")
    axes.plot(x, _nan(limit), ":", color="#34495e", label=f"alert above baseline + {settings['threshold']:.0%}")
    for item, when in zip(series, x):
        if item["alert"]:
            axes.plot([when], [item["share"]], "o", markersize=14, markerfacecolor="none",
                      markeredgecolor="#e67e22", markeredgewidth=2.5)  # fmt: skip
            axes.annotate(f"ALERT {item['period']}", (when, item["share"]), textcoords="offset points", xytext=(0, 12),
                          ha="center", fontsize=9, color="#e67e22", fontweight="bold")  # fmt: skip
    axes.set_ylim(0, 1.12)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_ylabel("share of labelled rows")
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False, fontsize=8)
    _dates(axes)
    _tidy(axes, grid="y")
    named = [item["period"] for item in alert_section["alerts"]]
    return figure, "Negative share per period with baseline; alerts: " + (", ".join(named) or "none")


# --- translation -------------------------------------------------------------------------


def translation_outcomes(report: dict[str, Any]) -> tuple[Figure, str] | None:
    section = report.get("translation")
    if not section or not section["targets"]:
        return None
    targets = section["targets"]
    figure = Figure(figsize=(8, 0.9 + 0.45 * len(targets)))
    axes = figure.subplots()
    names = [target["column"] for target in targets]
    left = [0] * len(targets)
    for outcome, color in OUTCOME_COLORS.items():
        widths = [target[outcome] for target in targets]
        axes.barh(names, widths, left=left, color=color, label=outcome)
        left = [a + b for a, b in zip(left, widths)]
    for name, target in zip(names, targets):
        if target["flagged"]:
            axes.text(target["rows"], name, f"  {target['flagged']:,} flagged", va="center", fontsize=9)
    axes.invert_yaxis()
    axes.set_xlabel("rows")
    axes.legend(ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=9)
    _tidy(axes)
    return figure, "; ".join(
        f"{t['column']}: {t['translated']} translated, {t['skipped']} skipped, {t['failed']} failed" for t in targets
    )


def translation_by_language(report: dict[str, Any]) -> tuple[Figure, str] | None:
    section = report.get("translation")
    if not section or not section["by_source_language"]:
        return None
    rows = section["by_source_language"][:MAX_LANGUAGES]
    rest = section["by_source_language"][MAX_LANGUAGES:]
    names = [language_name(row["language"]) for row in rows]
    if rest:
        rows = rows + [{what: sum(row[what] for row in rest) for what in ("rows", "skipped", "failed", "flagged")}]
        names.append(f"other ({len(rest)})")
    figure = Figure(figsize=(8, 0.9 + 0.35 * len(rows)))
    axes = figure.subplots()
    ok = [row["rows"] - row["skipped"] - row["failed"] for row in rows]
    axes.barh(names, ok, color=OUTCOME_COLORS["translated"], label="not skipped or failed")
    axes.barh(names, [row["skipped"] for row in rows], left=ok, color=OUTCOME_COLORS["skipped"], label="skipped")
    after = [a + row["skipped"] for a, row in zip(ok, rows)]
    axes.barh(names, [row["failed"] for row in rows], left=after, color=OUTCOME_COLORS["failed"], label="failed")
    axes.invert_yaxis()
    axes.set_xlabel("rows")
    axes.legend(ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=9)
    _tidy(axes)
    return figure, "Rows per source language: " + ", ".join(f"{n} {row['rows']}" for n, row in zip(names, rows))


def length_ratio(report: dict[str, Any]) -> tuple[Figure, str] | None:
    section = report.get("translation")
    targets = [t for t in (section or {}).get("targets", []) if t["length_ratio"] and t["length_ratio"]["count"]]
    if not targets:
        return None
    figure = Figure(figsize=(9, 3.6))
    axes = figure.subplots()
    colors = iter(OTHER_COLORS * 4)
    for target in targets:
        histogram = target["length_ratio_histogram"]
        edges, counts = histogram["edges"], histogram["counts"]
        total = sum(counts)
        axes.stairs([n / total for n in counts], edges, color=next(colors), linewidth=1.8,
                    label=f"{target['column']} (median {target['length_ratio']['median']})")  # fmt: skip
    axes.set_xscale("log", base=2)
    axes.axvspan(edges[0], 0.5, color="#c0392b", alpha=0.06)
    axes.axvspan(2.0, edges[-1], color="#c0392b", alpha=0.06)
    low = min(t["length_ratio"]["min"] for t in targets)
    high = max(t["length_ratio"]["max"] for t in targets)
    axes.set_xlim(max(edges[0], low / 1.5), min(edges[-1], high * 1.5))
    axes.xaxis.set_major_formatter(lambda value, _: f"{value:g}")
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_xlabel("output chars / source chars (log scale; shaded: below 0.5 or above 2)")
    axes.set_ylabel("share of rows")
    axes.legend(frameon=False, fontsize=9)
    _tidy(axes, grid="y")
    return figure, "Length ratio distribution per target: " + ", ".join(
        f"{t['column']} median {t['length_ratio']['median']}" for t in targets
    )


# --- helpers -----------------------------------------------------------------------------


def _nan(values: list[float | None]) -> list[float]:
    """matplotlib draws gaps at NaN, not at None."""
    return [float("nan") if value is None else value for value in values]


def _dates(axes) -> None:
    locator = AutoDateLocator(minticks=4, maxticks=12)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _tidy(axes, grid: str = "x") -> None:
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.grid(axis=grid, alpha=0.25)
    axes.set_axisbelow(True)
