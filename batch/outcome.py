"""How a run ends, as the exit status a scheduler acts on.

One meaning everywhere: `python -m batch run`, `jobs/submit.sh` and, through the Ray job's
driver exit code, the RayJob on Kubernetes (docs/OPERATIONS.md, "What a scheduler sees").

| exit | name      | meaning                                                     | retry?          |
|------|-----------|-------------------------------------------------------------|-----------------|
| 0    | SUCCEEDED | published (now, or by an earlier attempt)                   | nothing to do   |
| 1    | FAILED    | the run stopped: storage, engine, lost node, stopped by hand | yes: it resumes |
| 2    | PARTIAL   | published, but some input files could not be read           | no: fix inputs  |
| 3    | INVALID   | the job, its arguments or its inputs are wrong               | no: fix the job |
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    SUCCEEDED = 0
    FAILED = 1
    PARTIAL = 2
    INVALID = 3


def exit_for_summary(status: str, unreadable_inputs: list) -> Exit:
    """A run that returned a summary published something: complete, or with unreadable inputs."""
    if status in ("published", "already published") and not unreadable_inputs:
        return Exit.SUCCEEDED
    return Exit.PARTIAL
