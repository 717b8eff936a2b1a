"""The job's own progress line (rows done, rows/s, ETA), in place of Ray Data's progress
bars, which on a non-terminal console print a multi-line block every few seconds (66 blocks
for the 320-post demo). Ray's bars come back with `--verbose`.

Also an opt-in trace of where a run's seconds go: with `BATCH_TRACE=/path/trace.jsonl` in
the environment, the driver and every stage's actors append one JSON line per event
(`{"t": unix time, "event": ..., "pid": ...}`): the driver's phases, each actor's
construction, its engine's start, each batch in and out. benchmarks/throughput.py reads it
for its start-up breakdown. Off (one environment lookup) unless set."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable

TRACE = "BATCH_TRACE"  # env: a file to append the run's trace events to (JSON lines)


def trace(event: str, at: float | None = None, **fields) -> None:
    """One event of the run's trace, stamped with the wall clock and this process. Workers of
    a local cluster inherit the driver's environment, so one file collects every process's
    events; lines are appended in one write, so processes can share the file."""
    path = os.environ.get(TRACE)
    if not path:
        return
    line = json.dumps({"t": round(at or time.time(), 3), "event": event, "pid": os.getpid(), **fields})
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")

REPORT_EVERY_S = 10.0


def verbose() -> bool:
    """The command runs with --verbose (the CLI then logs at INFO)."""
    return logging.getLogger().isEnabledFor(logging.INFO)


def quiet_ray_data() -> None:
    """Ray Data's progress bars and execution banners off unless --verbose."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose()
    context.enable_operator_progress_bars = verbose()
    context.print_on_execution_start = verbose()
    logging.getLogger("ray.data").setLevel(logging.INFO if verbose() else logging.WARNING)


def quiet_workers_env() -> dict:
    """For a local cluster the driver starts: vLLM's INFO and WARNING lines (engine start-up,
    weight loading bars, CPU-build advice such as tcmalloc) stay in the workers' logs unless
    --verbose; its errors still reach the console."""
    if verbose():
        return {}
    return {"env_vars": {"VLLM_LOGGING_LEVEL": "ERROR", "TRANSFORMERS_VERBOSITY": "error",
                         "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}}  # fmt: skip


class ProgressLine:
    """`progress: 120/320 rows (38%), 12.3 rows/s, ETA 16 s`, at most every REPORT_EVERY_S
    seconds and once at the end."""

    def __init__(self, total: int, echo: Callable[[str], None]):
        self.total, self.echo = total, echo
        self.done, self.started, self.last = 0, time.time(), 0.0

    def advance(self, rows: int) -> None:
        self.done += rows
        now = time.time()
        if now - self.last < REPORT_EVERY_S and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-9)
        eta = f", ETA {(self.total - self.done) / rate:.0f} s" if self.done < self.total and rate > 0 else ""
        self.echo(f"progress: {self.done}/{self.total} rows ({self.done / max(self.total, 1):.0%}), {rate:.1f} rows/s{eta}")


def process_started() -> float | None:
    """When this process started (a Ray worker: before it imported anything), if tracing."""
    if TRACE not in os.environ:
        return None
    import psutil

    return round(psutil.Process().create_time(), 3)


def traced(stage: type, name: str) -> type:
    """`stage` (a Ray Data callable class) with trace events around its construction and
    each call: a subclass under the same name, so Ray Data builds, calls and names it as before."""

    class Traced(stage):
        def __init__(self, *args, **kwargs):
            trace(f"{name}.init", process_started=process_started())
            super().__init__(*args, **kwargs)
            trace(f"{name}.ready")

        def __call__(self, batch):
            trace(f"{name}.batch_in", rows=batch.num_rows)
            out = super().__call__(batch)
            trace(f"{name}.batch_out", rows=batch.num_rows)
            return out

    Traced.__name__ = Traced.__qualname__ = stage.__name__
    return Traced
