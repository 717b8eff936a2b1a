"""The one place that wires the flow: read -> prepare -> infer (one stage per model) -> parse -> write.

    plan      driver: list input files, read their footers, skip files a previous attempt
              committed, group tasks by the model that serves them
    read      Ray tasks: stream file slices as bounded Arrow batches tagged with their file
    prepare   Ray actors: every task turns every row into requests or a skip (batch/prepare.py)
    infer     Ray actors, one pool per model: each distinct request answered once (batch/infer/stage.py)
    parse     Ray actors: answers joined back into each row's columns (batch/parse.py)
    write     in the parse actors: one staged Parquet part per (batch, source file)
    commit    driver: an input file whose rows are all written gets a commit record
    publish   driver: move parts into place, manifest, summary, _SUCCESS
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pyarrow as pa

from batch.cache import compact_cache
from batch.config import ConfigError, JobConfig
from batch.identity import RunIdentity, resolve_run
from batch.infer import models
from batch.infer.engine import EngineSpec, batch_size_for, resolve_engine_settings
from batch.infer.stage import EngineCallFailed, EngineHealth, InferenceStage, StageSpec
from batch.io.lease import Lease, LeaseHeld, LeaseLost
from batch.io.read import BadInput, InputFile, first_texts, make_reader, output_schema, plan_inputs, read_slices
from batch.io.storage import Location
from batch.io.write import MANIFEST, STAGING, FileProgress, Output, make_part_writer
from batch.parse import ParseStage
from batch.prepare import PrepareStage, TextStageSpec
from batch.progress import ProgressLine, quiet_ray_data, quiet_workers_env, trace, traced
from batch.summary import RunSummary
from batch.tasks import build_task
from batch.text.privacy import missing_hash_columns

log = logging.getLogger(__name__)

# Read tasks and the prepare/parse actors (CPU work beside the engines: reading Parquet,
# language ID, masking, guardrails, writing parts). Their share is small so that on a small
# machine they never wait for a core Ray thinks is taken; on a GPU node they run on the CPUs
# the engines leave free. One value for both lets Ray Data fuse the read into the prepare actor.
TEXT_STAGE_CPUS = 0.25


class RunFailed(Exception):
    """The run stopped before publishing; the message says why and what to do."""


@dataclass
class EngineGroup:
    """Tasks served by one model: one actor pool, one engine per actor."""

    spec: EngineSpec
    tasks: list[tuple[str, Any]] = field(default_factory=list)


def engine_groups(job: JobConfig, device: str, identity: RunIdentity) -> list[EngineGroup]:
    """Tasks that name the same model and runner share an engine; their LoRA adapters are
    served side by side by that engine (vLLM multi-LoRA), so base weights load once. Each
    spec carries the content identities of its weights from the run's identity."""
    settings = resolve_engine_settings(job.engine, device)
    groups: dict[tuple[str, str], EngineGroup] = {}
    for name, config in job.enabled_tasks().items():
        task = build_task(name, config)
        runner = task.engine_runner()
        key = (config.model, runner)
        if key not in groups:
            spec = EngineSpec(
                model=config.model,
                runner=runner,
                device=device,
                storage=job.storage,
                trust_remote_code=config.trust_remote_code,
                tensor_parallel_size=job.engine.tensor_parallel_size,
                max_num_seqs=job.engine.max_num_seqs,
                enable_prefix_caching=job.engine.enable_prefix_caching,
                seed=job.engine.seed,
                weights=identity.weights_of(config.model),
                **settings,
            )
            groups[key] = EngineGroup(spec)
        group = groups[key]
        if config.trust_remote_code != group.spec.trust_remote_code:
            raise ConfigError(f"tasks.{name}.trust_remote_code: tasks sharing model {config.model} must agree on it")
        if adapters := task.adapters():
            group.spec = dataclasses.replace(
                group.spec,
                adapters=(*group.spec.adapters, *adapters.items()),
                weights=identity.weights_of(*(w.uri for w in group.spec.weights), *adapters.values()),
            )
        group.tasks.append((name, config))
    for group in groups.values():
        _check_scoring_beside_lora(group, device)
    return list(groups.values())


