"""One identity of a run (batch/identity.py): what it covers and what it must not, the
content identity of weights (local folders hashed once per change, S3 objects by ETag and
version id), the per-node model cache keyed by it, and a weights swap between two attempts."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batch.config import ConfigError, validate_job
from batch.identity import resolve_run
from batch.infer import models as model_store
from conftest import cli_ok, run_cli, upload_folder, write_corpus, write_job

LONG_AGO = time.time() - 3600  # mtimes older than the "racy" window, so digests are remembered


@pytest.fixture(autouse=True)
def private_digest_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(model_store, "DIGEST_CACHE", tmp_path / "digests.json")


def fake_model(folder: Path, weights: bytes = b"weights-1") -> Path:
    """A model folder as far as identity goes: config, tokenizer, weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)
    for file in folder.iterdir():
        os.utime(file, (LONG_AGO, LONG_AGO))
    return folder


def job_with(model: Path, adapter: Path, **sections) -> dict:
    job = {
        "name": "identity",
        "input": {"uris": ["in/"]},
        "output": {"uri": "out/"},
        "tasks": {
            "translation": {"model": str(model), "target_languages": ["fr"], "adapters": {"fr": str(adapter)}},
            "sentiment": {"model": str(model)},
        },
    }
    for key, value in sections.items():
        job[key] = {**job.get(key, {}), **value}
    return job


def set_path(job: dict, dotted: str, value) -> dict:
    job = json.loads(json.dumps(job))
    *parents, last = dotted.split(".")
    node = job
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return job


def identities(job: dict) -> dict[str, str]:
    identity = resolve_run(validate_job(job)).for_device("cpu")
    return {
        "resume": resolve_run(validate_job(job)).fingerprint,
        "rows.translation": identity.row_cache("translation"),
        "rows.sentiment": identity.row_cache("sentiment"),
        "answers": identity.answer_cache(job["tasks"]["sentiment"]["model"], "generate", ["sentiment"]),
    }


OUTPUT_CHANGES = {
    "tasks.translation.prompt_version": "edited-9",
    "tasks.translation.target_languages": ["fr", "de"],
    "tasks.translation.max_output_tokens": 77,
    "tasks.translation.guardrails.min_length_ratio": 0.2,
    "tasks.sentiment.labels": ["bad", "good"],
    "tasks.sentiment.prompt_version": "edited-8",
    "engine.dtype": "bfloat16",
    "engine.max_model_len": 333,
    "engine.seed": 7,
}
NO_OUTPUT_CHANGES = {
    "engine.replicas": 3,
    "engine.batch_size": 64,
    "engine.tensor_parallel_size": 2,
    "engine.gpu_memory_utilization": 0.5,
    "engine.max_num_seqs": 8,
    "output.uri": "elsewhere/",
    "cache.uri": "cache-elsewhere/",
    "max_row_error_rate": 0.5,
}


def test_identity_follows_everything_that_shapes_rows_and_nothing_else(tmp_path, monkeypatch):
    model, adapter = fake_model(tmp_path / "model"), fake_model(tmp_path / "adapter", b"lora-1")
    base = job_with(model, adapter)
    first = identities(base)
    assert identities(base) == first, "stable across resolutions"

    for path, value in OUTPUT_CHANGES.items():
        changed = identities(set_path(base, path, value))
        assert changed["resume"] != first["resume"], path
        task = path.split(".")[1] if path.startswith("tasks.") else None
        rows = [f"rows.{task}"] if task else ["rows.translation", "rows.sentiment"]
        for key in rows:
            assert changed[key] != first[key], f"{path} must change {key}"
        if path.startswith("engine."):
            assert changed["answers"] != first["answers"], path
    for path, value in NO_OUTPUT_CHANGES.items():
        assert identities(set_path(base, path, value)) == first, f"{path} changes no row's values"
    assert identities(set_path(base, "input.uris", ["other/"]))["rows.sentiment"] == first["rows.sentiment"]

    import batch.identity as identity_module

    real = identity_module.code_versions()
    assert real["corpus-batch"] and real["vllm"] and real["lingua"]
    for name in real:
        monkeypatch.setattr(identity_module, "code_versions", lambda name=name: {**real, name: "9.9.9"})
        changed = identities(base)
        assert changed["resume"] != first["resume"] and changed["rows.translation"] != first["rows.translation"], name
    monkeypatch.setattr(identity_module, "code_versions", lambda: real)

    # new weights at the same paths, same sizes
    (adapter / "model.safetensors").write_bytes(b"lora-2")
    os.utime(adapter / "model.safetensors", (LONG_AGO + 5, LONG_AGO + 5))
    after_adapter = identities(base)
    assert after_adapter["rows.translation"] != first["rows.translation"]
    assert after_adapter["rows.sentiment"] == first["rows.sentiment"], "the sentiment task uses no adapter"
    assert after_adapter["resume"] != first["resume"]
    (model / "model.safetensors").write_bytes(b"weights-2")
    os.utime(model / "model.safetensors", (LONG_AGO + 5, LONG_AGO + 5))
    after_model = identities(base)
    assert all(after_model[key] != after_adapter[key] for key in after_model)


