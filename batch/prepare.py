"""The prepare stage: every task turns every row into the requests it needs (a Plan), a
Skip, or a RowError, before any engine sees the batch.

It runs in actors of its own (Ray Data `map_batches` with a class), not in the engine's:
preparing is CPU work (language identification, masking, segmentation; ~3 ms a row for
translation, and lingua holds the GIL), so in its own process it overlaps with the engine
generating the previous batch instead of leaving the engine idle. The plans travel to the
inference and parse stages pickled in one internal column (`schema.PLANS`).
"""

from __future__ import annotations

import pickle
import time

import pyarrow as pa

from batch import schema
from batch.tasks import TASKS
from batch.tasks.base import Plan, RowError, Skip, Task, TaskConfig


class PrepareStage:
    """Callable class for `Dataset.map_batches`: built once per actor, called per batch."""

    def __init__(self, tasks: tuple[tuple[str, TaskConfig], ...], text_column: str):
        self.tasks: list[Task] = [TASKS[name](config) for name, config in tasks]
        self.text_column = text_column
        for task in self.tasks:  # load helpers (e.g. the language detector) once, up front
            task.warm_up()

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        texts, text_errors = schema.text_values(batch, self.text_column)
        plans = [
            pickle.dumps({task.name: prepare_row(task, text, error) for task in self.tasks}, protocol=pickle.HIGHEST_PROTOCOL)
            for text, error in zip(texts, text_errors)
        ]
        batch = schema.set_column(batch, pa.field(schema.PLANS, pa.binary()), plans)
        return schema.charge_busy_time(batch, schema.PREPARE_MS, started)


def prepare_row(task: Task, text: str | None, text_error: str | None) -> Plan | Skip | RowError:
    if text_error is not None:
        return RowError(text_error)
    if text is None:
        return Skip("no text (null)")
    try:
        return task.prepare(text)
    except Exception as exc:  # noqa: BLE001 - any prepare failure is this row's error
        return RowError(describe(exc))


def describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, RowError) else f"{type(exc).__name__}: {exc}"
