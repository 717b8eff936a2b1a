"""The job file is typed and validated before anything starts; errors name the field."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.config import ConfigError, load_job
from conftest import run_cli, write_job

BASE = {
    "name": "t",
    "input": {"uris": "in/", "id_column": "id", "text_column": "text"},
    "output": {"uri": "out/{date}"},
    "tasks": {"sentiment": {"model": "/models/m"}},
}


def load(tmp_path, job, *overrides, **kwargs):
    return load_job(write_job(tmp_path / "job.yaml", job), list(overrides), **kwargs)


def test_defaults_overrides_and_date(tmp_path):
    job = load(tmp_path, BASE, "engine.replicas=3", "tasks.sentiment.labels=[bad, good]", run_date=dt.date(2026, 11, 24))
    assert job.engine.replicas == 3
    assert job.tasks.sentiment.labels == ["bad", "good"]
    assert job.input.uris == ["in/"]
    assert job.output.uri == "out/2026-11-24"
    assert job.tasks.translation is None


def test_unknown_key_names_it_and_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, BASE, "tasks.sentiment.lables=[a, b]")
    message = str(err.value)
    assert "tasks.sentiment.lables: unknown key" in message
    assert "labels" in message and "mode" in message


def test_a_task_without_a_preset_names_its_kind(tmp_path):
    with pytest.raises(ConfigError, match=r"tasks.summarise.kind: required; kinds: translation, label"):
        load(tmp_path, BASE, "tasks.summarise.model=x")
    with pytest.raises(ConfigError, match=r"tasks.summarise.kind: unknown kind 'summary'; kinds: translation, label"):
        load(tmp_path, BASE, "tasks.summarise.model=x", "tasks.summarise.kind=summary")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("engine.replicas=0", "engine.replicas: Input should be greater than or equal to 1"),
        ("tasks.sentiment.labels=[a, a]", "labels must be distinct"),
        ("tasks.sentiment.mode=vote", "tasks.sentiment.mode"),
        ("output.uri=out/{day}", "unknown placeholder {day}"),
        ("name=has space", "name"),
        ("max_row_error_rate=2", "max_row_error_rate"),
    ],
)
def test_bad_values_are_named(tmp_path, override, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("{", r"\{")):
        load(tmp_path, BASE, override)


def test_missing_required_and_no_task(tmp_path):
    with pytest.raises(ConfigError, match="output: required"):
        load(tmp_path, {k: v for k, v in BASE.items() if k != "output"})
    with pytest.raises(ConfigError, match="name at least one task"):
        load(tmp_path, {**BASE, "tasks": {}})


def test_translation_language_codes(tmp_path):
    job = dict(BASE, tasks={"translation": {"model": "m", "target_languages": ["French"]}})
    with pytest.raises(ConfigError, match="not a language code or BCP-47 tag like .fr., .pt-BR."):
        load(tmp_path, job)


def test_validate_names_file_and_columns(tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ["a"], "body": ["hello"]}), tmp_path / "in" / "one.parquet")
    pq.write_table(pa.table({"id": ["b"], "text": [3]}), tmp_path / "in" / "two.parquet")
    job = write_job(tmp_path / "job.yaml", dict(BASE, input={"uris": str(tmp_path / "in"), "id_column": "id"}))
    result = run_cli("validate", str(job), "--output", str(tmp_path / "out"))
    assert result.returncode == 3  # INVALID: not worth retrying
    assert "one.parquet: no text column 'text'; its columns: id, body" in result.stderr
    assert "two.parquet: text column 'text' has type int64, expected string" in result.stderr


def test_validate_missing_input_and_bad_job(tmp_path):
    job = write_job(tmp_path / "job.yaml", dict(BASE, input={"uris": str(tmp_path / "nowhere")}))
    result = run_cli("validate", str(job))
    assert result.returncode == 3 and "no Parquet files at" in result.stderr
    result = run_cli("validate", str(tmp_path / "missing.yaml"))
    assert result.returncode == 3 and "job file not found" in result.stderr


def test_result_cache_lives_beside_the_output_for_every_date(tmp_path):
    job = load(tmp_path, dict(BASE, output={"uri": "s3://b/sentiment/{date}/"}), run_date=dt.date(2026, 11, 24))
    assert job.output.uri == "s3://b/sentiment/2026-11-24/"
    assert job.cache.uri == "s3://b/sentiment/_cache"
    assert load(tmp_path, dict(BASE, output={"uri": "out/x"})).cache.uri == "out/x/_cache"
    with pytest.raises(ConfigError, match="cache.uri: no placeholders"):
        load(tmp_path, BASE, "cache.uri=c/{date}")


def test_row_cache_identity_follows_config_and_weights(tmp_path):
    """A cached row is reused only under the same task config and the same weights: any
    change there files new answers under a new identity (no engine needed to tell)."""
    from batch.demo.models import build_tokenizer
    from batch.identity import resolve_run

    model = tmp_path / "m"
    build_tokenizer(model)
    (model / "weights.safetensors").write_bytes(b"one")
    base = dict(BASE, tasks={"translation": {"model": str(model), "target_languages": ["fr"]}})

    def identity(*overrides):
        job = load(tmp_path, base, *overrides)
        return resolve_run(job, "cpu").row_cache("translation")

    first = identity()
    assert identity() == first  # stable across runs
    assert identity("tasks.translation.prompt_version=v3") != first
    assert identity("tasks.translation.guardrails.min_length_ratio=0.2") != first
    assert identity("engine.seed=1") != first
    (model / "weights.safetensors").write_bytes(b"two")  # new weights at the same path
    assert identity() != first
