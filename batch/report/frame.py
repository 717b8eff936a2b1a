"""What the frame hands every task section: the command line's choices (`ReportOptions`)
and, when shaping counts into the report, the output's shared facts (`Frame`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from batch.report.aggregate import Counts, Roles, period_label
from batch.report.alerts import AlertSettings


@dataclass(frozen=True)
class ReportOptions:
    """What the command line chose. None means: take it from the output (or its run summary)."""

    time_column: str | None = None
    freq: str = "day"
    language_column: str | None = None
    labels: tuple[str, ...] | None = None
    watch_label: str = "negative"
    watch_label_given: bool = False  # named on the command line: it must then be some task's label
    alert: AlertSettings = field(default_factory=AlertSettings)
    text_column: str | None = None
    segments: tuple[str, ...] = ()
    label_columns: tuple[str, ...] = ()


@dataclass
class Frame:
    """The output's shared facts when sections are built: the resolved columns, every period
    from the first to the last (the same for every task and segment), notes to add to."""

    roles: Roles
    options: ReportOptions
    counts: Counts
    periods: list[int]  # period starts, consecutive (empty periods included)
    notes: list[str]

    def period_labels(self) -> list[str]:
        return [period_label(start, self.roles.freq) for start in self.periods]


def share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def job_input_text_column(job: dict[str, Any]) -> str | None:
    section = job.get("input")
    return section.get("text_column") if isinstance(section, dict) else None
