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

import dataclasses
import datetime as dt
import json
import logging
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from batch.cache import row_cache_identity
from batch.config import ConfigError, JobConfig
from batch.infer import models
from batch.infer.engine import EngineSpec, batch_size_for, resolve_engine_settings
from batch.infer.stage import InferenceStage, StageSpec
from batch.io.read import BadInput, InputFile, make_reader, plan_inputs, read_slices
from batch.io.storage import Location
from batch.io.write import FileProgress, Output, job_fingerprint, make_part_writer
from batch.parse import ParseStage
from batch.prepare import PrepareStage, TextStageSpec
from batch.summary import RunSummary
from batch.tasks import TASKS
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


def engine_groups(job: JobConfig, device: str) -> list[EngineGroup]:
    """Tasks that name the same model and runner share an engine; their LoRA adapters are
    served side by side by that engine (vLLM multi-LoRA), so base weights load once."""
    settings = resolve_engine_settings(job.engine, device)
    groups: dict[tuple[str, str], EngineGroup] = {}
    for name, config in job.enabled_tasks().items():
        task = TASKS[name](config)
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
                **settings,
            )
            groups[key] = EngineGroup(spec)
        group = groups[key]
        if config.trust_remote_code != group.spec.trust_remote_code:
            raise ConfigError(f"tasks.{name}.trust_remote_code: tasks sharing model {config.model} must agree on it")
        if adapters := task.adapters():
            group.spec = dataclasses.replace(group.spec, adapters=(*group.spec.adapters, *adapters.items()))
        group.tasks.append((name, config))
    return list(groups.values())


def check_models(job: JobConfig) -> None:
    """What can be checked of the models without loading them: a classifier's own labels
    (its config.json `id2label`) must map onto the job's labels. Runs before Ray starts."""
    problems = []
    for name, config in job.enabled_tasks().items():
        task = TASKS[name](config)
        if task.engine_runner() != "classify":
            continue
        model_config = models.read_config(config.model, job.storage)
        if model_config is None:  # a hub id: checked when the engine loads it
            continue
        id2label = model_config.get("id2label") or {}
        if not id2label:
            problems.append(f"tasks.{name}.model {config.model}: config.json has no id2label; is it a classifier?")
        problems += task.check_model_labels(id2label)
    if problems:
        raise ConfigError("\n".join(problems))


def connect_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # "local" starts a fresh local cluster: never attach to a stale one left by a killed head.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # A local cluster lives for one run: no dashboard, whose processes take CPU from the
    # engine while it starts (the progress lines and _summary.json say what it would).
    extra = {"include_dashboard": False} if address == "local" else {}
    ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING, **extra)


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
) -> RunSummary:
    started = time.time()
    run_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    output = Output(Location(job.output.uri, job.storage), job_fingerprint(_definition(job)))
    summary = RunSummary(run_id=run_id, job=job.redacted(), output=job.output.uri, started=started)

    if output.is_published() and not overwrite:
        echo(f"{job.output.uri} is already published (_SUCCESS exists); nothing to do. Use --overwrite to redo it.")
        summary.status = "already published"
        return summary

    # plan
    check_models(job)
    files, bad_inputs = plan_inputs(job.input, job.storage)
    if missing := missing_hash_columns(job.privacy, {column for file in files for column in file.columns}):
        raise ConfigError(f"privacy.hash_columns: no column {missing[0]!r} in any input file (a misspelt id column?)")
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

    progress = {file.uri: FileProgress(file) for file in pending}
    for file in pending:
        if file.rows == 0:  # nothing to read; commit now so the file counts as done
            committed[file.uri] = output.commit(progress.pop(file.uri))

    if progress:
        _process(job, output, run_id, progress, committed, summary, ray_address, echo)

    # check and publish
    missing = [uri for uri in (f.uri for f in files) if uri not in committed]
    if missing:
        raise RunFailed(f"{len(missing)} input files were not fully written (first: {missing[0]}); rerun to resume")
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
        "inputs": [{"uri": r["source"], "rows": r["rows"], "size": r["size"]} for r in committed.values()],
        "unreadable_inputs": [dataclasses.asdict(bad) for bad in bad_inputs],
    }
    summary.status = "published" if not bad_inputs else "published with unreadable inputs"
    output.publish(list(committed.values()), manifest, summary.to_dict())
    return summary


