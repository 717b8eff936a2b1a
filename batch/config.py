"""The job file: typed, validated once, before Ray or any engine starts.

A job file is YAML. `load_job` reads it, applies `--set key.path=value` overrides,
fills `{date}` in the output URI and validates everything with pydantic
(`extra="forbid"` everywhere, so a misspelt key is an error that names the key
and the keys allowed in its place).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batch.tasks import KINDS, PRESETS, build_task, with_preset
from batch.text.privacy import PrivacyConfig


class ConfigError(Exception):
    """A job file that cannot run; the message says which field and how to fix it."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputConfig(Strict):
    uris: list[str] = Field(min_length=1, description="Parquet files, folders/prefixes or globs; local or s3://")
    id_column: str = "id"
    text_column: str = "text"
    columns: list[str] | None = Field(
        default=None, description="original columns to carry to the output; default: all of them"
    )

    @field_validator("uris", mode="before")
    @classmethod
    def _one_uri_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class OutputConfig(Strict):
    uri: str = Field(description="where the annotated Parquet is published; `{date}` is the run date")
    rows_per_file: int = Field(default=100_000, gt=0)
    lease_seconds: float = Field(
        default=600, ge=1, description="one run per output: a killed run's lease expires this long after its last heartbeat"
    )


class StorageConfig(Strict):
    """Object storage settings. Credentials never go here: they come from the standard
    AWS chain (environment, shared config, instance role) on every node."""

    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint; default $AWS_ENDPOINT_URL, else AWS"
    )
    region: str | None = None
    retries: int = Field(default=5, ge=0, description="attempts on a transient object-store error")


class CacheConfig(Strict):
    """The result cache: answers kept next to the output, so an unchanged text is inferred
    once across nights (see batch/cache.py)."""

    enabled: bool = True
    uri: str | None = Field(default=None, description="default: beside the output, before its {date} part")
    retention_days: int | None = Field(
        default=90, ge=1, description="entries no run used (hit or wrote) for this many days are dropped; null: kept"
    )
    compact_after_publish: bool = Field(
        default=True, description="fold new files, apply retention and index new entries once the output is published"
    )
    version_grace_hours: float = Field(
        default=24, ge=0, description="files a compaction replaced are deleted once this old (a run may still read them)"
    )


