"""Where bytes live: local paths and s3:// through pyarrow's filesystems.

Credentials never pass through here: `pyarrow.fs.S3FileSystem` is built without keys, so
every process (driver or Ray worker, on any node) resolves them itself through the standard
AWS chain (environment, shared config, instance role). Only the endpoint and region travel.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from batch.config import ConfigError, StorageConfig

T = TypeVar("T")


class StorageError(Exception):
    """Object storage failed past its retries."""


@dataclass(frozen=True)
class Location:
    """A URI and the filesystem that reaches it. Picklable: it carries the endpoint, not
    the credentials."""

    uri: str
    storage: StorageConfig

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def fs(self) -> pafs.FileSystem:
        return filesystem_for(self.uri, self.storage)

    @property
    def path(self) -> str:
        if self.is_s3:
            return self.uri[len("s3://") :].rstrip("/")
        return os.path.abspath(self.uri.removeprefix("file://"))

    def join(self, *names: str) -> "Location":
        return Location(posixpath.join(self.uri.rstrip("/"), *names), self.storage)

    def exists(self) -> bool:
        return retrying(lambda: self.fs.get_file_info(self.path).type != pafs.FileType.NotFound, self.storage, self.uri)

    def read_json(self) -> Any:
        def read():
            with self.fs.open_input_stream(self.path) as stream:
                return json.loads(stream.read().decode("utf-8"))

        return retrying(read, self.storage, self.uri)

    def write_json(self, value: Any) -> None:
        data = json.dumps(value, indent=2, sort_keys=True, default=str).encode("utf-8")

        def write():
            if not self.is_s3:
                # Local: write beside, then rename, so a reader never sees half a file.
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                tmp = f"{self.path}.tmp-{os.getpid()}"
                with open(tmp, "wb") as out:
                    out.write(data)
                os.replace(tmp, self.path)
            else:  # an S3 PUT is atomic already
                with self.fs.open_output_stream(self.path) as out:
                    out.write(data)

        retrying(write, self.storage, self.uri)

    def list_files(self) -> list[pafs.FileInfo]:
        """Files under this prefix (recursively), or this file itself."""

        def listing():
            info = self.fs.get_file_info(self.path)
            if info.type == pafs.FileType.File:
                return [info]
            if info.type == pafs.FileType.NotFound:
                return []
            selector = pafs.FileSelector(self.path, recursive=True, allow_not_found=True)
            return [i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]

        return retrying(listing, self.storage, self.uri)

    def uri_of(self, fs_path: str) -> str:
        return f"s3://{fs_path}" if self.is_s3 else fs_path

    def delete_dir(self) -> None:
        def delete():
            if self.fs.get_file_info(self.path).type != pafs.FileType.NotFound:
                self.fs.delete_dir(self.path)

        retrying(delete, self.storage, self.uri)


def filesystem_for(uri: str, storage: StorageConfig) -> pafs.FileSystem:
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        return pafs.LocalFileSystem()
    if scheme != "s3":
        raise ConfigError(f"{uri}: unsupported scheme {scheme!r}; use a local path or s3://")
    options: dict[str, Any] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),  # `retrying` adds backoff on top
        "connect_timeout": 10,
        "request_timeout": 60,
    }
    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        parsed = urlparse(endpoint)
        options["endpoint_override"] = parsed.netloc or parsed.path
        options["scheme"] = parsed.scheme or "https"
    region = storage.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


def expand_input(uri: str, storage: StorageConfig) -> list[tuple[str, int]]:
    """(uri, size) of every Parquet file a configured input names: a file, a folder or
    prefix (recursively; names starting with `_` or `.` are skipped, as Spark and Arrow
    do), or a glob."""
    has_glob = any(ch in uri for ch in "*?[")
    base = Location(_glob_root(uri) if has_glob else uri, storage)
    pattern = Location(uri, storage).path if has_glob else None
    found = []
    for info in base.list_files():
        relative = info.path[len(base.path) :].lstrip("/")
        if any(part.startswith(("_", ".")) for part in relative.split("/") if part):
            continue
        if pattern is not None and not fnmatch.fnmatchcase(info.path, pattern):
            continue
        if pattern is None and info.path != base.path and not info.path.endswith(".parquet"):
            continue
        found.append((base.uri_of(info.path), info.size))
    return sorted(found)


def _glob_root(uri: str) -> str:
    head = uri
    while any(ch in head for ch in "*?["):
        head = head.rsplit("/", 1)[0]
    return head


def retrying(action: Callable[[], T], storage: StorageConfig, what: str) -> T:
    """Transient object-store errors are retried with exponential backoff; past the budget
    the run stops with a StorageError that names the location."""
    attempts = max(1, storage.retries)
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, (FileNotFoundError, PermissionError)) or attempt == attempts:
                if attempt == attempts and not isinstance(exc, (FileNotFoundError, PermissionError)):
                    raise StorageError(f"{what}: object storage failed after {attempts} attempts: {exc}") from exc
                raise
            time.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")
