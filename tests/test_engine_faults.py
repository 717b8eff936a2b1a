"""Engine faults are not row faults. A dead engine ends its actor's process, Ray restarts the
actor and resubmits the batch; an engine error for a whole call (out of memory, a timeout) is
retried as a batch; both are bounded by engine.max_restarts, then the run fails with one line.
Only a request the engine rejects for what it asks becomes that row's error.

The faults are vLLM's own exceptions raised at the engine call (BATCH_FAULT, batch/faults.py),
in the engine actor's process: the variable reaches it because the driver's local Ray cluster
inherits the driver's environment. Counts are per process, so `engine.dead@3` kills the first
actor at its third engine call and its replacement, which needs two calls for the rest of the
corpus, never reaches a third."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import cli_ok, run_cli, write_corpus, write_job

FILES, ROWS_PER_FILE = 2, 10
LABELS = ["negative", "neutral", "positive"]
TOO_LONG_ID = "1-3"


def corpus(with_too_long: bool = False) -> list[dict]:
    rows = [{"id": f"{f}-{i}", "text": f"Post {f}-{i}: the parcel came {i} days late."}
            for f in range(FILES) for i in range(ROWS_PER_FILE)]  # fmt: skip
    if with_too_long:  # far past max_model_len (256) in any tokenizer
        next(row for row in rows if row["id"] == TOO_LONG_ID)["text"] = "late parcel, no answer. " * 200
    return rows


def engine_job(tmp_path: Path, model: Path, rows: list[dict], long_text: str = "chunk", **engine) -> Path:
    """Sentiment in generate mode (label decoded by the engine), 5 rows per engine call:
    the 20 rows reach the engine actor as 2 batches of 10 rows, 2 engine calls each."""
    write_corpus(None, str(tmp_path / "in"), rows, files=FILES)
    job = {
        "name": "engine-faults",
        "input": {"uris": [str(tmp_path / "in")]},
        "output": {"uri": str(tmp_path / "out")},
        "engine": {"batch_size": 5, "max_model_len": 256, **engine},
        "cache": {"enabled": False},  # every batch goes to the engine, on every attempt
        "max_row_error_rate": 0.5,
        "tasks": {"sentiment": {"model": str(model), "labels": LABELS, "probabilities": False, "long_text": long_text}},
    }
    return write_job(tmp_path / "job.yaml", job)


def published(tmp_path: Path) -> tuple[list[dict], dict]:
    out = tmp_path / "out"
    return pq.read_table(out).to_pylist(), json.loads((out / "_summary.json").read_text())


def assert_every_row_once(output: list[dict], rows: list[dict]) -> None:
    assert sorted(row["id"] for row in output) == sorted(row["id"] for row in rows)


def test_dead_engine_restarts_its_actor_and_the_batch_is_retried(models, tmp_path):
    rows = corpus()
    job = engine_job(tmp_path, models["chat"], rows)

    result = run_cli("run", str(job), env={"BATCH_FAULT": "engine.dead@3"})

    out = cli_ok(result)
    output, summary = published(tmp_path)
    assert_every_row_once(output, rows)
    assert [row["error"] for row in output] == [None] * len(rows)
    assert all(row["sentiment"] in LABELS for row in output)
    assert summary["rows_failed"] == 0
    assert summary["engines"][0]["restarts"] == 1, summary["engines"]
    assert "died 1 time(s), restarted each time; last error: EngineDeadError" in out
    assert "restarting its actor (restart 1 of 3)" in result.stderr


def test_engine_that_keeps_dying_fails_the_run_in_one_line(models, tmp_path):
    job = engine_job(tmp_path, models["chat"], corpus(), max_restarts=1)

    result = run_cli("run", str(job), env={"BATCH_FAULT": "engine.dead"})  # every actor's first call

    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("FAILED: processing stopped: EngineFailed: the engine for "), last
    assert f"{models['chat']} died 2 times (engine.max_restarts is 1); last error: EngineDeadError" in last
    out = tmp_path / "out"
    assert not (out / "_SUCCESS").exists()
    assert not list(out.glob("*.parquet")), "nothing published"


def test_engine_error_for_a_whole_call_is_retried_and_a_rejected_request_is_a_row_error(models, tmp_path):
    """A row that cannot be served (`long_text: error`: longer than the context) stays that
    row's error while the batch around it is retried for an engine error; the engine's own
    rejection of one request is shown in process, below."""
    rows = corpus(with_too_long=True)
    job = engine_job(tmp_path, models["chat"], rows, long_text="error")

    # out of memory, once, for the second call: the whole batch again, no row error from it
    result = run_cli("run", str(job), env={"BATCH_FAULT": "engine.call_error@2"})

    cli_ok(result)
    assert "retrying the batch (retry 1 of 3)" in result.stderr
    output, summary = published(tmp_path)
    assert_every_row_once(output, rows)
    errors = {row["id"]: row["error"] for row in output if row["error"] is not None}
    assert list(errors) == [TOO_LONG_ID], errors
    assert errors[TOO_LONG_ID].startswith("sentiment: text of "), errors
    assert "does not fit max_model_len 256" in errors[TOO_LONG_ID]
    assert summary["rows_failed"] == 1
    assert summary["engines"][0]["restarts"] == 0


def test_only_what_vllm_rejects_for_the_request_is_a_row_error(models):
    """In one process, the stage's own failure handling on a real engine: vLLM's validation
    error for one request (max_tokens 0 here; an out-of-vocabulary token id alike) fails
    that request alone; an error that is not the request's (out of memory) fails the
    batch's attempt, to be retried, and records no row error."""
    from vllm.exceptions import VLLMValidationError
    from vllm.inputs import TokensPrompt
    from vllm.v1.engine.exceptions import EngineDeadError

    from batch.config import EngineConfig
    from batch.infer.engine import Engine, EngineSpec, resolve_engine_settings
    from batch.infer.stage import EngineCallFailed, InferenceStage, StageSpec
    from batch.tasks.base import Completion, Failure, Generate
    from batch.tasks.sentiment import SentimentConfig

    engine = EngineSpec(
        model=str(models["chat"]), runner="generate", device="cpu",
        # the engine core in its own process, as in test_models.py: moto's Flask may be in this one
        **resolve_engine_settings(EngineConfig(max_model_len=256, in_process=False), "cpu"),
    )  # fmt: skip
    stage = InferenceStage(StageSpec(
        engine=engine, tasks=(("sentiment", SentimentConfig(model=str(models["chat"]))),),
        provenance=(("sentiment", "tiny-chat"),), cache_identity="unused",  # no result cache here
    ))  # fmt: skip
    try:
        ask = [Generate(messages=(("user", f"post {i}"),), max_tokens=4 if i != 1 else 0) for i in range(3)]
        results = stage._run_isolating_failures(stage.engine.generate, ask)
        assert [type(r) for r in results] == [Completion, Failure, Completion]
        assert "VLLMValidationError: max_tokens must be at least 1" in results[1].reason

        with pytest.raises(VLLMValidationError) as rejected:
            stage.engine.llm.generate([TokensPrompt(prompt_token_ids=[10**7])], use_tqdm=False)
        assert Engine.is_request_error(rejected.value)
        assert not Engine.is_request_error(EngineDeadError())
        assert not Engine.is_request_error(TimeoutError("engine step timed out"))

        def out_of_memory(requests):
            raise RuntimeError("CUDA out of memory")

        with pytest.raises(EngineCallFailed, match="CUDA out of memory"):
            stage._run_isolating_failures(out_of_memory, ask)
    finally:
        stage.engine.close()
