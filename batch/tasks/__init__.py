"""The task registry. A job's `tasks:` maps a task NAME to its entry; the entry's `kind`
says which class runs it (one line per kind below). A name in PRESETS may leave `kind` out:
the preset gives its kind and the defaults its entry does not set. Adding a label task is a
job-file entry (`kind: label`); adding a kind is one module here and one line."""

from __future__ import annotations

from typing import Any

from batch.tasks import sentiment
from batch.tasks.base import Task, TaskConfig
from batch.tasks.label import LabelTask
from batch.tasks.translation import TranslationTask

KINDS: dict[str, type[Task]] = {
    "translation": TranslationTask,
    "label": LabelTask,
}

# name -> (kind, defaults of its entry)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "translation": ("translation", {}),
    "sentiment": ("label", sentiment.PRESET),
}


def build_task(name: str, config: TaskConfig) -> Task:
    """The task named `name` in a job, run by the class of its config's kind."""
    return KINDS[config.kind](config, name=name)  # type: ignore[attr-defined]


def with_preset(name: str, entry: Any) -> Any:
    """A raw job-file entry with its preset's kind and defaults filled in, where it has one."""
    if name not in PRESETS or not isinstance(entry, dict):
        return entry
    kind, defaults = PRESETS[name]
    if entry.get("kind", kind) != kind:
        return entry
    return {"kind": kind, **defaults, **entry}
