"""Report and eval plug-ins, one module per task KIND (as batch/tasks/ has one per task).

A kind module contributes, for each task of its kind in an output:
    describe(name, config) / infer(output)   the task's description from an old run summary's
                                             job config, or from the schema alone
    plan(description, output, options, job)  a task object: columns() it reads, count(batch)
                                             -> mergeable counts (with .add), build(counts,
                                             frame) -> its report.json section
    alerts(section)                          its alerts, flat (for the header, --notify, exit)
    lines / charts / html                    terminal lines, PNG charts, the page's section
    score / format_score                     eval scoring and its printout
    LEGACY                                   old job-file task names that are this kind

The frame (build.py, page.py, command.py) loops over the tasks found and names none of them.
A new kind is its module here and one line below.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from batch.report.sections import label, translation

KINDS: dict[str, ModuleType] = {
    "label": label,
    "translation": translation,
}


def kind_of_legacy(name: str) -> str | None:
    """The kind an old job file's task name stands for (`sentiment` -> label), if any."""
    return next((kind for kind, module in KINDS.items() if name in module.LEGACY), None)


def discover(summary: Any, output) -> tuple[list[dict[str, Any]], str]:
    """The output's tasks as descriptions ({name, kind, ...}), and where they came from:
    the run summary's `tasks` (the job's own description), else its job config (old
    outputs), else the schema."""
    if isinstance(summary, dict) and isinstance(summary.get("tasks"), list):
        return [item for item in summary["tasks"] if isinstance(item, dict) and item.get("name")], "summary"
    job = summary.get("job") if isinstance(summary, dict) else None
    configured = job.get("tasks") if isinstance(job, dict) else None
    if isinstance(configured, dict):
        found = []
        for name, config in configured.items():
            if config is None or config is False:
                continue
            config = config if isinstance(config, dict) else {}
            kind = config.get("kind") or kind_of_legacy(name)
            found.append(KINDS[kind].describe(name, config) if kind in KINDS else {"name": name, "kind": kind})
        return found, "job"
    return [item for module in KINDS.values() for item in module.infer(output)], "schema"
