"""The inference stage: the Ray Data actor around one engine, between prepare and parse.

A Ray Data actor (`map_batches` with a class) holds one `Engine` and the tasks it serves.
It reads each row's plan (`schema.PLANS`, from batch/prepare.py), answers every distinct
request once (recent answers, then the result cache, then the engine), and hands each row
the answers to its requests (`schema.results_column`) for batch/parse.py. Fan-out and
fan-in stay inside one batch, so no shuffle is ever needed. The actor does nothing else,
so the engine idles only while the actor moves a batch in and out.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import OrderedDict
from dataclasses import dataclass

import pyarrow as pa

from batch import schema
from batch.cache import ResultCache
from batch.config import ConfigError
from batch.infer.engine import Engine, EngineSpec
from batch.io.storage import Location
from batch.prepare import describe
from batch.tasks import TASKS
from batch.tasks.base import Classify, Failure, Generate, Plan, Request, Result, Score, Task, TaskConfig

log = logging.getLogger(__name__)

RECENT_ANSWERS = 50_000  # per actor; a few MB for labels, tens of MB for short translations


@dataclass(frozen=True)
class StageSpec:
    """What one inference stage serves: an engine and the tasks that share it."""

    engine: EngineSpec
    tasks: tuple[tuple[str, TaskConfig], ...]
    # From the run's one identity (batch/identity.py), never recomputed here:
    provenance: tuple[tuple[str, str], ...]  # task -> its `<task>_model` value
    cache_identity: str  # the folder of this engine's answers in the result cache
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
        self.provenance = dict(spec.provenance)
        self.cache = self._open_cache()
        # A warm cache defers the engine to its first miss: a fully cached run never starts it.
        if self.cache is None or not self.cache.known:
            self.engine.llm  # noqa: B018 - start it now
        # Answers of recent requests: a text repeated across batches (reposts, boilerplate)
        # is inferred once per actor, not once per batch.
        self.recent: OrderedDict[Request, Result] = OrderedDict()
        log.info("engine ready in %.1fs", time.monotonic() - started)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        n_rows = batch.num_rows
        rows = [pickle.loads(blob) for blob in batch.column(schema.PLANS).to_pylist()]
        plans = {task.name: [row[task.name] for row in rows] for task in self.tasks}

        # each distinct request once, in one engine call per kind
        unique: dict[Request, Result | None] = {}
        for task_plans in plans.values():
            for plan in task_plans:
                if isinstance(plan, Plan):
                    for request in plan.requests:
                        unique.setdefault(request, None)
        fresh, cached = self._infer(unique)

        # per row and task, the answers to its requests in order, for the parse stage
        for task in self.tasks:
            answers = [
                pickle.dumps([unique[r] for r in plan.requests], protocol=pickle.HIGHEST_PROTOCOL)
                if isinstance(plan, Plan) else None
                for plan in plans[task.name]
            ]  # fmt: skip
            batch = schema.set_column(batch, pa.field(schema.results_column(task.name), pa.binary()), answers)
            model = self.provenance[task.name]
            batch = schema.set_column(batch, pa.field(task.model_column(), pa.string()), [model] * n_rows)
        if self.cache is not None:
            self.cache.flush()  # new answers are safe in storage before the batch is done
        batch = schema.add_usage(batch, _usage_per_row(plans, unique, fresh, cached, n_rows))
        return schema.charge_busy_time(batch, schema.INFER_MS, started)

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
        root = Location(self.spec.cache_uri, self.spec.engine.storage)
        cache = ResultCache(root, self.spec.cache_identity, self.engine.adapter_fingerprints)
        log.info("result cache %s: %d answers", cache.folder.uri, cache.load())
        return cache

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
                results.append(Failure(f"inference failed: {describe(exc)}"))
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
