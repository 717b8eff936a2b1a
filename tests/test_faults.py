"""Nightly runs that crash and rerun: the driver killed mid-run, an engine actor killed
mid-run, the object store going away mid-write. Each ends with every input id exactly once
in the published output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from conftest import REPO, cli_ok, run_cli, write_corpus, write_job

ROWS_PER_FILE, FILES = 40, 8


def corpus() -> list[dict]:
    return [{"id": f"{f}-{i}", "text": f"Post {f}-{i}: the delivery was late again, support never answered."}
            for f in range(FILES) for i in range(ROWS_PER_FILE)]  # fmt: skip


def slow_job(input_uri: str, output_uri: str, model: str) -> dict:
    """Translation with a fixed 32-token budget and small batches: slow enough to be hit
    mid-run by a test that waits for the first committed file."""
    return {
        "name": "faults",
        "input": {"uris": [input_uri], "id_column": "id", "text_column": "text"},
        "output": {"uri": output_uri},
        "engine": {"batch_size": 20, "max_model_len": 512},
        "tasks": {"translation": {"model": model, "target_languages": ["de"], "max_output_tokens": 32,
                                  "output_tokens_per_char": 1000.0}},
    }  # fmt: skip


def start_cli(*args: str, log: Path) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "batch", *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (value := condition()):
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"job exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def kill_tree(root: psutil.Process) -> None:
    """SIGKILL a process and everything below it (its local Ray cluster, workers, engines)."""
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=30)


def committed_local(output: Path) -> list[Path]:
    return list(output.glob("_staging/*/committed/*.json"))


def assert_every_id_once(table, rows: list[dict]) -> None:
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(row["id"] for row in rows)
    assert len(ids) == len(set(ids))


def local_slow_job(models, tmp_path) -> tuple[list[dict], Path, Path]:
    """The corpus on local disk, the output folder, the job file."""
    rows = corpus()
    write_corpus(None, str(tmp_path / "in"), rows, files=FILES)
    output = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", slow_job(str(tmp_path / "in"), str(output), str(models["chat"])))
    return rows, output, job


def test_driver_killed_mid_run_then_rerun_resumes(models, tmp_path):
    rows, output, job = local_slow_job(models, tmp_path)

    proc = start_cli("run", str(job), log=tmp_path / "first.log")
    wait_for(lambda: committed_local(output), 600, "a first committed input file", proc, tmp_path / "first.log")
    kill_tree(psutil.Process(proc.pid))
    assert not (output / "_SUCCESS").exists(), "a killed run must not look published"
    assert not list(output.glob("*.parquet")), "nothing reaches the published location before publish"
    committed_before = len(committed_local(output))
    assert 1 <= committed_before < FILES

    out = cli_ok(run_cli("run", str(job)))
    assert f"{committed_before} already committed" in out or "already committed" in out
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["input_files_resumed"] >= committed_before
    assert summary["rows_out"] == len(rows) and summary["rows_failed"] == 0
    assert_every_id_once(pq.read_table(output), rows)
    assert not (output / "_staging").exists() or not any((output / "_staging").iterdir())


def test_engine_actor_killed_mid_run_is_restarted(models, tmp_path):
    rows, output, job = local_slow_job(models, tmp_path)
    proc = start_cli("run", str(job), log=tmp_path / "run.log")
    driver = psutil.Process(proc.pid)

    def engine_actor():
        for child in driver.children(recursive=True):
            try:
                if "InferenceStage" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        return None

    wait_for(lambda: committed_local(output), 600, "a first committed input file", proc, tmp_path / "run.log")
    first = wait_for(engine_actor, 60, "the engine actor's process", proc, tmp_path / "run.log")
    kill_tree(first)
    replacement = wait_for(lambda: (a := engine_actor()) and a.pid != first.pid and a, 300, "a restarted actor", proc)
    assert replacement.pid != first.pid
    assert proc.wait(timeout=900) == 0, (tmp_path / "run.log").read_text()[-4000:]
    assert "SUCCEEDED: published" in (tmp_path / "run.log").read_text()
    assert_every_id_once(pq.read_table(output), rows)


def test_object_store_outage_fails_clearly_then_resumes(s3, models, tmp_path):
    from moto.server import ThreadedMotoServer

    rows = corpus()
    s3.bucket("faults-in")
    s3.bucket("faults-out")
    write_corpus(s3.fs, "faults-in/day", rows, files=FILES)
    job = slow_job("s3://faults-in/day/", "s3://faults-out/day/", str(models["chat"]))
    job["storage"] = {"retries": 3}
    job_path = write_job(tmp_path / "job.yaml", job)

    def committed_s3():
        from pyarrow.fs import FileSelector

        infos = s3.fs.get_file_info(FileSelector("faults-out/day/_staging", recursive=True, allow_not_found=True))
        return [i for i in infos if "/committed/" in i.path]

    proc = start_cli("run", str(job_path), log=tmp_path / "first.log")
    wait_for(committed_s3, 600, "a first committed input file", proc, tmp_path / "first.log")
    s3.server.stop()  # the object store goes away mid-run, mid-write
    try:
        code = proc.wait(timeout=600)
    finally:
        host, port = s3.endpoint.removeprefix("http://").split(":")
        s3.server = ThreadedMotoServer(ip_address=host, port=int(port), verbose=False)
        s3.server.start()  # same process, same in-memory buckets: the store comes back
    log = (tmp_path / "first.log").read_text()
    assert code == 1, log[-4000:]
    assert "FAILED:" in log and "rerun the same command to resume" in log
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in log

    out = cli_ok(run_cli("run", str(job_path)))
    assert "already committed" in out
    assert_every_id_once(pq.read_table("faults-out/day", filesystem=s3.fs), rows)
