"""Named fault points, for crash tests only.

`BATCH_FAULT` names points, comma-separated, each optionally with the count at which it
fires: `publish.after_part@3` (the third time), `commit.after_file` (the first time). The
code calls `fault_point(name)` exactly where a crash or an error is to be simulated; with
the variable unset that is one dictionary lookup. Two kinds of action:

- `fault_point(name)`: SIGKILL this process and every process below it (a local Ray
  cluster started by the driver dies with it, as on a lost node): no `finally`, no atexit.
- `fault_raise(name, exc)`: raise `exc` there instead (a transient engine error, say).

Counts are per process.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "BATCH_FAULT"
_seen: Counter = Counter()


def _fires(name: str) -> bool:
    spec = os.environ.get(ENV)
    if not spec:
        return False
    _seen[name] += 1
    for item in spec.split(","):
        point, _, at = item.strip().partition("@")
        if point == name and (not at or int(at) == _seen[name]):
            return True
    return False


def fault_point(name: str) -> None:
    """SIGKILL this process tree here when `BATCH_FAULT` names this point."""
    if not _fires(name):
        return
    import psutil

    me = psutil.Process()
    for child in me.children(recursive=True):
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def fault_raise(name: str, exc: BaseException) -> None:
    """Raise `exc` here when `BATCH_FAULT` names this point."""
    if _fires(name):
        raise exc
