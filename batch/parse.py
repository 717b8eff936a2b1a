"""The parse stage: each task joins the answers to a row's requests back into that row's
columns (fan-in), or records why it could not (`error`) or why there was nothing to ask
(`skip_reason`). Like prepare, it runs in actors of its own so that its CPU work
(translation guardrails detect the language of every answer) overlaps with generation.
Finished columns go to the row cache (batch/cache.py) for the next run.

Tasks parse the masked text (batch/text/privacy.py), and what they return is what the row
cache keeps, placeholders included, keyed by the masked text: the cache never holds
personal data. Only then, per row, are the originals put back into the published columns,
or, with `privacy.redact`, left out of them and out of the text column too.

The same actor then hands the finished batch to the write stage's function
(batch/io/write.py) and returns only its small part records: annotated rows go straight to
storage instead of through the object store again, and no write task has to wait for a
CPU share that the actors hold (Ray Data cannot fuse a task after an actor).
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

import pyarrow as pa

from batch import schema
from batch.prepare import RECENT_MAX_CHARS, RECENT_TEXTS, TextStageSpec, describe
from batch.progress import trace
from batch.tasks.base import Cached, RowError, Skip
from batch.text import privacy

log = logging.getLogger(__name__)
WARM_UP_NICE = 10  # a tenth of a normal thread's CPU share when the cores are busy


class ParseStage:
    """Callable class for `Dataset.map_batches`: built once per actor, called per batch."""

    def __init__(self, spec: TextStageSpec, write: Callable[[pa.Table], pa.Table]):
        self.spec = spec
        self.tasks = spec.build_tasks()
        # Parse's first batch comes after the engine's first answers: its helpers (the
        # guardrails' language judge, seconds of CPU) load meanwhile, in a thread at low
        # priority, so they take the cores only when the engine's start and prepare leave
        # them idle (loaded at normal priority they delayed the engine by 10 s; loaded on
        # first use they delayed the first row by 5 s; BENCHMARKS.md, "Start-up").
        self.warm_up = threading.Thread(
            target=_warm_up_politely, args=(self.tasks, spec.warm_up_texts), name="parse-warm-up", daemon=True
        )
        self.warm_up.start()
        self.caches = spec.row_caches(self.tasks)
        self.write = write
        # (task, text) -> columns: a repeated text is parsed once; its answers are the same
        # (identical requests are inferred once and decoding is greedy)
        self.recent: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.warm_up.is_alive():
            self.warm_up.join()
            trace("parse.warmed_up")
        started = time.perf_counter()
        n_rows = batch.num_rows
        masks = [pickle.loads(blob) if blob else None for blob in batch.column(schema.MASKED).to_pylist()]
        originals = batch.column(self.spec.text_column).to_pylist()
        texts = [masked.text if masked else text for text, masked in zip(originals, masks)]  # what tasks prepared
        plans = [pickle.loads(blob) for blob in batch.column(schema.PLANS).to_pylist()]
        errors: list[list[str]] = [[] for _ in range(n_rows)]
        skips: list[list[str]] = [[] for _ in range(n_rows)]
        cached_rows = [0] * n_rows
        for task in self.tasks:
            answers = batch.column(schema.results_column(task.name)).to_pylist()
            columns: dict[str, list[Any]] = {field.name: [None] * n_rows for field in task.columns()}
            cache = self.caches.get(task.name)
            for row, (text, row_plans, blob) in enumerate(zip(texts, plans, answers)):
                plan = row_plans[task.name]
                if isinstance(plan, RowError):
                    errors[row].append(f"{task.name}: {plan}")
                    continue
                if isinstance(plan, Skip):
                    skips[row].append(f"{task.name}: {plan.reason}")
                    values = plan.values
                elif isinstance(plan, Cached):
                    cached_rows[row] += 1
                    values = plan.values
                elif (values := self.recent.get((task.name, text))) is not None:
                    self.recent.move_to_end((task.name, text))
                else:
                    try:
                        values = task.parse(text, plan, pickle.loads(blob))
                    except Exception as exc:  # noqa: BLE001 - any parse failure is this row's error
                        errors[row].append(f"{task.name}: {describe(exc)}")
                        continue
                    if len(text) <= RECENT_MAX_CHARS:  # posts, not documents (see prepare.py)
                        self.recent[(task.name, text)] = values
                    if cache is not None:
                        cache.add(text, values)
                for name, value in privacy.publish(values, masks[row], self.spec.privacy.redact).items():
                    columns[name][row] = value
            for field in task.columns():
                batch = schema.set_column(batch, field, columns[field.name])
            # the task's provenance (set by the inference stage) follows its columns
            model = batch.schema.field(task.model_column())
            values = batch.column(task.model_column())
            batch = batch.drop_columns([model.name]).append_column(model, values)
        while len(self.recent) > RECENT_TEXTS:
            self.recent.popitem(last=False)
        trace("parse.parsed")
        for cache in self.caches.values():
            cache.flush()  # before the batch is written: a committed row's columns are cached
        trace("parse.cached")
        if self.spec.privacy.redact:
            batch = schema.set_column(batch, pa.field(self.spec.text_column, pa.string()), texts)
        batch = batch.drop_columns(
            [schema.PLANS, schema.MASKED, *(schema.results_column(task.name) for task in self.tasks)]
        )
        batch = schema.merge_outcomes(batch, errors, skips)
        batch = schema.add_usage(batch, {schema.CACHED_ROWS: cached_rows})
        return self.write(schema.charge_busy_time(batch, schema.PARSE_MS, started))


def _warm_up_politely(tasks: list, texts: tuple[str, ...]) -> None:
    try:  # Linux: a thread's own nice value (elsewhere the call fails and it runs as is)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WARM_UP_NICE)
    except OSError:
        pass
    try:
        for task in tasks:
            task.warm_up("parse", texts)
        trace("parse.warm_up_done")
    except Exception:  # noqa: BLE001 - the first batch loads the same helpers and reports any error per row
        log.warning("parse warm-up failed; helpers load with the first batch", exc_info=True)