def _check_scoring_beside_lora(group: EngineGroup, device: str) -> None:
    """vLLM's CPU build (0.32) fails every prompt-log-probability request of an engine that
    has LoRA enabled, adapter or not (`einsum(): subscript b has size ...`, reproduced with
    the tiny models): refuse that combination before any engine starts, naming the fix."""
    if device != "cpu" or not group.spec.adapters:
        return
    for name, config in group.tasks:
        if build_task(name, config).scores_continuations():
            raise ConfigError(
                f"tasks.{name}: label probabilities (scored prompt log-probabilities) fail in vLLM's CPU build on an "
                f"engine with LoRA adapters ({', '.join(a for a, _ in group.spec.adapters)} on {group.spec.model}); "
                f"set tasks.{name}.probabilities: false (constrained choice), serve it on a GPU, or give it a model "
                f"without adapters"
            )


def check_models(job: JobConfig) -> None:
    """What can be checked of the models without loading them: a classifier's own labels
    (its config.json `id2label`) must map onto the job's labels. Runs before Ray starts."""
    problems = []
    for name, config in job.enabled_tasks().items():
        task = build_task(name, config)
        if task.engine_runner() != "classify":
            continue
        model_config = models.read_config(config.model, job.storage)
        if model_config is None:  # a hub id: checked when the engine loads it
            continue
        id2label = model_config.get("id2label") or {}
        if not id2label:
            problems.append(f"tasks.{name}.model {config.model}: config.json has no id2label; is it a classifier?")
        problems += task.check_model_config(model_config)
    if problems:
        raise ConfigError("\n".join(problems))


# Ray settings for a local cluster that lives for one run (measured: BENCHMARKS.md, "Start-up"):
# - no idle workers started ahead of need: the job's actors start processes of their own,
#   so the pre-started ones only took CPU from the engine's start;
# - no metrics: with no dashboard nothing reads them, and the driver's exit waited 10 s
#   (in most runs) on a last export to Ray's agent.
LEAN_LOCAL_CLUSTER = {"RAY_prestart_worker_first_driver": "0", "RAY_enable_metrics_collection": "0"}


def connect_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # "local" starts a fresh local cluster: never attach to a stale one left by a killed head.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # A local cluster lives for one run: no dashboard, whose processes take CPU from the
    # engine while it starts (the progress lines and _summary.json say what it would).
    extra = {"include_dashboard": False, "runtime_env": quiet_workers_env()} if address == "local" else {}
    if address == "local":
        for name, value in LEAN_LOCAL_CLUSTER.items():  # read by the processes ray.init starts
            os.environ.setdefault(name, value)
    ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING, **extra)
    quiet_ray_data()


def stop_ray() -> None:
    """End this process's Ray session; a local cluster it started ends whole. Ray's own
    shutdown ends the raylet, GCS and its workers, but the raylet's agents (dashboard and
    runtime-env agents) outlive a raylet that did not stop within Ray's one-second grace:
    orphaned, they waited minutes on a GCS that was gone. They are ended here."""
    import psutil
    import ray

    agents = []
    for child in psutil.Process().children():
        try:
            if child.name() == "raylet":
                agents += child.children(recursive=True)
        except psutil.Error:
            pass
    ray.shutdown()
    for agent in agents:
        try:
            agent.kill()  # only if still running: psutil checks the process is the same one
        except psutil.Error:
            pass


