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
import os
import pickle
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import NoReturn

import pyarrow as pa

from batch import schema
from batch.cache import ResultCache, text_key
from batch.config import ConfigError
from batch.infer.engine import Engine, EngineSpec
from batch.io.storage import Location
from batch.prepare import describe
from batch.progress import process_started, trace
from batch.tasks import build_task
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
    text_column: str = "text"  # its rows' texts name the answers they caused (`cache forget`)
    max_restarts: int = 3  # engine.max_restarts
    health: str | None = None  # the name of the run's EngineHealth actor; None: deaths are not counted


class InferenceStage:
    """Callable class for `Dataset.map_batches`: built once per actor, called per batch."""

    def __init__(self, spec: StageSpec):
        started = time.monotonic()
        trace("infer.init", process_started=process_started())
        self.spec = spec
        self.tasks: list[Task] = [build_task(name, config) for name, config in spec.tasks]
        trace("infer.tasks_built")
        self.engine = Engine(spec.engine)
        trace("infer.engine_resolved")
        if self.engine.labels:  # a classifier: its labels must map onto each task's (hub models land here)
            for task in self.tasks:
                if problems := task.check_model_labels(dict(enumerate(self.engine.labels))):
                    raise ConfigError("; ".join(problems))
        self.provenance = dict(spec.provenance)
        self.cache = self._open_cache()
        trace("infer.cache_opened")
        # A warm cache defers the engine to its first miss: a fully cached run never starts it.
        if self.cache is None or self.cache.empty:
            self.engine.llm  # noqa: B018 - start it now
        # Answers of recent requests: a text repeated across batches (reposts, boilerplate)
        # is inferred once per actor, not once per batch.
        self.recent: OrderedDict[Request, Result] = OrderedDict()
        self.failed_calls = 0  # engine calls failed in a row for the whole batch (Ray retries them here)
        log.info("engine ready in %.1fs", time.monotonic() - started)
        trace("infer.ready")

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        n_rows = batch.num_rows
        trace("infer.batch_in", rows=n_rows)
        rows = [pickle.loads(blob) for blob in batch.column(schema.PLANS).to_pylist()]
        plans = {task.name: [row[task.name] for row in rows] for task in self.tasks}

        # each distinct request once, in one engine call per kind
        unique: dict[Request, Result | None] = {}
        sources: dict[Request, set[bytes]] = {}  # the texts each request serves (for `cache forget`)
        text_keys = _text_keys(batch, self.spec.text_column) if self.cache is not None else None
        for task_plans in plans.values():
            for row, plan in enumerate(task_plans):
                if isinstance(plan, Plan):
                    for request in plan.requests:
                        unique.setdefault(request, None)
                        if text_keys is not None:
                            sources.setdefault(request, set()).add(text_keys[row])
        fresh, cached = self._infer(unique, sources)

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
        trace("infer.batch_out", rows=n_rows, requests=len(unique), fresh=len(fresh))
        return schema.charge_busy_time(batch, schema.INFER_MS, started)

    def _infer(self, unique: dict[Request, Result | None], sources: dict[Request, set[bytes]]) -> tuple[set[Request], set[Request]]:
        """Fill in every answer; returns the requests that went to the engine and those
        answered by the result cache."""
        cached: set[Request] = set()
        if self.cache is not None:  # one lookup for the batch's requests not answered lately
            self.cache.prefetch([r for r in unique if r not in self.recent], sources)
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
                        self.cache.add(request, result, sources.get(request, ()))
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
        """One engine call for the batch. If vLLM rejects a request for what it asks, find
        which by running them one by one, so that row fails alone. Any other error is the
        engine's, not a row's: it ends the whole batch's attempt (`_engine_fault`)."""
        try:
            results = run(requests)
        except Exception as exc:  # noqa: BLE001
            if not self.engine.is_request_error(exc):
                self._engine_fault(exc)
            log.warning("engine call for %d requests failed (%s); isolating the failing ones", len(requests), exc)
            results = [self._run_one(run, request) for request in requests]
        self.failed_calls = 0
        return results

    def _run_one(self, run, request: Request) -> Result:
        try:
            return run([request])[0]
        except Exception as exc:  # noqa: BLE001
            if not self.engine.is_request_error(exc):
                self._engine_fault(exc)
            return Failure(f"inference failed: {describe(exc)}")

    def _engine_fault(self, exc: Exception) -> NoReturn:
        """A dead engine ends this actor's process, so Ray restarts the actor and resubmits
        its batches (`max_restarts`, `max_task_retries`). Any other engine error raises
        EngineCallFailed, which Ray retries on this actor (`retry_exceptions`): the batch
        runs again and no row records an error. Both are bounded by engine.max_restarts."""
        model, bound, error = self.spec.engine.model, self.spec.max_restarts, describe(exc)
        if self.engine.is_fatal(exc):
            deaths = self._health("record_death", model, error) or 1
            if deaths > bound:
                self._give_up(f"the engine for {model} died {deaths} times (engine.max_restarts is {bound}); "
                              f"last error: {error}")  # fmt: skip
            log.warning("engine for %s died (%s); restarting its actor (restart %d of %d)", model, error, deaths, bound)
            _exit_for_restart()
        self.failed_calls += 1
        if self.failed_calls > bound:
            self._give_up(f"the engine call for {model} failed {self.failed_calls} times in a row "
                          f"(engine.max_restarts is {bound}); last error: {error}")  # fmt: skip
        log.warning("engine call for %s failed (%s); retrying the batch (retry %d of %d)",
                    model, error, self.failed_calls, bound)  # fmt: skip
        raise EngineCallFailed(f"engine call for {model} failed: {error}") from exc

    def _give_up(self, reason: str) -> NoReturn:
        """Stop the run. Ray Data hands the driver only a generic "UDF failed" for an
        exception in a stage, so the reason also goes where the driver reads it."""
        self._health("record_failure", reason)
        raise EngineFailed(reason)

    def _health(self, method: str, *args):
        """Call the run's EngineHealth actor, which outlives this process."""
        if self.spec.health is None:
            return None
        import ray

        return ray.get(getattr(EngineHealth.handle(self.spec.health, create=True), method).remote(*args))


