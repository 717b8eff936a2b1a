"""The alarm: a period whose share of a watched label jumps above its recent normal.

The watched label is `negative` by default (public opinion turning sour), any label of a
label task otherwise. The same rule runs on the task's overall series and on each value of
each `--segment` column (per language, per topic, ...), so a spike confined to one language
is seen even while the overall share hardly moves.

For each period the baseline is the pooled watched share of the `window` periods before it
(watched rows / labelled rows over the whole window, so a quiet period weighs less than a
busy one). A period alerts when

    share - baseline > threshold          (an absolute jump in share, e.g. 0.2 = 20 points)

and both the period and its window hold at least `min_count` labelled rows (the minimum
volume): a period of two posts, or a baseline of two posts, says nothing; so a small
segment never alarms. Empty periods stay in the window (gaps are time too) but add nothing
to it. The baseline looks back only, so a spike cannot hide itself, and the periods during a
lasting shift are compared against a window that fills with it: a lasting shift alerts at
its start and then becomes the new normal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence


@dataclass(frozen=True)
class AlertSettings:
    threshold: float = 0.2
    window: int = 7
    min_count: int = 20

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"alert threshold {self.threshold}: must be a share jump between 0 and 1, e.g. 0.2")
        if self.window < 1:
            raise ValueError(f"window {self.window}: must be at least 1 period")
        if self.min_count < 1:
            raise ValueError(f"min count {self.min_count}: must be at least 1 row")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PeriodShare:
    """One period of a watched-share series, with what it was compared against."""

    period: str
    rows: int  # labelled rows
    watched: int  # rows with the watched label
    share: float | None  # None: no labelled rows
    baseline: float | None  # None: no usable window (too few rows before it)
    baseline_rows: int
    jump: float | None
    alert: bool

    def to_dict(self) -> dict:
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()}


def share_series(periods: Sequence[tuple[str, int, int]], settings: AlertSettings) -> list[PeriodShare]:
    """`periods`: (label, labelled rows, watched rows), consecutive and in time order,
    empty periods included. Returns each period with its baseline and whether it alerts."""
    series = []
    for index, (label, rows, watched) in enumerate(periods):
        window = periods[max(0, index - settings.window) : index]
        baseline_rows = sum(item[1] for item in window)
        baseline_watched = sum(item[2] for item in window)
        share = watched / rows if rows else None
        baseline = baseline_watched / baseline_rows if baseline_rows >= settings.min_count else None
        jump = share - baseline if share is not None and baseline is not None else None
        alert = jump is not None and rows >= settings.min_count and jump > settings.threshold
        series.append(PeriodShare(label, rows, watched, share, baseline, baseline_rows, jump, alert))
    return series


def alerts(series: Sequence[PeriodShare]) -> list[PeriodShare]:
    return [item for item in series if item.alert]