class EngineConfig(Strict):
    """How each inference replica is sized. Unset fields take per-device defaults
    (see `batch.infer.engine.resolve_engine_settings`)."""

    replicas: int = Field(default=1, ge=1, description="actors, each holding one engine per model")
    text_workers: int | None = Field(
        default=None, ge=1,
        description="actors for each of the prepare and parse stages (language ID, masking, guardrails); "
        "default: one per replica",
    )  # fmt: skip
    batch_size: int | None = Field(
        default=None, ge=1, description="rows per slice: one read task, one engine call (whole row groups); default 1024 (see batch_size_for)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1)
    accelerator_type: str | None = Field(default=None, description="Ray accelerator type, e.g. L4, A10G, H100")
    num_cpus: float | None = Field(default=None, gt=0, description="CPUs reserved per actor")
    dtype: str | None = None
    max_model_len: int | None = Field(default=None, gt=0)
    max_num_seqs: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    enforce_eager: bool | None = None
    in_process: bool | None = Field(
        default=None,
        description="run vLLM's engine core inside the actor (no engine process); default: yes on CPU, no on GPU",
    )
    kv_cache_gib: float | None = Field(default=None, gt=0, description="KV cache size; default: vLLM's (GPU), 1 GiB (CPU)")
    enable_prefix_caching: bool = True
    seed: int = 0
    max_restarts: int = Field(
        default=3, ge=0,
        description="times a model's engine may die (and its actor be restarted) or a batch's engine call fail "
        "(and be retried) before the run fails; an engine error for the whole call is never a row error",
    )  # fmt: skip


# One task entry of `tasks:`: the config class of its kind, chosen by its `kind` field (filled
# in from the task's name by `with_preset` where the name has a preset).
TaskEntry = Annotated[Union[tuple(kind.Config for kind in KINDS.values())], Field(discriminator="kind")]  # type: ignore[misc]


class TaskMap(dict):
    """`job.tasks`: task name -> config (None: switched off). A task is also an attribute
    (`job.tasks.translation`, None when the job has no such task), as before names were free."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)


# Columns every output has (batch/schema.py): no task may write them.
RESERVED_COLUMNS = ("error", "skip_reason", "run_id")
# Old job files named one task of each kind and got translation's columns before sentiment's,
# whatever their order in the file: kept so; any other task follows in file order.
_FIRST = {"translation": 0, "sentiment": 1}


class JobConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    input: InputConfig
    output: OutputConfig
    storage: StorageConfig = StorageConfig()
    engine: EngineConfig = EngineConfig()
    cache: CacheConfig = CacheConfig()
    tasks: dict[str, TaskEntry | None] = Field(
        description="task name -> its config; `kind` says what it does (translation, label)"
    )
    privacy: PrivacyConfig = PrivacyConfig()  # personal data: batch/text/privacy.py
    max_row_error_rate: float = Field(
        default=0.05, ge=0, le=1, description="above this share of failed rows the run fails instead of publishing"
    )

    @field_validator("tasks", mode="before")
    @classmethod
    def _presets(cls, tasks: Any) -> Any:
        return {name: with_preset(name, entry) for name, entry in tasks.items()} if isinstance(tasks, dict) else tasks

    @field_validator("tasks", mode="after")
    @classmethod
    def _task_map(cls, tasks: dict[str, Any]) -> TaskMap:
        return TaskMap(tasks)

    @model_validator(mode="after")
    def _at_least_one_task(self) -> "JobConfig":
        if not self.enabled_tasks():
            raise ValueError(
                f"tasks: name at least one task (e.g. sentiment, translation, or any name with kind: {' | '.join(KINDS)})"
            )
        return self

    @model_validator(mode="after")
    def _distinct_columns(self) -> "JobConfig":
        owner: dict[str, str] = {name: "the output itself" for name in RESERVED_COLUMNS}
        for name, config in self.enabled_tasks().items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"tasks.{name}: a task name is lower-case letters, digits and _ (it names columns)")
            task = build_task(name, config)
            for column in [field.name for field in task.columns()] + [task.model_column()]:
                if column in owner:
                    raise ValueError(
                        f"tasks.{name}: column {column!r} is also written by {owner[column]}; "
                        f"give one of them its own column prefix (tasks.<name>.column)"
                    )
                owner[column] = f"tasks.{name}"
        return self

    @model_validator(mode="after")
    def _text_is_masked_not_hashed(self) -> "JobConfig":
        if self.input.text_column in self.privacy.hash_columns:
            raise ValueError("privacy.hash_columns: the text column is masked, not hashed; list id columns only")
        carried = None if self.input.columns is None else {self.input.id_column, *self.input.columns}
        if carried is not None and (dropped := [c for c in self.privacy.hash_columns if c not in carried]):
            raise ValueError(f"privacy.hash_columns: {dropped[0]!r} is not among input.columns: it is not published")
        return self

    def enabled_tasks(self) -> dict[str, Any]:
        """Task name -> config, in the order their columns are written."""
        named = sorted(self.tasks.items(), key=lambda item: _FIRST.get(item[0], len(_FIRST)))
        return {name: config for name, config in named if config is not None}

    def redacted(self) -> dict[str, Any]:
        """The job as resolved, for summaries and logs (the job file holds no secrets by design)."""
        return self.model_dump(mode="json")


# --- loading ---------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def load_job(path: str | os.PathLike, overrides: list[str] = (), *, run_date: dt.date | None = None) -> JobConfig:
    """Read, override, validate. Raises ConfigError with a message naming the field."""
    path = Path(path)
    raw = read_yaml_mapping(path, "job file", "a mapping of keys (name, input, output, tasks, ...)")
    for override in overrides:
        apply_override(raw, override)
    return validate_job(raw, source=str(path), run_date=run_date)


def read_yaml_mapping(path: Path, what: str, shape: str, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """A YAML file that must hold a mapping (a job file, a fine-tuning spec, a template):
    one line naming the file when it is missing, not YAML, or not a mapping."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: a {what} is {shape}")
    return raw