def _process(
    job: JobConfig,
    output: Output,
    run_id: str,
    progress: dict[str, FileProgress],
    committed: dict[str, dict],
    summary: RunSummary,
    ray_address: str | None,
    echo: Callable[[str], None],
) -> None:
    import ray

    connect_ray(ray_address)
    device = detect_device(job)
    groups = engine_groups(job, device)
    summary.engines = [
        {"model": g.spec.model, "runner": g.spec.runner, "device": device, "replicas": job.engine.replicas,
         "tasks": [name for name, _ in g.tasks], "adapters": [name for name, _ in g.spec.adapters]}
        for g in groups
    ]  # fmt: skip

    files = [p.file for p in progress.values()]
    cache_uri = job.cache.uri if job.cache.enabled else None
    text_spec = TextStageSpec(
        tasks=tuple((name, config) for group in groups for name, config in group.tasks),
        text_column=job.input.text_column,
        cache_uri=cache_uri,
        cache_identities=_row_cache_identities(job, groups) if job.cache.enabled else {},
        storage=job.storage,
        privacy=job.privacy,
    )
    text_stage = dict(
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=job.engine.text_workers or job.engine.replicas),
        num_cpus=TEXT_STAGE_CPUS,
    )
    dataset = ray.data.from_items(read_slices(files), override_num_blocks=max(1, len(files)))
    dataset = dataset.map_batches(
        make_reader(job.input, job.storage), batch_size=1, batch_format="pyarrow", num_cpus=TEXT_STAGE_CPUS
    )
    # Prepare and parse take whole blocks as they come (batch_size None): Ray Data fuses the
    # read into the prepare actor, and a row count there would bundle several slices into
    # one long task whose output reaches the engine only at its end.
    dataset = dataset.map_batches(
        PrepareStage, fn_constructor_kwargs={"spec": text_spec}, batch_size=None, **text_stage
    )
    for group in groups:
        dataset = dataset.map_batches(
            InferenceStage,
            fn_constructor_kwargs={
                "spec": StageSpec(
                    engine=group.spec,
                    tasks=tuple(group.tasks),
                    cache_uri=cache_uri,
                )
            },
            batch_size=batch_size_for(job.engine, device),
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=job.engine.replicas),
            **_actor_resources(job, device),
        )
    # parse, then write from the same actor (see batch/parse.py)
    write = make_part_writer(output.staging, run_id)
    dataset = dataset.map_batches(
        ParseStage, fn_constructor_kwargs={"spec": text_spec, "write": write}, batch_size=None, **text_stage
    )

    total = sum(p.file.rows for p in progress.values())
    try:
        _consume(dataset.iter_rows(), progress, committed, output, summary, total, echo)
    except Exception as exc:  # noqa: BLE001 - anything that stops the stream stops the run
        raise RunFailed(
            f"processing stopped: {_root_cause(exc)}. {len(committed)} input files are committed; "
            f"rerun the same command to resume from there."
        ) from exc


def _consume(records, progress, committed, output: Output, summary: RunSummary, total: int, echo) -> None:
    """The driver's loop over write records: count rows per input file, commit each file
    as soon as all its rows are written, report progress."""
    done, last_report, t0 = 0, 0.0, time.time()
    for record in records:
        if summary.seconds_to_first_row is None:
            summary.seconds_to_first_row = round(time.time() - summary.started, 2)
        file_progress = progress[record["source"]]
        file_progress.parts.append(record["part"])
        file_progress.rows += record["rows"]
        file_progress.counts = dict(Counter(file_progress.counts) + Counter(json.loads(record["counts"])))
        done += record["rows"]
        if file_progress.complete:
            committed[record["source"]] = output.commit(file_progress)
        now = time.time()
        if now - last_report > 10 or done == total:
            rate = done / max(now - t0, 1e-9)
            echo(f"progress: {done}/{total} rows ({done / max(total, 1):.0%}), {rate:.1f} rows/s")
            last_report = now


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


def _row_cache_identities(job: JobConfig, groups: list[EngineGroup]) -> dict[str, str]:
    """Per task, the identity its row cache is filed under (batch/cache.py), from what the
    driver can know without loading weights: configs and the weights' identities."""
    identities = {}
    for group in groups:
        spec = group.spec
        engine = {
            "model": models.weights_identity(spec.model, job.storage),
            "adapters": {name: models.weights_identity(uri, job.storage) for name, uri in spec.adapters},
            "runner": spec.runner, "dtype": spec.dtype, "max_model_len": spec.max_model_len, "seed": spec.seed,
        }  # fmt: skip
        for name, config in group.tasks:
            identities[name] = row_cache_identity(name, config.model_dump(mode="json"), engine)
    return identities


def _actor_resources(job: JobConfig, device: str) -> dict[str, Any]:
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


def _definition(job: JobConfig) -> dict[str, Any]:
    """What determines the output's content: the resume fingerprint is computed from it."""
    return {
        "input": job.input.model_dump(), "tasks": job.tasks.model_dump(), "engine_seed": job.engine.seed,
        "privacy": job.privacy.model_dump(),  # masked or not, redacted or not: a resume never mixes them
    }  # fmt: skip
