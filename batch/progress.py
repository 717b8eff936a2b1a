"""The job's own progress line (rows done, rows/s, ETA), in place of Ray Data's progress
bars, which on a non-terminal console print a multi-line block every few seconds (66 blocks
for the 320-post demo). Ray's bars come back with `--verbose`."""

from __future__ import annotations

import logging
import time
from typing import Callable

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
