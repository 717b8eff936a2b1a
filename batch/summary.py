"""The run summary: what a run read, annotated, skipped and failed, and how fast.
Written next to the output as `_summary.json` and printed at the end of a run."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable


@dataclass
class RunSummary:
    run_id: str
    job: dict[str, Any]
    output: str
    status: str = "running"
    # what each task is (`Task.describe`): name, kind, and a label task's column, labels and
    # multi, or translation's targets; the report reads its sections from it
    tasks: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time, repr=False)
    input_files: int = 0
    input_files_resumed: int = 0
    unreadable_inputs: list[dict[str, Any]] = field(default_factory=list)  # uri, reason, rows (None: unknown)
    rows_in: int = 0
    rows_out: int = 0
    rows_annotated: int = 0
    rows_failed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)  # rows in a language the model does not cover, per language
    engines: list[dict[str, Any]] = field(default_factory=list)
    requests_inferred: int = 0  # distinct requests sent to an engine (duplicates and skips excluded)
    cache_hits: int = 0  # distinct requests answered by the result cache
    cached_rows: int = 0  # a task's columns for a row taken whole from the result cache (per row and task)
    input_tokens: int = 0
    output_tokens: int = 0
    seconds_to_first_row: float | None = None  # start-up: planning, Ray, engine start, first batch
    stage_busy_seconds: dict[str, float] = field(default_factory=dict)  # summed over workers
    wall_seconds: float = 0.0
    rows_per_second: float = 0.0

    def add_plan(self, files, bad_inputs, committed: dict) -> None:
        self.input_files = len(files) + len(bad_inputs)
        self.input_files_resumed = len(committed)
        self.rows_in = sum(file.rows for file in files)

    def add_unreadable(self, unreadable: list[dict[str, Any]], files) -> None:
        """Inputs whose rows are not in the output (uri, reason, rows); `rows_in` counts the
        rows of the other files only, so it can equal `rows_out`."""
        self.unreadable_inputs = unreadable
        left_out = {item["uri"] for item in unreadable}
        self.rows_in = sum(file.rows for file in files if file.uri not in left_out)

    def finish(self, commits: Iterable[dict], started: float) -> None:
        counts: Counter = Counter()
        for record in commits:
            counts.update(record["counts"])
        self.rows_out = counts.get("rows", 0)
        self.rows_failed = counts.get("failed", 0)
        self.rows_annotated = self.rows_out - self.rows_failed
        self.requests_inferred = counts.get("requests", 0)
        self.cache_hits = counts.get("cache_hits", 0)
        self.cached_rows = counts.get("cached_rows", 0)
        self.input_tokens = counts.get("input_tokens", 0)
        self.output_tokens = counts.get("output_tokens", 0)
        self.stage_busy_seconds = {
            stage: round(counts.get(f"{stage}_ms", 0) / 1000, 2) for stage in ("read", "prepare", "infer", "parse", "write")
        }
        self.skipped = {key.removeprefix("skipped: "): n for key, n in sorted(counts.items()) if key.startswith("skipped: ")}
        self.flagged = {key.removeprefix("flagged: "): n for key, n in sorted(counts.items()) if key.startswith("flagged: ")}
        self.wall_seconds = round(time.time() - started, 2)
        self.rows_per_second = round(self.rows_out / self.wall_seconds, 2) if self.wall_seconds else 0.0

    @property
    def row_error_rate(self) -> float:
        return self.rows_failed / self.rows_out if self.rows_out else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        lines = [
            f"run {self.run_id}: {self.status}",
            f"  output: {self.output}",
            f"  input files: {self.input_files} ({self.input_files_resumed} resumed from a previous attempt)",
            f"  rows: {self.rows_in} in, {self.rows_out} out, {self.rows_annotated} annotated, {self.rows_failed} failed",
        ]
        for reason, n in self.skipped.items():
            lines.append(f"  skipped ({reason}): {n}")
        for flag, n in self.flagged.items():
            lines.append(f"  flagged ({flag}): {n}")
        for bad in self.unreadable_inputs:
            rows = "rows unknown" if bad["rows"] is None else f"{bad['rows']} rows"
            lines.append(f"  unreadable input {bad['uri']}: {bad['reason']} ({rows})")
        lines.append(
            f"  engine: {self.requests_inferred} requests ({self.cache_hits} more answered by the result cache, "
            f"{self.cached_rows} task results of rows taken whole from it), "
            f"{self.input_tokens} input tokens, {self.output_tokens} output tokens"
        )
        busy = ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in self.stage_busy_seconds.items())
        lines.append(f"  stage busy time (all workers): {busy}")
        lines.append(f"  wall time: {self.wall_seconds:.1f}s, {self.rows_per_second:.1f} rows/s")
        return lines
