"""The Ray Data stage around an engine: prepare -> infer -> parse, for one batch at a time.

A Ray Data actor (`map_batches` with a class) holds one `Engine` and the tasks it serves.
Fan-out (a row needing several requests) and fan-in (joining the answers back onto the row)
both happen inside one batch, so no shuffle is ever needed; identical requests within a
batch are inferred once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batch import schema
from batch.cache import ResultCache
from batch.io.storage import Location
from batch.config import ConfigError
from batch.infer.engine import Engine, EngineSpec
from batch.tasks import TASKS
from batch.tasks.base import Classify, Failure, Generate, Plan, Request, Result, RowError, Score, Skip, Task, TaskConfig

log = logging.getLogger(__name__)

RECENT_ANSWERS = 50_000  # per actor; a few MB for labels, tens of MB for short translations


@dataclass(frozen=True)
class StageSpec:
    """What one inference stage serves: an engine and the tasks that share it."""

    engine: EngineSpec
    tasks: tuple[tuple[str, TaskConfig], ...]
    text_column: str
    cache_uri: str | None = None  # the result cache (batch/cache.py); None: off


class InferenceStage:
    """Callable class for `Dataset.map_batches`: built once per actor, called per batch."""

    def __init__(self, spec: StageSpec):
        started = time.monotonic()
        self.spec = spec
        self.tasks: list[Task] = [TASKS[name](config) for name, config in spec.tasks]
        self.engine = Engine(spec.engine)
        if self.engine.labels:  # a classifier: its labels must map onto each task's (hub models land here)
            for task in self.tasks:
                if problems := task.check_model_labels(dict(enumerate(self.engine.labels))):
                    raise ConfigError("; ".join(problems))
        self.provenance = {task.name: self._provenance(task) for task in self.tasks}
        self.cache = self._open_cache()
        # Start-up work overlaps: tasks load their helpers (e.g. the language detector) in a
        # thread while this thread starts the engine, which mostly waits on vLLM's process.
        # A warm cache defers the engine to its first miss: a fully cached run never starts it.
        warm = threading.Thread(target=lambda: [task.warm_up() for task in self.tasks], daemon=True)
        warm.start()
        if self.cache is None or not self.cache.known:
            self.engine.llm  # noqa: B018 - start it now
        warm.join()
        # Answers of recent requests: a text repeated across batches (reposts, boilerplate)
        # is inferred once per actor, not once per batch.
        self.recent: OrderedDict[Request, Result] = OrderedDict()
        log.info("engine ready in %.1fs", time.monotonic() - started)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        texts, text_errors = schema.text_values(batch, self.spec.text_column)
        n_rows = batch.num_rows

        # prepare: every task turns every row into a plan (requests) or a skip
        plans: dict[str, list[Plan | Skip | RowError]] = {}
        for task in self.tasks:
            plans[task.name] = [_prepare(task, text, error) for text, error in zip(texts, text_errors)]

        # infer: each distinct request once, in one engine call per kind
        unique: dict[Request, Result | None] = {}
        for task_plans in plans.values():
            for plan in task_plans:
                if isinstance(plan, Plan):
                    for request in plan.requests:
                        unique.setdefault(request, None)
        fresh, cached = self._infer(unique)

        # parse: join answers back onto rows, in row order
        usage = _usage_per_row(plans, unique, fresh, cached, n_rows)
        errors: list[list[str]] = [[] for _ in range(n_rows)]
        skips: list[list[str]] = [[] for _ in range(n_rows)]
        for task in self.tasks:
            columns: dict[str, list[Any]] = {field.name: [None] * n_rows for field in task.columns()}
            for row, (text, plan) in enumerate(zip(texts, plans[task.name])):
                if isinstance(plan, RowError):
                    errors[row].append(f"{task.name}: {plan}")
                    continue
                if isinstance(plan, Skip):
                    skips[row].append(f"{task.name}: {plan.reason}")
                    values = plan.values
                else:
                    try:
                        values = task.parse(text, plan, [unique[request] for request in plan.requests])
                    except Exception as exc:  # noqa: BLE001 - any parse failure is this row's error
                        errors[row].append(f"{task.name}: {_describe(exc)}")
                        continue
                for name, value in values.items():
                    columns[name][row] = value
            for field in task.columns():
                batch = schema.set_column(batch, field, columns[field.name])
            model = self.provenance[task.name]
            batch = schema.set_column(batch, pa.field(task.model_column(), pa.string()), [model] * n_rows)
        if self.cache is not None:
            self.cache.flush()  # new answers are safe in storage before the batch is done
        if n_rows:  # the batch's busy time is charged to its first row
            usage[schema.INFER_MS][0] += int((time.perf_counter() - started) * 1000)
        batch = schema.add_usage(batch, usage)
        return schema.merge_outcomes(batch, errors, skips)

    def _infer(self, unique: dict[Request, Result | None]) -> tuple[set[Request], set[Request]]:
        """Fill in every answer; returns the requests that went to the engine and those
        answered by the result cache."""
        cached: set[Request] = set()
        for request in unique:
            if (known := self.recent.get(request)) is not None:
                unique[request] = known
                self.recent.move_to_end(request)
            elif self.cache is not None and (stored := self.cache.get(request)) is not None:
                unique[request] = stored
                self.recent[request] = stored
                cached.add(request)
        fresh: set[Request] = set()
        kinds = ((Generate, self.engine.generate), (Classify, self.engine.classify), (Score, self.engine.score))
        for kind, run in kinds:
            requests = [r for r, result in unique.items() if result is None and isinstance(r, kind)]
            if not requests:
                continue
            for request, result in zip(requests, self._run_isolating_failures(run, requests)):
                unique[request] = result
                fresh.add(request)
                if not isinstance(result, Failure):
                    self.recent[request] = result
                    if self.cache is not None:
                        self.cache.add(request, result)
        while len(self.recent) > RECENT_ANSWERS:
            self.recent.popitem(last=False)
        return fresh, cached

    def _open_cache(self) -> ResultCache | None:
        if not self.spec.cache_uri:
            return None
        engine = self.spec.engine
        identity = {
            "model": engine.model, "fingerprint": self.engine.model_fingerprint, "runner": engine.runner,
            "dtype": engine.dtype, "seed": engine.seed,
            "prompt_versions": sorted((task.name, task.config.prompt_version) for task in self.tasks),
        }  # fmt: skip
        cache = ResultCache(Location(self.spec.cache_uri, engine.storage), identity, self.engine.adapter_fingerprints)
        log.info("result cache %s: %d answers", cache.folder.uri, cache.load())
        return cache

    def _provenance(self, task: Task) -> str:
        """`model@fingerprint`, plus `+lora:name=uri@fingerprint` for each adapter the task
        uses: exactly which weights produced the row."""
        text = f"{self.spec.engine.model}@{self.engine.model_fingerprint}"
        for name, uri in task.adapters().items():
            text += f" +lora:{name}={uri}@{self.engine.adapter_fingerprints[name]}"
        return text

    def _run_isolating_failures(self, run, requests: list[Request]) -> list[Result]:
        """One engine call for the batch; if it raises, find the request that did it by
        running them one by one, so one bad row fails alone. A dead engine is re-raised so
        Ray restarts the actor and retries the batch."""
        try:
            return run(requests)
        except Exception as exc:  # noqa: BLE001
            if self.engine.is_fatal(exc):
                raise
            log.warning("engine call for %d requests failed (%s); isolating the failing ones", len(requests), exc)
        results: list[Result] = []
        for request in requests:
            try:
                results.extend(run([request]))
            except Exception as exc:  # noqa: BLE001
                if self.engine.is_fatal(exc):
                    raise
                results.append(Failure(f"inference failed: {_describe(exc)}"))
        return results


def _usage_per_row(
    plans: dict[str, list], answers: dict, fresh: set[Request], cached: set[Request], n_rows: int
) -> dict[str, list[int]]:
    """Engine requests and tokens per row. A request shared by several rows is charged to
    the first of them, so the columns add up to what the engine really did."""
    usage = {name: [0] * n_rows for name in schema.USAGE_COLUMNS}
    charged: set[Request] = set()
    for task_plans in plans.values():
        for row, plan in enumerate(task_plans):
            if not isinstance(plan, Plan):
                continue
            for request in plan.requests:
                if request in cached and request not in charged:
                    charged.add(request)
                    usage[schema.CACHE_HITS][row] += 1
                if request in fresh and request not in charged and not isinstance(answers[request], Failure):
                    charged.add(request)
                    usage[schema.REQUESTS][row] += 1
                    answer = answers[request]
                    usage[schema.INPUT_TOKENS][row] += getattr(answer, "prompt_tokens", 0)
                    usage[schema.OUTPUT_TOKENS][row] += getattr(answer, "output_tokens", 0)
    return usage


def _prepare(task: Task, text: str | None, text_error: str | None) -> Plan | Skip | RowError:
    if text_error is not None:
        return RowError(text_error)
    if text is None:
        return Skip("no text (null)")
    try:
        return task.prepare(text)
    except Exception as exc:  # noqa: BLE001 - any prepare failure is this row's error
        return RowError(_describe(exc))


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, RowError) else f"{type(exc).__name__}: {exc}"