class RayStart:
    """`connect_ray` in a background thread, begun once the run holds the output's lease, so
    that the local cluster (GCS, raylet, agents: seconds on a small machine) starts while
    the driver lists the input files and reads their footers; the actors (and their
    engines) then start as soon as the plan is ready.

    The thread stays alive for as long as the cluster does: Ray ties the processes of a
    local cluster to the thread that started them (Linux's parent-death signal follows the
    thread), so a thread that returned would take GCS and the raylet down with it."""

    latest: RayStart | None = None  # the process's latest start, for `ray_start_in_flight`

    def __init__(self, address: str | None):
        import threading

        self._done = threading.Event()
        self._error: BaseException | None = None
        RayStart.latest = self
        trace("driver.ray_start")
        threading.Thread(target=self._start, args=(address,), name="ray-start", daemon=True).start()

    def _start(self, address: str | None) -> None:
        import ray

        # From the main thread ray.init replaces the SIGTERM handler (the CLI's writes the
        # attempt log first); from this one it keeps it, and warns that it did: not news. Nor
        # is token authentication on a cluster that lives for this run, its dashboard off; and
        # a run that fails while planning must end on its own last line, not on these.
        for name in ("ray._private.worker", "ray._private.authentication.authentication_token_setup"):
            logging.getLogger(name).addFilter(_QUIET_RAY_START)  # once: a filter is kept by identity
        try:
            connect_ray(address)
        except BaseException as exc:  # noqa: BLE001 - raised where the driver waits for Ray
            self._error = exc
        finally:
            self._done.set()
        while ray.is_initialized():  # hold the cluster's processes (see the class docstring)
            time.sleep(0.5)

    def wait(self) -> None:
        """Ray is up (or the reason it is not is raised here)."""
        self._done.wait()
        if self._error is not None:
            raise self._error

    def settled(self) -> bool:
        return self._done.is_set()