class EngineCallFailed(Exception):
    """An engine call failed for the whole batch (out of memory, a timeout): Ray retries
    the batch (the pipeline lists this class in Ray Data's `actor_task_retry_on_errors`)."""


class EngineFailed(Exception):
    """An engine that kept failing past engine.max_restarts: the run stops."""


class EngineHealth:
    """One per run, a named Ray actor: how often each model's engine died and its last
    error, and why an engine stage gave up. An engine actor's own memory dies with its
    process; this count bounds restarts and tells the driver about them.

    It starts only when an engine first fails (a healthy run pays no process for it, which
    on a small machine is CPU taken from the engine's start), detached so that it outlives
    the engine actor that created it; the driver ends it with the run (`end`)."""

    NAMESPACE = "batch-engine-health"

    @staticmethod
    def handle(name: str, create: bool = False):
        """The run's actor (created if `create` and not there yet); None if there is none."""
        import ray

        if create:
            options = dict(name=name, namespace=EngineHealth.NAMESPACE, get_if_exists=True, lifetime="detached", num_cpus=0)
            return ray.remote(EngineHealth).options(**options).remote()
        try:
            return ray.get_actor(name, namespace=EngineHealth.NAMESPACE)
        except ValueError:
            return None

    @staticmethod
    def end(name: str) -> None:
        """Best effort: a run that failed because Ray itself did must keep its own error."""
        import ray

        try:
            if (actor := EngineHealth.handle(name)) is not None:
                ray.kill(actor)
        except Exception:  # noqa: BLE001 - nothing to end, or no Ray left to ask
            log.debug("EngineHealth %s not ended", name, exc_info=True)

    def __init__(self):
        self.deaths: dict[str, int] = {}
        self.last_error: dict[str, str] = {}
        self.failure: str | None = None

    def record_death(self, model: str, error: str) -> int:
        self.deaths[model] = self.deaths.get(model, 0) + 1
        self.last_error[model] = error
        return self.deaths[model]

    def record_failure(self, reason: str) -> None:
        self.failure = self.failure or reason

    def report(self) -> dict:
        """`restarts` per model (with the last error) and the reason an engine stage gave up, if one did."""
        restarts = {model: {"restarts": n, "last_error": self.last_error[model]} for model, n in self.deaths.items()}
        return {"restarts": restarts, "failure": self.failure}


def _exit_for_restart() -> NoReturn:
    """End this actor's process as a crash would. Ray restarts an actor only after an
    unexpected exit: `ray.actor.exit_actor()` is an intended one, never restarted.
    An engine core in a process of its own goes too: its memory must be free for the next."""
    import psutil

    for handler in logging.getLogger().handlers:
        handler.flush()
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass
    os._exit(1)


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


def _text_keys(batch: pa.Table, text_column: str) -> list[bytes]:
    """Each row's key in the row cache: the hash of its masked text, as prepare looked it up."""
    masks = batch.column(schema.MASKED).to_pylist()
    texts = batch.column(text_column).to_pylist()
    return [text_key(pickle.loads(blob).text if blob else (text or "")) for text, blob in zip(texts, masks)]