def validate_job(raw: dict[str, Any], *, source: str = "job", run_date: dt.date | None = None) -> JobConfig:
    try:
        job = JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid job file:\n" + format_validation_error(exc)) from None
    from batch.cache import default_cache_uri

    run_date = run_date or dt.datetime.now(dt.timezone.utc).date()
    uri = fill_date(job.output.uri, run_date, source)
    # An input may name the day's drop by its date too (s3://corpus-raw/posts/{date}/), so that
    # `--date` alone chooses what a scheduled run reads and where it writes.
    input_uris = [fill_date(u, run_date, source, field=f"input.uris[{i}]") for i, u in enumerate(job.input.uris)]
    cache_uri = job.cache.uri or default_cache_uri(job.output.uri)
    if "{" in cache_uri:
        raise ConfigError(f"{source}: cache.uri: no placeholders here; the cache is shared by every run date")
    if problem := job.privacy.key_problem():  # hashing without its key must not start at all
        raise ConfigError(f"{source}: {problem}")
    return job.model_copy(
        update={
            "input": job.input.model_copy(update={"uris": input_uris}),
            "output": job.output.model_copy(update={"uri": uri}),
            "cache": job.cache.model_copy(update={"uri": cache_uri}),
        }
    )


def fill_date(uri: str, run_date: dt.date, source: str, field: str = "output.uri") -> str:
    unknown = [name for name in _PLACEHOLDER.findall(uri) if name != "date"]
    if unknown:
        raise ConfigError(f"{source}: {field}: unknown placeholder {{{unknown[0]}}}; the only one is {{date}}")
    return uri.replace("{date}", run_date.isoformat())


def apply_override(raw: dict[str, Any], override: str) -> None:
    """`a.b.c=value`: value is read as YAML, so numbers, booleans and [lists] keep their type."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. tasks.sentiment.model=/models/xlmr")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override!r}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


def format_validation_error(exc: ValidationError, root: type[BaseModel] | None = None) -> str:
    """One line per error, naming the field; `root` is the model validated (default: a job file)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in _shown(err["loc"])) or "(top level)"
        if err["type"] in ("union_tag_not_found", "union_tag_invalid") and err["loc"][:1] == ("tasks",):
            name = err["loc"][1]
            what = "required" if err["type"] == "union_tag_not_found" else f"unknown kind {err['ctx']['tag']!r}"
            lines.append(
                f"  tasks.{name}.kind: {what}; kinds: {', '.join(KINDS)} "
                f"(a task named {' or '.join(PRESETS)} may leave it out)"
            )
        elif err["type"] == "extra_forbidden":
            allowed = _allowed_keys(err["loc"][:-1], root or JobConfig)
            hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"  {loc}: unknown key{hint}")
        elif err["type"] == "missing":
            lines.append(f"  {loc}: required")
        elif err["type"] == "value_error":  # our validators' own words, without pydantic's prefix
            lines.append(f"  {loc}: {err['ctx']['error']}")
        else:
            lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def _shown(loc: tuple) -> tuple:
    """An error's location as the job file spells it: without the kind pydantic adds after
    a task's name (`tasks.topic.label.labels` -> `tasks.topic.labels`)."""
    if loc[:1] == ("tasks",) and len(loc) > 2 and loc[2] in KINDS:
        return loc[:2] + loc[3:]
    return loc


def _allowed_keys(loc: tuple, root: type[BaseModel]) -> list[str]:
    model: Any = root
    if root is JobConfig and loc[:1] == ("tasks",) and len(loc) > 2 and loc[2] in KINDS:
        model, loc = KINDS[loc[2]].Config, loc[3:]  # a task entry: its kind's config
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if (found := _model_in(arg)) is not None:
            return found
    return None
