"""Each attempt's driver log, kept next to its output: `<output>/_logs/<run id>.log`.

On Kubernetes a failed attempt's Ray cluster and submitter are deleted when KubeRay retries or
cleans up, and `ray job logs` goes with them; this copy stays with the data it explains.
It holds everything the command prints (plan, progress, summary, the last line) and the
`batch.*` log records, each line stamped with UTC time, in addition to stdout.

The file is rewritten whole (object stores have no append): at most every
`FLUSH_SECONDS` when a line arrives, on SIGTERM (`ray job stop`, a pod deleted), and at the end
of the attempt whatever its outcome. A SIGKILL (OOM killer, a node lost) loses the lines since
the last write. Readers skip `_`-prefixed names, so the log never looks like data. Writing it
never fails the run: a storage error is reported once on stderr, and later writes try again.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

from batch.config import StorageConfig
from batch.io.storage import Location

LOGS = "_logs"
FLUSH_SECONDS = 30.0


class AttemptLog:
    """The lines of one attempt, printed as they come and written under the output once it is
    known (`place`)."""

    def __init__(self, echo: Callable[..., None], flush_seconds: float = FLUSH_SECONDS):
        self._echo = echo
        self._lines: list[str] = []
        self._target: Location | None = None
        self._flush_seconds = flush_seconds
        self._last_flush = 0.0
        self._warned = False
        self.handler = _Handler(self)

    def place(self, output_uri: str, storage: StorageConfig, run_id: str) -> str:
        """Once the output is known: where this attempt's log goes."""
        self._target = Location(output_uri, storage).join(LOGS, f"{run_id}.log")
        return self._target.uri

    def echo(self, message: str = "", err: bool = False) -> None:
        """Print as the CLI does, and keep the line."""
        self._echo(message, err=err)
        self.record(message)

    def record(self, message: str) -> None:
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._lines.extend(f"{stamp} {line}" for line in str(message).splitlines() or [""])
        if time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self._target is None:
            return
        self._last_flush = time.monotonic()
        data = ("\n".join(self._lines) + "\n").encode("utf-8")
        try:
            _write(self._target, data)
        except Exception as exc:  # noqa: BLE001 - the log must never fail the run; later writes try again
            if not self._warned:
                self._warned = True
                print(f"warning: cannot write the attempt log {self._target.uri}: {exc}", file=sys.stderr)


class Stopped(Exception):
    """SIGTERM: `ray job stop`, or Kubernetes deleting the pod. The run fails (exit 1: a retry resumes)."""


def stop_on_sigterm(log: AttemptLog) -> None:
    """Turn SIGTERM into an exception, after writing the log: Ray and Kubernetes follow it
    with SIGKILL after a grace period, which leaves no time for the rest of the unwinding."""

    def stop(signum, frame):
        log.record("stopped: SIGTERM received")
        log.flush()
        raise Stopped("stopped by SIGTERM (ray job stop, or the pod was deleted)")

    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        signal.signal(signal.SIGTERM, stop)


class _Handler(logging.Handler):
    """`batch.*` log records into the attempt log (the console handler prints them already)."""

    def __init__(self, log: AttemptLog):
        super().__init__()
        self._log = log
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._log.record(self.format(record))
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


def _write(target: Location, data: bytes) -> None:
    if target.is_s3:
        with target.fs.open_output_stream(target.path) as out:
            out.write(data)
        return
    os.makedirs(os.path.dirname(target.path), exist_ok=True)
    tmp = f"{target.path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as out:
        out.write(data)
    os.replace(tmp, target.path)