def test_changes_since_names_the_weights_that_changed(tmp_path):
    model, adapter = fake_model(tmp_path / "model"), fake_model(tmp_path / "adapter", b"lora-1")
    job = validate_job(job_with(model, adapter))
    before = resolve_run(job)
    (adapter / "model.safetensors").write_bytes(b"lora-2")
    after = resolve_run(job)
    assert after.changes_since(before.description) == [f"tasks.translation.adapter translation-fr weights ({adapter}, sha256 of files)"]
    assert after.provenance("translation").endswith(f"+lora:translation-fr={adapter}@{after.weights[str(adapter)].short}")
    assert after.provenance("sentiment") == f"{model}@{after.weights[str(model)].short}"


def test_local_folder_is_hashed_once_per_change(tmp_path, monkeypatch):
    folder = fake_model(tmp_path / "model")
    reads = []
    real = model_store.file_sha256
    monkeypatch.setattr(model_store, "file_sha256", lambda path: reads.append(path.name) or real(path))
    cache = tmp_path / "digests.json"

    first = model_store.folder_digest(folder, cache)
    assert sorted(reads) == ["config.json", "model.safetensors", "tokenizer.json"]
    reads.clear()
    assert model_store.folder_digest(folder, cache) == first
    assert reads == [], "unchanged files are not read again"

    (folder / "model.safetensors").write_bytes(b"weights-2")  # same size, new content
    os.utime(folder / "model.safetensors", (LONG_AGO + 5, LONG_AGO + 5))
    assert model_store.folder_digest(folder, cache) != first
    assert reads == ["model.safetensors"], "only the changed file is read again"

    # a file written just now may change again within its mtime tick: never remembered
    (folder / "config.json").write_text('{"a": 1}')
    reads.clear()
    model_store.folder_digest(folder, cache)
    model_store.folder_digest(folder, cache)
    assert reads == ["config.json", "config.json"]


def s3_client(s3):
    import botocore.session

    return botocore.session.get_session().create_client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")


@pytest.mark.parametrize("versioned", [False, True])
def test_model_overwritten_in_place_on_s3_is_fetched_again(s3, tmp_path, versioned):
    bucket = f"weights-{'v' if versioned else 'plain'}"
    s3.bucket(bucket)
    if versioned:
        s3_client(s3).put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    uri = upload_folder(s3.fs, fake_model(tmp_path / "model", b"weights-1"), f"{bucket}/chat")
    storage = validate_job(job_with(tmp_path, tmp_path)).storage
    cache = tmp_path / "node-cache"

    old = model_store.identify(uri, storage)
    assert all(o.version_id for o in old.objects) == versioned
    first = model_store.fetch(old, storage, cache)
    assert (first / "model.safetensors").read_bytes() == b"weights-1"

    with s3.fs.open_output_stream(f"{bucket}/chat/model.safetensors") as out:
        out.write(b"weights-2")  # same name, same size
    new = model_store.identify(uri, storage)
    assert new.content != old.content
    second = model_store.fetch(new, storage, cache)
    assert second != first and (second / "model.safetensors").read_bytes() == b"weights-2"
    assert model_store.fetch(new, storage, cache) == second, "fetched once per identity"

    # A node that fetches for the old identity after the overwrite never gets other bytes
    # under it: the old version where the bucket keeps versions, else a clear refusal.
    if versioned:
        again = model_store.fetch(old, storage, tmp_path / "other-node")
        assert (again / "model.safetensors").read_bytes() == b"weights-1"
    else:
        with pytest.raises(ConfigError, match="changed after this run resolved its identity"):
            model_store.fetch(old, storage, tmp_path / "other-node")


