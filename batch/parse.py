"""The parse stage: each task joins the answers to a row's requests back into that row's
columns (fan-in), or records why it could not (`error`) or why there was nothing to ask
(`skip_reason`). Like prepare, it runs in actors of its own so that its CPU work
(translation guardrails detect the language of every answer) overlaps with generation.

The same actor then hands the finished batch to the write stage's function
(batch/io/write.py) and returns only its small part records: annotated rows go straight to
storage instead of through the object store again, and no write task has to wait for a
CPU share that the actors hold (Ray Data cannot fuse a task after an actor).
"""

from __future__ import annotations

import pickle
import time
from typing import Any, Callable

import pyarrow as pa

from batch import schema
from batch.prepare import describe
from batch.tasks import TASKS
from batch.tasks.base import RowError, Skip, Task, TaskConfig


class ParseStage:
    """Callable class for `Dataset.map_batches`: built once per actor, called per batch."""

    def __init__(
        self, tasks: tuple[tuple[str, TaskConfig], ...], text_column: str, write: Callable[[pa.Table], pa.Table]
    ):
        self.tasks: list[Task] = [TASKS[name](config) for name, config in tasks]
        self.text_column = text_column
        self.write = write
        for task in self.tasks:
            task.warm_up()

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        n_rows = batch.num_rows
        texts = batch.column(self.text_column).to_pylist()
        plans = [pickle.loads(blob) for blob in batch.column(schema.PLANS).to_pylist()]
        errors: list[list[str]] = [[] for _ in range(n_rows)]
        skips: list[list[str]] = [[] for _ in range(n_rows)]
        for task in self.tasks:
            answers = batch.column(schema.results_column(task.name)).to_pylist()
            columns: dict[str, list[Any]] = {field.name: [None] * n_rows for field in task.columns()}
            for row, (text, row_plans, blob) in enumerate(zip(texts, plans, answers)):
                plan = row_plans[task.name]
                if isinstance(plan, RowError):
                    errors[row].append(f"{task.name}: {plan}")
                    continue
                if isinstance(plan, Skip):
                    skips[row].append(f"{task.name}: {plan.reason}")
                    values = plan.values
                else:
                    try:
                        values = task.parse(text, plan, pickle.loads(blob))
                    except Exception as exc:  # noqa: BLE001 - any parse failure is this row's error
                        errors[row].append(f"{task.name}: {describe(exc)}")
                        continue
                for name, value in values.items():
                    columns[name][row] = value
            for field in task.columns():
                batch = schema.set_column(batch, field, columns[field.name])
            # the task's provenance (set by the inference stage) follows its columns
            model = batch.schema.field(task.model_column())
            values = batch.column(task.model_column())
            batch = batch.drop_columns([model.name]).append_column(model, values)
        batch = batch.drop_columns([schema.PLANS, *(schema.results_column(task.name) for task in self.tasks)])
        batch = schema.merge_outcomes(batch, errors, skips)
        return self.write(schema.charge_busy_time(batch, schema.PARSE_MS, started))
