"""Charts of the report dictionary as PNG bytes, drawn with matplotlib's Agg renderer.

Figures are built with `matplotlib.figure.Figure` directly, never through pyplot: no global
figure state, no GUI backend chosen behind anyone's back, nothing left open between charts.
Each chart reads only the report dictionary, the same data report.json holds. Which charts
a task gets, and how they are drawn, is its kind's business (batch/report/sections/); this
module holds what they share, and is imported only when charts are drawn (matplotlib is
slow to import).
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import Any, Iterable

from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

__all__ = ["Chart", "Figure", "PercentFormatter", "render_charts", "charts_of"]

LABEL_COLORS = {"negative": "#c0392b", "neutral": "#95a5a6", "positive": "#27ae60"}
OTHER_COLORS = ["#2980b9", "#8e44ad", "#d35400", "#16a085", "#f1c40f", "#34495e", "#e84393", "#7f8c8d"]
ALERT_COLOR = "#e67e22"
MAX_LANGUAGES = 15  # languages (or segment values) charted one by one; the rest share a bar
MAX_BARS = 90  # periods drawn as bars; longer timelines are drawn as areas and lines
DPI = 110


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    alt: str
    png: bytes


def render_charts(report: dict[str, Any]) -> list[Chart]:
    """Every chart the report's data supports, in page order: each task's, by its kind."""
    from batch.report.sections import KINDS

    return [chart for section in report["tasks"].values() for chart in KINDS[section["kind"]].charts(section)]


def charts_of(made: Iterable[tuple[str, str, tuple[Figure, str] | None]]) -> list[Chart]:
    """(id, title, (figure, alt text) or None when the data has nothing to draw) -> charts."""
    return [Chart(chart_id, title, drawn[1], to_png(drawn[0])) for chart_id, title, drawn in made if drawn is not None]


def to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def label_colors(labels: list[str]) -> dict[str, str]:
    """Conventional colours for the usual labels, distinct ones for any others."""
    others = iter(OTHER_COLORS * (len(labels) // len(OTHER_COLORS) + 1))
    return {label: LABEL_COLORS.get(str(label).lower()) or next(others) for label in labels}


def color_of(label: str | None) -> str:
    return LABEL_COLORS.get(str(label).lower(), OTHER_COLORS[0])


def language_name(language: str | None) -> str:
    return "(none)" if language is None else str(language)


def parse_period(period: str) -> dt.datetime:
    return dt.datetime.fromisoformat(period.replace("Z", "+00:00"))


def nan(values: list[float | None]) -> list[float]:
    """matplotlib draws gaps at NaN, not at None."""
    return [float("nan") if value is None else value for value in values]


def dates(axes) -> None:
    locator = AutoDateLocator(minticks=4, maxticks=12)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def tidy(axes, grid: str = "x") -> None:
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.grid(axis=grid, alpha=0.25)
    axes.set_axisbelow(True)


def legend_above(axes, ncols: int, fontsize: int = 9) -> None:
    axes.legend(ncols=ncols, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=fontsize)


def mark_alerts(axes, series: list[dict[str, Any]], x: list) -> None:
    """An orange ring and the period's name on every alerting point."""
    for item, when in zip(series, x):
        if item["alert"]:
            axes.plot([when], [item["share"]], "o", markersize=14, markerfacecolor="none",
                      markeredgecolor=ALERT_COLOR, markeredgewidth=2.5)  # fmt: skip
            axes.annotate(f"ALERT {item['period']}", (when, item["share"]), textcoords="offset points", xytext=(0, 12),
                          ha="center", fontsize=9, color=ALERT_COLOR, fontweight="bold")  # fmt: skip
