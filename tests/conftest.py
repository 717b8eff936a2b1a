"""Shared fixtures: real parts only. Tiny random-weight models built once per session, a
real S3 endpoint (moto's server on 127.0.0.1), and the job run through its command line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny models every engine test shares; built in a few seconds, never downloaded."""
    from batch.demo.models import build_causal_lm

    root = tmp_path_factory.mktemp("models")
    return {"chat": build_causal_lm(root / "tiny-chat")}


@pytest.fixture(scope="session")
def fine_tunes(models, tmp_path_factory) -> dict[str, Path]:
    """The shapes teams ship: two LoRA adapters on the chat model, and a classifier head."""
    from batch.demo.models import build_classifier, build_lora_adapter

    root = tmp_path_factory.mktemp("fine-tunes")
    return {
        "lora_a": build_lora_adapter(models["chat"], root / "lora-a", seed=1),
        "lora_b": build_lora_adapter(models["chat"], root / "lora-b", seed=2),
        "classifier": build_classifier(root / "classifier", ["negative", "neutral", "positive"]),
    }


def upload_folder(fs: pafs.FileSystem, local: Path, prefix: str) -> str:
    """Copy a model folder to S3 as a team's model store would hold it."""
    for path in local.rglob("*"):
        if path.is_file():
            with fs.open_output_stream(f"{prefix}/{path.relative_to(local)}") as out:
                out.write(path.read_bytes())
    return f"s3://{prefix}"


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 HTTP endpoint on loopback. Credentials are dummies, set in the environment
    the way a user's would be, so the job's processes find them through the AWS chain."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    fs = pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    yield S3(endpoint=endpoint, fs=fs, env=env, server=server)
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class S3:
    def __init__(self, endpoint, fs, env, server):
        self.endpoint, self.fs, self.env, self.server = endpoint, fs, env, server

    def bucket(self, name: str) -> str:
        self.fs.create_dir(name)
        return f"s3://{name}"


def write_corpus(fs: pafs.FileSystem | None, prefix: str, rows: list[dict], files: int) -> list[str]:
    """`rows` split round-robin over `files` Parquet files under `prefix` (a local folder or
    a bucket path without the s3:// scheme)."""
    paths = []
    for i in range(files):
        path = f"{prefix}/part-{i:03d}.parquet"
        table = pa.Table.from_pylist(rows[i::files])
        if fs is None:
            Path(prefix).mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
        else:
            pq.write_table(table, path, filesystem=fs)
        paths.append(path)
    return paths


def write_job(path: Path, job: dict) -> Path:
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def run_cli(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m batch ...` in a child process, as a user or `ray job submit` runs it."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "batch", *args],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return result


def cli_ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nSTDOUT:\n{result.stdout[-4000:]}\nSTDERR:\n{result.stderr[-6000:]}"
    return result.stdout
