"""The whole job through its command line, on real parts: Parquet in (local or S3 via
moto's server), Ray Data with a real vLLM engine (CPU build), annotated Parquet out."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.config import validate_job
from batch.demo.corpus import sample_posts
from batch.tasks import build_task
from batch.text.tokens import load_counter
from batch.text.privacy import Masker
from conftest import cli_ok, run_cli, write_corpus, write_job

LABELS = ["negative", "neutral", "positive"]


def corpus_rows() -> list[dict]:
    rows = [dict(post, likes=i * 3) for i, post in enumerate(sample_posts())]
    rows[5]["text"] = "   "  # whitespace-only: skipped with a reason, still in the output
    return rows


def job_definition(input_uri: str, output_uri: str, model: str, probabilities: bool = True) -> dict:
    return {
        "name": "e2e",
        "input": {"uris": [input_uri], "id_column": "post_id", "text_column": "text"},
        "output": {"uri": output_uri},
        "engine": {"batch_size": 64, "max_model_len": 1024},
        "tasks": {
            "sentiment": {"model": model, "labels": LABELS, "probabilities": probabilities},
            "translation": {"model": model, "target_languages": ["fr"], "max_output_tokens": 12},
        },
    }


def check_output(table: pa.Table, rows: list[dict], model: str, probabilities: bool = True) -> None:
    by_id = {row["post_id"]: row for row in rows}
    ids = table.column("post_id").to_pylist()
    assert len(ids) == len(rows), "output rows = input rows"
    assert len(set(ids)) == len(ids), "no duplicated ids"
    assert set(ids) == set(by_id), "same ids"

    # documented schema: originals first and unchanged, then annotations
    expected_types = {
        "sentiment": pa.string(), "sentiment_model": pa.string(), "translation_fr": pa.string(),
        "translation_model": pa.string(), "error": pa.string(), "skip_reason": pa.string(), "run_id": pa.string(),
    }  # fmt: skip
    for name, type_ in expected_types.items():
        assert table.schema.field(name).type == type_, name
    assert table.schema.field("likes").type == pa.int64()
    assert pa.types.is_map(table.schema.field("sentiment_probs").type)

    run_ids = set(table.column("run_id").to_pylist())
    assert len(run_ids) == 1 and None not in run_ids
    for out in table.to_pylist():
        original = by_id[out["post_id"]]
        for column, value in original.items():
            assert out[column] == value, f"{out['post_id']}.{column} changed"
        assert out["sentiment_model"].startswith(model + "@") and out["translation_model"].startswith(model + "@")
        assert out["error"] is None, out
        if original["text"].strip():
            assert out["sentiment"] in LABELS
            if probabilities:  # every label scored: probabilities that agree with the label
                probs = dict(out["sentiment_probs"])
                assert set(probs) == set(LABELS) and abs(sum(probs.values()) - 1) < 1e-6
                assert out["sentiment"] == max(probs, key=probs.get)
            else:  # structured-output choice decoding: a label, no probabilities
                assert out["sentiment_probs"] is None
            assert out["translation_fr"], f"{out['post_id']}: empty translation"
            assert out["skip_reason"] is None
        else:
            assert out["sentiment"] is None and out["translation_fr"] is None
            assert out["skip_reason"] == "translation: empty text; sentiment: empty text"


def test_job_from_s3_to_s3(s3, models, tmp_path):
    rows = corpus_rows()
    bucket = s3.bucket("corpus")
    s3.bucket("annotated")
    write_corpus(s3.fs, "corpus/posts/2026-11-14", rows, files=3)
    job = write_job(tmp_path / "job.yaml", job_definition(f"{bucket}/posts/2026-11-14/", "s3://annotated/x", "unused"))

    out = cli_ok(
        run_cli(
            "run", str(job),
            "--output", "s3://annotated/sentiment/{date}/", "--date", "2026-11-14",
            "--set", f"tasks.sentiment.model={models['chat']}",
            "--set", f"tasks.translation.model={models['chat']}",
        )
    )  # fmt: skip
    assert "SUCCEEDED: published" in out
    published = "annotated/sentiment/2026-11-14"
    table = pq.read_table(published, filesystem=s3.fs)
    check_output(table, rows, str(models["chat"]))

    with s3.fs.open_input_stream(f"{published}/_manifest.json") as f:
        manifest = json.loads(f.read())
    assert manifest["rows"] == len(rows) and len(manifest["inputs"]) == 3
    with s3.fs.open_input_stream(f"{published}/_summary.json") as f:
        summary = json.loads(f.read())
    assert summary["rows_in"] == summary["rows_out"] == len(rows)
    assert summary["skipped"] == {"sentiment: empty text": 1, "translation: empty text": 1}
    assert summary["rows_failed"] == 0 and summary["rows_annotated"] == len(rows)
    assert summary["requests_inferred"] > 0 and summary["output_tokens"] > 0
    assert set(summary["stage_busy_seconds"]) == {"read", "prepare", "infer", "parse", "write"} and summary["stage_busy_seconds"]["infer"] > 0
    assert summary["engines"][0]["tasks"] == ["translation", "sentiment"]  # one engine serves both
    assert f"progress: {len(rows)}/{len(rows)} rows (100%)" in out
    assert s3.fs.get_file_info(f"{published}/_SUCCESS").type.name == "File"
    text = json.dumps(summary) + out
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in text and s3.env["AWS_ACCESS_KEY_ID"] not in text

    # a completed run rerun is a no-op
    again = cli_ok(run_cli("run", str(job), "--output", "s3://annotated/sentiment/{date}/", "--date", "2026-11-14"))
    assert "already published" in again


def test_job_on_local_files(models, tmp_path):
    rows = corpus_rows()
    write_corpus(None, str(tmp_path / "in"), rows, files=2)
    model = str(models["chat"])
    definition = job_definition(str(tmp_path / "in"), str(tmp_path / "out"), model, probabilities=False)
    job = write_job(tmp_path / "job.yaml", definition)
    assert "OK" in cli_ok(run_cli("validate", str(job)))
    out = cli_ok(run_cli("run", str(job)))
    assert "SUCCEEDED: published" in out
    cold = pq.read_table(tmp_path / "out")
    check_output(cold, rows, model, probabilities=False)
    cold_summary = json.loads((tmp_path / "out" / "_summary.json").read_text())

    # Duplicate texts (reposts: 313 distinct texts in 328 rows, spread over both files and
    # several 64-row batches) are inferred once: the engine ran exactly the distinct requests
    # the tasks ask for (on the texts with their personal data masked, as the job does by
    # default), and every copy of a text got the same annotations.
    config = validate_job(definition)
    masker = Masker(config.privacy)
    distinct = set()
    counter = load_counter(model, 1024, False)  # the job budgets pieces in the model's own tokens
    for name, task_config in config.enabled_tasks().items():
        task = build_task(name, task_config)
        task.bind_tokens(counter)
        for row in rows:
            distinct.update(getattr(task.prepare(masker.mask(row["text"]).text), "requests", ()))
    assert cold_summary["requests_inferred"] == len(distinct)
    assert cold_summary["requests_inferred"] < sum(1 for row in rows if row["text"].strip()) * 2
    by_text: dict[str, set] = {}
    for out in cold.to_pylist():
        by_text.setdefault(out["text"], set()).add((out["sentiment"], out["translation_fr"]))
    assert all(len(answers) == 1 for answers in by_text.values())

    # Warm rerun: every answer comes from the result cache kept beside the output, and
    # the output equals the cold run's.
    assert (tmp_path / "out" / "_cache").is_dir()
    cli_ok(run_cli("run", str(job), "--overwrite"))
    warm = pq.read_table(tmp_path / "out")
    warm_summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert warm_summary["requests_inferred"] == 0
    # every task's columns of every row with text came whole from the row cache: no
    # language identification, no engine, no guardrails
    assert warm_summary["cached_rows"] == 2 * sum(1 for row in rows if row["text"].strip())
    assert cold_summary["cached_rows"] == 0
    key = lambda table: sorted(table.drop_columns(["run_id"]).to_pylist(), key=lambda r: r["post_id"])  # noqa: E731
    assert key(warm) == key(cold)