class _QuietRayStart(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "SIGTERM handler is not set" not in message and "Token authentication is enabled" not in message


_QUIET_RAY_START = _QuietRayStart()


def ray_start_in_flight() -> bool:
    """A run failed while planning, before its cluster was up: the command says why at once
    and exits without waiting for Ray (the cluster's processes end with this process)."""
    return RayStart.latest is not None and not RayStart.latest.settled()


def detect_device(job: JobConfig) -> str:
    if job.engine.device != "auto":
        return job.engine.device
    import ray

    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def run(
    job: JobConfig,
    *,
    overwrite: bool = False,
    ray_address: str | None = None,
    echo: Callable[[str], None] = print,
    run_id: str | None = None,
) -> RunSummary:
    started = time.time()
    trace("driver.run")
    run_id = run_id or new_run_id()
    location = Location(job.output.uri, job.storage)
    summary = RunSummary(run_id=run_id, job=job.redacted(), output=job.output.uri, started=started,
                         tasks=[build_task(name, config).describe() for name, config in job.enabled_tasks().items()])

    # Before the lease and before the weights are identified: a published output says so at
    # once, whoever holds or left a lease and whether or not its models are still there.
    if Output(location).is_published() and not overwrite:
        return _already_published(job, Output(location), run_id, summary, echo)
    check_models(job)  # a job error is said before anything starts
    identity = resolve_run(job)  # once: weights are identified here and nowhere else
    trace("driver.identity")
    output = Output(location, identity.fingerprint)

    lease = output.lease(run_id, job.output.lease_seconds)
    try:
        lease.take()  # before anything is written under the output
    except LeaseHeld as exc:
        raise RunFailed(f"{exc}. Run again once it has ended; if it was killed, its lease expires as shown") from None
    trace("driver.lease")
    try:
        if lease.taken_over_from:
            echo(f"lease: took over the output from {lease.taken_over_from} (its heartbeat stopped)")
        if output.is_published():  # published by another run since the check above
            if not overwrite:
                return _already_published(job, output, run_id, summary, echo, lease)
            # --overwrite redoes everything: staging left by the published run (or by an overwrite
            # cut before its publish) goes; the old output stays published until the publish.
            output.discard_staging()
        ray_start = RayStart(ray_address)  # in the background while the driver plans
        return _plan_process_publish(job, identity, output, lease, run_id, summary, started, ray_start, echo)
    except LeaseLost as exc:
        raise RunFailed(str(exc)) from None
    finally:
        lease.release()


def _already_published(
    job: JobConfig, output: Output, run_id: str, summary: RunSummary, echo, lease: Lease | None = None
) -> RunSummary:
    """A retry of a published date does nothing, but says what the publish said: the
    manifest's unreadable inputs keep a partial result partial on every retry (exit 2).
    Staging left by a run cut after its _SUCCESS is removed if no run holds the lease."""
    manifest = output.location.join(MANIFEST)
    unreadable = manifest.read_json().get("unreadable_inputs", []) if manifest.exists() else []
    summary.unreadable_inputs = [{"uri": bad["uri"], "reason": bad["reason"], "rows": bad.get("rows")} for bad in unreadable]
    summary.status = "already published with unreadable inputs" if unreadable else "already published"
    echo(f"{summary.output} is {summary.status} (_SUCCESS exists); nothing to do. Use --overwrite to redo it.")
    if not output.has_staging():
        return summary
    try:
        with contextlib.nullcontext(lease) if lease else output.lease(run_id, job.output.lease_seconds):
            if output.is_published():
                output.discard_staging()
                echo("removed the staging a previous run left after publishing")
    except LeaseHeld as exc:
        echo(f"staging left by a previous run is kept for now: {exc}")
    return summary


def _plan_process_publish(
    job: JobConfig,
    identity: RunIdentity,
    output: Output,
    lease: Lease,
    run_id: str,
    summary: RunSummary,
    started: float,
    ray_start: RayStart,
    echo: Callable[[str], None],
) -> RunSummary:
    # plan
    files, bad_inputs = plan_inputs(job.input, job.storage)
    if missing := missing_hash_columns(job.privacy, {column for file in files for column in file.columns}):
        raise ConfigError(f"privacy.hash_columns: no column {missing[0]!r} in any input file (a misspelt id column?)")
    _record_identity(output, identity, echo)
    output.discard_other_attempts()
    files_by_uri = {file.uri: file for file in files}
    committed = {uri: record for uri, record in output.committed().items() if _still_valid(record, files_by_uri)}
    pending = [file for file in files if file.uri not in committed]
    summary.add_plan(files, bad_inputs, committed)
    echo(
        f"run {run_id}: {len(files)} input files ({sum(f.rows for f in files)} rows), "
        f"{len(committed)} already committed, {len(pending)} to process, {len(bad_inputs)} unreadable"
    )
    for bad in bad_inputs:
        echo(f"  unreadable input {bad.uri}: {bad.reason}")
    trace("driver.planned", files=len(pending))

    progress = {file.uri: FileProgress(file) for file in pending}
    for file in pending:
        if file.rows == 0:  # nothing to read; commit now so the file counts as done
            committed[file.uri] = output.commit(progress.pop(file.uri))

    if progress:
        # one schema for the whole output: planned over every input, committed ones included
        union = output_schema(files)
        _process(job, identity, output, run_id, progress, committed, union, summary, ray_start, echo)

    # check and publish
    missing = [uri for uri in (f.uri for f in files) if uri not in committed]
    if missing:
        raise RunFailed(f"{len(missing)} input files were not fully written (first: {missing[0]}); rerun to resume")
    unreadable = _unreadable_inputs(bad_inputs, committed)
    summary.add_unreadable(unreadable, files)
    summary.finish(committed.values(), started)
    if summary.row_error_rate > job.max_row_error_rate:
        raise RunFailed(
            f"{summary.rows_failed} of {summary.rows_in} rows failed ({summary.row_error_rate:.1%}), above "
            f"max_row_error_rate {job.max_row_error_rate:.1%}; nothing was published. Staged output is kept; "
            f"see the error column in {output.staging.uri}"
        )
    manifest = {
        "run_id": run_id,
        "fingerprint": output.fingerprint,
        "rows": summary.rows_out,
        "inputs": [
            {"uri": r["source"], "rows": r["rows"], "size": r["size"]}
            for r in committed.values() if not r.get("unreadable")
        ],
        "unreadable_inputs": unreadable,
    }  # fmt: skip
    summary.status = "published" if not unreadable else "published with unreadable inputs"
    output.publish(list(committed.values()), manifest, summary.to_dict(), still_held=lease.check)
    trace("driver.published")
    if job.cache.enabled and job.cache.compact_after_publish:
        compact_cache(job, echo)  # by the lease holder; a failure leaves the cache as it was
    return summary


def new_run_id() -> str:
    """Sortable by start time, unique per attempt: names the attempt's parts and its log."""
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def _process(
    job: JobConfig,
    identity: RunIdentity,
    output: Output,
    run_id: str,
    progress: dict[str, FileProgress],
    committed: dict[str, dict],
    union: pa.Schema | None,
    summary: RunSummary,
    ray_start: RayStart,
    echo: Callable[[str], None],
) -> None:
    import ray

    files = [p.file for p in progress.values()]
    # the run's first texts, read while Ray starts: the actors warm their language detectors
    # on them, so the first block does not wait for models to load
    warm_up_texts = first_texts(read_slices(files, union)[0], job.input, job.storage)
    ray_start.wait()
    trace("driver.ray_connected")
    device = detect_device(job)
    identity = identity.for_device(device)
    groups = engine_groups(job, device, identity)
    summary.engines = [
        {"model": g.spec.model, "runner": g.spec.runner, "device": device, "replicas": job.engine.replicas,
         "tasks": [name for name, _ in g.tasks], "adapters": [name for name, _ in g.spec.adapters]}
        for g in groups
    ]  # fmt: skip

    cache_uri = job.cache.uri if job.cache.enabled else None
    text_spec = TextStageSpec(
        tasks=tuple((name, config) for group in groups for name, config in group.tasks),
        text_column=job.input.text_column,
        cache_uri=cache_uri,
        cache_identities={name: identity.row_cache(name) for name in job.enabled_tasks()},
        storage=job.storage,
        # prompts are budgeted in each model's tokens against the context its engine gets
        max_model_lens={name: group.spec.max_model_len for group in groups for name, _ in group.tasks},
        weights={w.uri: w for group in groups for w in group.spec.weights},
        privacy=job.privacy,
        warm_up_texts=warm_up_texts,
    )
    text_stage = dict(
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=job.engine.text_workers or job.engine.replicas),
        num_cpus=TEXT_STAGE_CPUS,
    )
    # An engine error for a whole batch is retried by Ray on the same actor (bounded by the
    # inference stage's max_task_retries); only this class, so other stages' errors still stop the run.
    ray.data.DataContext.get_current().actor_task_retry_on_errors = [EngineCallFailed]
    health = f"engine-health-{run_id}"  # EngineHealth's name: the actor starts with the first engine failure
    # The unit that flows is a slice: about one engine call's rows (whole row groups), read
    # and prepared by one task (Ray Data fuses the read into the prepare actor). Every
    # later stage takes whole blocks as they come (batch_size None), one per task: Ray
    # Data hands a task's output on only when the task ends, so a task over tens of
    # thousands of rows, or over several blocks (a row count bundles them), kept the
    # engine, then the writer, waiting for all of it.
    batch_rows = batch_size_for(job.engine, device)
    slices = read_slices(files, union, rows_per_slice=batch_rows)
    dataset = ray.data.from_items(slices, override_num_blocks=max(1, len(slices)))
    dataset = dataset.map_batches(
        make_reader(job.input, job.storage), batch_size=1, batch_format="pyarrow", num_cpus=TEXT_STAGE_CPUS
    )
    dataset = dataset.map_batches(
        traced(PrepareStage, "prepare"), fn_constructor_kwargs={"spec": text_spec}, batch_size=None, **text_stage
    )
    for group in groups:
        dataset = dataset.map_batches(
            InferenceStage,
            fn_constructor_kwargs={
                "spec": StageSpec(
                    engine=group.spec,
                    tasks=tuple(group.tasks),
                    provenance=tuple((name, identity.provenance(name)) for name, _ in group.tasks),
                    cache_identity=identity.answer_cache(group.spec.model, group.spec.runner, [n for n, _ in group.tasks]),
                    cache_uri=cache_uri,
                    text_column=job.input.text_column,
                    max_restarts=job.engine.max_restarts,
                    health=health,
                )
            },
            batch_size=None,  # one block (a slice): one engine call
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=job.engine.replicas),
            **_actor_resources(job, device),
        )
    # parse, then write from the same actor (see batch/parse.py)
    write = make_part_writer(output.staging, run_id)
    dataset = dataset.map_batches(
        traced(ParseStage, "parse"), fn_constructor_kwargs={"spec": text_spec, "write": write}, batch_size=None, **text_stage
    )

    total = sum(p.file.rows for p in progress.values())
    trace("driver.stream")
    try:
        try:
            _consume(_records(dataset), progress, committed, output, summary, total, echo)
        except Exception as exc:  # noqa: BLE001 - anything that stops the stream stops the run
            engine_failure = _engine_health(health, timeout=30)["failure"]
            raise RunFailed(
                f"processing stopped: {'EngineFailed: ' + engine_failure if engine_failure else _root_cause(exc)}. "
                f"{len(committed)} input files are committed; rerun the same command to resume from there."
            ) from exc
        _report_engine_restarts(_engine_health(health)["restarts"], summary, echo)
    finally:
        EngineHealth.end(health)


