"""The throughput benchmark keeps working: run at a tiny size, it completes and prints every
figure. Timing is never asserted here (shared machines are noisy): the figures themselves
live in BENCHMARKS.md."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_benchmark_runs_and_reports_every_figure(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--rows", "48", "--batch-size", "16",
         "--scenarios", "raw,job,warm", "--workdir", str(tmp_path), "--json", str(tmp_path / "figures.json")],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    out = result.stdout
    for heading in ("rows/s", "out tok/s", "start s", "steady s", "peak GiB", "inferred"):
        assert heading in out
    assert "ratio job/raw (rows/s, start-up included):" in out
    assert "warm rerun after 10% changed / cold run (wall):" in out
    figures = json.loads((tmp_path / "figures.json").read_text())["results"]
    for scenario in ("raw", "job", "warm"):
        entry = figures[scenario]
        assert entry["rows"] == 48 and entry["wall"] > 0 and entry["peak_gib"] > 0
        assert entry["output_tokens"] > 0 or scenario == "warm"
    # the warm rerun inferred only what changed; the rest came from the result cache
    assert figures["warm"]["requests_inferred"] < figures["job"]["requests_inferred"]
    assert figures["warm"]["cached_rows"] > 0