ESCAPING_KEYS = ["../../outside", "sub/../../outside", "/etc/outside", "..\\..\\outside", "a//b"]


@pytest.mark.parametrize("n", range(len(ESCAPING_KEYS)))
def test_model_keys_that_would_escape_the_cache_are_refused(s3, tmp_path, n):
    key, bucket = ESCAPING_KEYS[n], f"escape-{n}"
    s3.bucket(bucket)
    client = s3_client(s3)
    client.put_object(Bucket=bucket, Key="m/config.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key=f"m/{key}", Body=b"x")
    storage = validate_job(job_with(tmp_path, tmp_path)).storage
    with pytest.raises(ConfigError) as err:
        model_store.identify(f"s3://{bucket}/m", storage)
    assert f"model s3://{bucket}/m: refusing object key {key!r}" in str(err.value)

    # the fetch checks again, whatever identity it is handed
    crafted = model_store.Weights(f"s3://{bucket}/m", "0" * 64, "s3 etags", (model_store.S3Object(key, 1, "x"),))
    with pytest.raises(ConfigError, match="outside the model cache folder"):
        model_store.fetch(crafted, storage, tmp_path / "cache" / "models")
    assert not (tmp_path / "outside").exists() and not (tmp_path / "cache" / "outside").exists()


def test_weights_swapped_between_attempts_restart_and_never_mix(models, tmp_path):
    """The first attempt dies right after its first committed file; the model's weights are
    replaced in place; the rerun says what changed, restarts, and every row names the new
    weights."""
    from batch.demo.models import build_causal_lm

    model = tmp_path / "chat"
    shutil.copytree(models["chat"], model)
    rows = [{"id": f"{f}-{i}", "text": f"Post {f}-{i}: the parcel came late, support was kind."} for f in range(2) for i in range(6)]
    write_corpus(None, str(tmp_path / "in"), rows, files=2)
    output = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", {
        "name": "swap",
        "input": {"uris": [str(tmp_path / "in")]},
        "output": {"uri": str(output)},
        "engine": {"batch_size": 6, "max_model_len": 256},
        "tasks": {"sentiment": {"model": str(model)}},
    })  # fmt: skip

    first = run_cli("run", str(job), env={"BATCH_FAULT": "commit.after_file"})
    log = first.stdout[-3000:] + first.stderr[-3000:]
    assert first.returncode == -9 and not (output / "_SUCCESS").exists(), log
    assert len(list(output.glob("_staging/*/committed/*.json"))) == 1, log
    old = resolve_run(validate_job(yaml_job(job))).weights[str(model)]

    other = build_causal_lm(tmp_path / "other", seed=5)
    shutil.copy(other / "model.safetensors", model / "model.safetensors")
    new = resolve_run(validate_job(yaml_job(job))).weights[str(model)]
    assert new.content != old.content

    out = cli_ok(run_cli("run", str(job)))
    assert f"identity changed since the last attempt (tasks.sentiment.model weights ({model}, sha256 of files)): restarting 1 committed files" in out
    table = pq.read_table(output).to_pylist()
    assert sorted(r["id"] for r in table) == sorted(r["id"] for r in rows)
    assert {r["sentiment_model"] for r in table} == {f"{model}@{new.short}"}
    assert not [path for path in output.glob("_staging/**/*") if path.is_file()], "no staging of either attempt left"


def yaml_job(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_hub_id_is_identified_by_its_locally_resolved_revision(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    storage = validate_job(job_with(tmp_path, tmp_path)).storage
    unknown = model_store.identify("acme/tiny-chat", storage)
    assert unknown.basis == "hub id (revision unknown)"

    refs = tmp_path / "hub" / "models--acme--tiny-chat" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("1111aaaa")
    first = model_store.identify("acme/tiny-chat", storage)
    assert first.basis == "hub revision 1111aaaa" and first.content != unknown.content
    (refs / "main").write_text("2222bbbb")
    assert model_store.identify("acme/tiny-chat", storage).content != first.content