def _engine_health(name: str, timeout: float | None = None) -> dict:
    """The EngineHealth report: how often each engine died and why a stage gave up (Ray
    Data passes the driver only a generic "UDF failed" for a stage's exception). Empty if
    no engine failed (the actor never started) or Ray itself can no longer say."""
    import ray

    nothing = {"restarts": {}, "failure": None}
    try:
        actor = EngineHealth.handle(name)
        return nothing if actor is None else ray.get(actor.report.remote(), timeout=timeout)
    except Exception:  # noqa: BLE001 - the run is failing already; keep its own cause
        return nothing


def _report_engine_restarts(restarts: dict[str, dict], summary: RunSummary, echo) -> None:
    for engine in summary.engines:
        engine["restarts"] = restarts.get(engine["model"], {}).get("restarts", 0)
    for model, deaths in restarts.items():
        n, error = deaths["restarts"], deaths["last_error"]
        echo(f"engine for {model} died {n} time(s), restarted each time; last error: {error}")


def _records(dataset) -> Iterator[dict]:
    """The parse stage's part records, each block as soon as it is done: `iter_rows`
    prefetches one block, so it held every block until the next one was done (the first
    row waited for the second block; measured 2 s)."""
    for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        yield from block.to_pylist()


def _consume(records, progress, committed, output: Output, summary: RunSummary, total: int, echo) -> None:
    """The driver's loop over write records: count rows per input file, commit each file
    as soon as all its rows are written, quarantine a file the reader could not read to its
    end, report progress."""
    meter = ProgressLine(total, echo)
    for record in records:
        if summary.seconds_to_first_row is None:
            summary.seconds_to_first_row = round(time.time() - summary.started, 2)
            trace("driver.first_row")
        file_progress = progress.get(record["source"])
        if file_progress is None:  # a file quarantined earlier in this run: its other parts are dropped
            continue
        if (reason := record["unreadable"]) is not None:
            meter.advance(file_progress.file.rows - file_progress.rows)
            committed[record["source"]] = _quarantine(progress.pop(record["source"]), reason, output, echo)
            continue
        file_progress.parts.append(record["part"])
        file_progress.rows += record["rows"]
        file_progress.counts = dict(Counter(file_progress.counts) + Counter(json.loads(record["counts"])))
        if file_progress.complete:
            committed[record["source"]] = output.commit(progress.pop(record["source"]))
            trace("driver.file_committed")
        meter.advance(record["rows"])


