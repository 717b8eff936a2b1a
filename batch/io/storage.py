"""Where bytes live: local paths and s3:// through pyarrow's filesystems.

Credentials never pass through here: `pyarrow.fs.S3FileSystem` is built without keys, so
every process (driver or Ray worker, on any node) resolves them itself through the standard
AWS chain (environment, shared config, instance role). Only the endpoint and region travel.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from batch.config import ConfigError, StorageConfig

T = TypeVar("T")


class StorageError(Exception):
    """Object storage failed: past its retries, or in a way no retry fixes (access denied,
    a missing bucket). The message is one line naming the location."""


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
        # The one retry layer for S3 (`retrying` makes one attempt): the client retries each
        # HTTP request that failed transiently (SlowDown, 5xx, resets, timeouts; measured on
        # the error strings in tests/test_storage_faults.py) with jittered exponential backoff,
        # up to 20 s. Per request is the only level that reaches the range reads inside a
        # Parquet scan; retrying whole actions on top would multiply the attempts.
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max(1, storage.retries)),
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


# What a storage failure means for the run (see `storage_fault`).
TRANSIENT = "transient"  # throttling, 5xx, a reset connection, a timeout: worth retrying
DENIED = "access denied"  # credentials or policy: no retry helps, the run must stop
MISSING = "missing"  # no such bucket or key
FAILED = "failed"  # any other answer from the store, or a local I/O error

_AWS_ERROR = re.compile(r"AWS Error (\w+)")
_HTTP_STATUS = re.compile(r"HTTP status (\d{3})")
_AWS_KINDS = {
    TRANSIENT: {"SLOW_DOWN", "THROTTLING", "REQUEST_LIMIT_EXCEEDED", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE",
                "NETWORK_CONNECTION", "REQUEST_TIMEOUT", "REQUEST_TIMEOUT_EXCEPTION"},
    DENIED: {"ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "INVALID_CLIENT_TOKEN_ID",
             "MISSING_AUTHENTICATION_TOKEN", "UNRECOGNIZED_CLIENT", "EXPIRED_TOKEN", "INVALID_SIGNATURE"},
    MISSING: {"NO_SUCH_BUCKET", "NO_SUCH_KEY", "RESOURCE_NOT_FOUND"},
}  # fmt: skip
_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EAGAIN}  # fmt: skip


def storage_fault(exc: BaseException) -> str | None:
    """What kind of storage failure `exc` is (TRANSIENT, DENIED, MISSING, FAILED), or None
    when it is not one: the bytes themselves are bad (not Parquet, a corrupt page). The one
    classifier of storage errors. pyarrow raises a plain OSError for both kinds, so S3
    errors are told by the SDK's code in the message (`AWS Error SLOW_DOWN during GetObject
    ...`; an answer without a body has only `AWS Error UNKNOWN (HTTP status 503)`), local
    ones by their errno; a corrupt file's error has neither."""
    if isinstance(exc, StorageError):  # already classified: keep the cause's kind
        return (storage_fault(exc.__cause__) if exc.__cause__ is not None else None) or FAILED
    text = str(exc)
    if (code := _AWS_ERROR.search(text)) is not None:
        for kind, codes in _AWS_KINDS.items():
            if code.group(1) in codes:
                return kind
        status = int(match.group(1)) if (match := _HTTP_STATUS.search(text)) else 0
        if status in (408, 429) or status >= 500:
            return TRANSIENT
        return {401: DENIED, 403: DENIED, 404: MISSING}.get(status, FAILED)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return TRANSIENT
    if isinstance(exc, PermissionError):
        return DENIED
    if isinstance(exc, FileNotFoundError):
        return MISSING
    if isinstance(exc, OSError) and exc.errno is not None:
        return TRANSIENT if exc.errno in _TRANSIENT_ERRNOS else FAILED
    return None


def storage_error(what: str, exc: BaseException, storage: StorageConfig) -> StorageError:
    """One line naming the location and what to do about the failure."""
    kind = storage_fault(exc) or FAILED
    advice = {
        TRANSIENT: f"object storage kept failing after {max(1, storage.retries)} attempts (storage.retries)",
        DENIED: "access denied: check the credentials and the bucket policy",
        MISSING: "not found: check the bucket and the path",
        FAILED: "object storage failed",
    }[kind]
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return StorageError(f"{what}: {advice} ({detail})")


def retrying(action: Callable[[], T], storage: StorageConfig, what: str) -> T:
    """Run one storage action, naming `what` when it fails. Transient failures were already
    retried with backoff, request by request, by the S3 client (`filesystem_for`), so this
    makes one attempt: what reaches it is final. A storage failure becomes a StorageError
    (one line, see `storage_error`); a missing file stays a FileNotFoundError, which
    callers test for, and any other error (bad bytes) passes through unchanged."""
    try:
        return action()
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified; what is not a storage fault is re-raised
        if isinstance(exc, StorageError) or storage_fault(exc) is None:
            raise
        raise storage_error(what, exc, storage) from exc
