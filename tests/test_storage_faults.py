"""Transient is not corrupt (issue 14): a store that throttles, fails with 5xx or drops
connections is retried, once per request, by the S3 client, and never turns a file into
"unreadable"; access denied or a missing bucket stops the run with one line naming the URI.

The misbehaving store is a real HTTP proxy in front of the moto server (tests/s3_proxy.py)
that answers some requests itself with what S3 sends on a bad night.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from conftest import cli_ok, free_port, run_cli, write_job
from s3_proxy import Rule, S3Proxy

from batch.config import StorageConfig
from batch.io.storage import DENIED, MISSING, TRANSIENT, StorageError, filesystem_for, retrying, storage_fault

ROWS = {
    "a-slow-down.parquet": [{"id": f"a-{i}", "text": f"Post a-{i}: the coffee was great."} for i in range(6)],
    "b-internal-error.parquet": [{"id": f"b-{i}", "text": f"Post b-{i}: the train was late."} for i in range(6)],
    "c-reset.parquet": [{"id": f"c-{i}", "text": f"Post c-{i}: nice staff."} for i in range(6)],
}


@pytest.fixture
def proxy(s3):
    with S3Proxy(s3.endpoint) as proxy:
        yield proxy


def upload(s3, bucket: str) -> str:
    s3.bucket(bucket)
    for name, rows in ROWS.items():
        pq.write_table(pa.Table.from_pylist(rows), f"{bucket}/day/{name}", filesystem=s3.fs)
    return f"s3://{bucket}/day/"


def job(input_uri: str, output_uri: str, model: str, endpoint: str) -> dict:
    return {
        "name": "storage-faults",
        "input": {"uris": [input_uri], "id_column": "id", "text_column": "text"},
        "output": {"uri": output_uri},
        "storage": {"endpoint_url": endpoint},
        "engine": {"batch_size": 16, "max_model_len": 256},
        "tasks": {"sentiment": {"model": model, "mode": "generate", "labels": ["negative", "neutral", "positive"]}},
    }


def error_of(action) -> BaseException:
    with pytest.raises(Exception) as caught:
        action()
    return caught.value


def test_storage_fault_classifies_real_errors(s3, proxy, tmp_path):
    """Each error string here is what pyarrow raised for a real answer from the store."""
    upload(s3, "classify-in")
    key = "classify-in/day/a-slow-down.parquet"
    fs = filesystem_for("s3://classify-in", StorageConfig(endpoint_url=proxy.endpoint, retries=1))

    def read(path=key):
        with fs.open_input_file(path) as handle:
            return pq.ParquetFile(handle).read()

    cases = [
        # the SDK reads the error code from the body, or from the status when it reads no body
        (Rule(key, "slow_down", method="GET"), ("AWS Error SLOW_DOWN", "AWS Error SERVICE_UNAVAILABLE"), TRANSIENT),
        (Rule(key, "slow_down", method="HEAD"), "HTTP status 503", TRANSIENT),  # a HEAD answer has no body
        (Rule(key, "internal_error", method="GET"), "AWS Error INTERNAL_FAILURE", TRANSIENT),
        (Rule(key, "reset", method="GET"), "Connection reset by peer", TRANSIENT),
        (Rule(key, "access_denied", method="GET"), "AWS Error ACCESS_DENIED", DENIED),
        (Rule(key, "access_denied", method="HEAD"), "AWS Error ACCESS_DENIED", DENIED),
    ]
    for rule, text, kind in cases:
        proxy.clear()
        proxy.add(rule)
        exc = error_of(read)
        texts = (text,) if isinstance(text, str) else text
        assert any(t in str(exc) for t in texts) and storage_fault(exc) == kind, (rule, str(exc))
    proxy.clear()

    missing_bucket = error_of(lambda: fs.get_file_info(pafs.FileSelector("no-such-bucket/day", recursive=True)))
    assert "NO_SUCH_BUCKET" in str(missing_bucket) and storage_fault(missing_bucket) == MISSING
    assert storage_fault(error_of(lambda: read("classify-in/day/none.parquet"))) == MISSING
    closed = filesystem_for("s3://x", StorageConfig(endpoint_url=f"http://127.0.0.1:{free_port()}", retries=1))
    refused = error_of(lambda: closed.get_file_info("classify-in/day"))
    assert "NETWORK_CONNECTION" in str(refused) and storage_fault(refused) == TRANSIENT

    # the bytes themselves: not a storage fault
    (tmp_path / "not.parquet").write_text("id,text\n1,hello\n")
    assert storage_fault(error_of(lambda: pq.read_table(tmp_path / "not.parquet"))) is None
    pq.write_table(pa.table({"id": ["1"]}), tmp_path / "cut.parquet")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "cut.parquet").read_bytes()[:-12])
    assert storage_fault(error_of(lambda: pq.read_table(tmp_path / "cut.parquet"))) is None


def test_one_retry_layer(s3, proxy):
    """The S3 client retries each request `storage.retries` times in all; `retrying` adds no
    attempts on top of it and names the location in one line."""
    upload(s3, "layer-in")
    key = "layer-in/day/b-internal-error.parquet"
    storage = StorageConfig(endpoint_url=proxy.endpoint, retries=3)
    fs = filesystem_for(f"s3://{key}", storage)

    proxy.add(Rule(key, "slow_down", method="HEAD", times=2))  # two failures, then the third attempt passes
    assert retrying(lambda: fs.get_file_info(key).size, storage, f"s3://{key}") > 0
    assert [m for m, path, _ in proxy.requests if key in path] == ["HEAD"] * 3

    proxy.clear()
    proxy.requests.clear()
    proxy.add(Rule(key, "slow_down", method="HEAD"))  # never passes
    with pytest.raises(StorageError) as failed:
        retrying(lambda: fs.get_file_info(key), storage, f"s3://{key}")
    assert len(proxy.requests) == 3, proxy.requests  # not 3 x 3
    message = str(failed.value)
    assert message.startswith(f"s3://{key}: object storage kept failing after 3 attempts") and "\n" not in message


def test_transient_errors_are_retried_and_the_run_publishes(s3, proxy, models, tmp_path):
    """Every request for an input file fails once (503 SlowDown, 500, or a reset connection,
    one kind per file) and the first requests of the output fail too: the driver's planning,
    the Ray read tasks and the writers all retry, and the run publishes every row, with no
    file unreadable."""
    input_uri = upload(s3, "transient-in")
    s3.bucket("transient-out")
    for name in ROWS:
        action = {"a": "slow_down", "b": "internal_error", "c": "reset"}[name[0]]
        proxy.add(Rule(f"/transient-in/day/{name}", action, alternate=True))
    proxy.add(Rule("/transient-out/", "slow_down", times=3))
    definition = job(input_uri, "s3://transient-out/day/", str(models["chat"]), proxy.endpoint)
    cli_ok(run_cli("run", str(write_job(tmp_path / "job.yaml", definition))))

    manifest = json.loads(s3.fs.open_input_stream("transient-out/day/_manifest.json").read())
    assert manifest["unreadable_inputs"] == []
    published = pq.read_table("transient-out/day", filesystem=s3.fs)
    assert sorted(published.column("id").to_pylist()) == sorted(r["id"] for rows in ROWS.values() for r in rows)
    failed = [(method, path) for method, path, status in proxy.requests if status in (500, 503, -1)]
    for name in ROWS:  # each file was failed on its footer and its data, more than once
        assert len([1 for method, path in failed if name in path and method == "GET"]) >= 2, (name, failed)
    assert len([1 for _, path in failed if "/transient-out/" in path]) == 3


def test_access_denied_fails_the_run_naming_the_uri(s3, proxy, models, tmp_path):
    """403 on one input file: the run stops before any engine with one line naming the file;
    nothing is published and the file is not called unreadable. `validate` says the same."""
    input_uri = upload(s3, "denied-in")
    s3.bucket("denied-out")
    denied = "denied-in/day/b-internal-error.parquet"
    proxy.add(Rule(f"/{denied}", "access_denied"))
    # a model that exists: the run identifies its weights before it reads the inputs
    job_path = write_job(tmp_path / "job.yaml", job(input_uri, "s3://denied-out/day/", str(models["chat"]), proxy.endpoint))

    result = run_cli("run", str(job_path))
    assert result.returncode == 1, result.stdout + result.stderr
    (last,) = [line for line in result.stderr.splitlines() if line.startswith("FAILED:")]
    assert last.startswith(f"FAILED: s3://{denied}: access denied"), last
    assert "unreadable" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    listing = s3.fs.get_file_info(pafs.FileSelector("denied-out/day", recursive=True, allow_not_found=True))
    assert not [info.path for info in listing if not info.path.startswith("denied-out/day/_logs")]  # only the log

    result = run_cli("validate", str(job_path))
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert f"INVALID: s3://{denied}: access denied" in result.stderr, result.stderr


def test_access_denied_while_reading_fails_the_run_not_the_file(s3, proxy, models, tmp_path):
    """403 on one input file only once the read tasks open it (its planning, a HEAD and the
    footer's GET, passes): the run fails naming the URI, exit 1; the file is not quarantined
    as unreadable and nothing is published."""
    input_uri = upload(s3, "denied-late-in")
    s3.bucket("denied-late-out")
    denied = "denied-late-in/day/c-reset.parquet"
    proxy.add(Rule(f"/{denied}", "access_denied", after=2))
    definition = job(input_uri, "s3://denied-late-out/day/", str(models["chat"]), proxy.endpoint)
    result = run_cli("run", str(write_job(tmp_path / "job.yaml", definition)))

    log = result.stdout + result.stderr
    assert result.returncode == 1, log
    assert proxy.answered(403), "the planning must pass and the read fail"
    (last,) = [line for line in result.stderr.splitlines() if line.startswith("FAILED:")]
    assert f"s3://{denied}: access denied" in last, last
    assert "unreadable input" not in log
    listing = s3.fs.get_file_info(pafs.FileSelector("denied-late-out/day", recursive=True, allow_not_found=True))
    assert not [i.path for i in listing if not i.path.startswith(("denied-late-out/day/_staging", "denied-late-out/day/_logs"))]