def _quarantine(file_progress: FileProgress, reason: str, output: Output, echo) -> dict:
    """A file whose bytes failed to read: none of its rows publish (a file is all or
    nothing; parts already staged stay in staging). Its commit record carries the reason
    and the footer's row count, so a rerun does not read it again and the manifest lists it."""
    file = file_progress.file
    echo(f"  unreadable input {file.uri}: {reason} ({file.rows} rows; none published)")
    return output.commit(FileProgress(file, rows=file.rows, unreadable=reason))


def _unreadable_inputs(bad_inputs: list[BadInput], committed: dict[str, dict]) -> list[dict]:
    """Every input whose rows are not in the output, with the reason and its row count (None
    when even the footer could not be read): found at planning, or quarantined by the read."""
    found = [dataclasses.asdict(bad) for bad in bad_inputs]
    found += [
        {"uri": r["source"], "reason": r["unreadable"], "rows": r["rows"]}
        for r in committed.values() if r.get("unreadable")
    ]  # fmt: skip
    return sorted(found, key=lambda item: item["uri"])


def _root_cause(exc: BaseException) -> str:
    """The innermost error, without Ray's wrapping (RayTaskError keeps it in .cause)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _actor_resources(job: JobConfig, device: str) -> dict[str, Any]:
    # Ray restarts an engine actor whose process died and resubmits its batches, a bounded
    # number of times (Ray Data's own default is unbounded: a crash loop would never end).
    retries = {"max_restarts": job.engine.max_restarts, "max_task_retries": job.engine.max_restarts}
    return {**retries, **_actor_placement(job, device)}


def _actor_placement(job: JobConfig, device: str) -> dict[str, Any]:
    if device == "cuda":
        # One engine per GPU; with tensor parallelism the actor owns all its GPUs (vLLM's
        # multiprocessing executor runs the shards inside the actor's node).
        resources: dict[str, Any] = {"num_gpus": job.engine.tensor_parallel_size}
        if job.engine.accelerator_type:
            resources["accelerator_type"] = job.engine.accelerator_type
        if job.engine.num_cpus:
            resources["num_cpus"] = job.engine.num_cpus
        return resources
    # On the CPU build one engine uses about one core, but reserving a whole core per
    # engine actor leaves no room in Ray's accounting for the prepare/parse actors and read
    # tasks on a small machine (two models on two cores deadlocked), so it reserves half a
    # core unless the job says otherwise.
    return {"num_cpus": job.engine.num_cpus or 0.5}


def _still_valid(record: dict, files_by_uri: dict[str, InputFile]) -> bool:
    """A commit counts only if its input file is unchanged (same size and row count)."""
    file = files_by_uri.get(record["source"])
    return file is not None and file.size == record["size"] and file.rows == record["rows"]


IDENTITY_FILE = "_identity.json"


def _record_identity(output: Output, identity: RunIdentity, echo: Callable[[str], None]) -> None:
    """Staging of an earlier attempt under another identity is not resumed (its rows came
    from other weights, settings or code): say what changed and how many committed files
    restart, then keep this attempt's description beside its own staging."""
    root = output.location.join(STAGING)
    earlier: dict[str, Any] = {}  # fingerprint -> its description (None: not recorded)
    for info in root.list_files():
        fingerprint, _, name = info.path[len(root.path) :].lstrip("/").partition("/")
        if fingerprint != identity.fingerprint and (name == IDENTITY_FILE or fingerprint not in earlier):
            earlier[fingerprint] = Location(root.uri_of(info.path), root.storage).read_json() if name == IDENTITY_FILE else None
    for fingerprint, before in earlier.items():
        restarted = len(Output(output.location, fingerprint).committed())
        if not restarted:
            continue
        changes = "; ".join(identity.changes_since(before)) if before else f"fingerprint {fingerprint}, not recorded"
        echo(f"identity changed since the last attempt ({changes or 'the job definition'}): restarting {restarted} committed files")
    output.staging.join(IDENTITY_FILE).write_json(identity.description)
