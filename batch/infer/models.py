"""Model sources: a local directory, an s3:// prefix, or a hub id, and what each holds.

`identify` names the content of a model or adapter (its `Weights`); batch/identity.py calls
it once per run on the driver, and every later use (resume, caches, provenance, the fetch)
reads that one answer:

- s3:// prefix: every object's key, size, ETag and VersionId (when the bucket is
  versioned), from the listing and a HEAD per object. Overwriting an object in place, even
  with the same size, gives it a new ETag.
- local folder: a sha256 of every file's full content. Hashing a 15 GB folder takes
  minutes, so each file's digest is kept in a small JSON file keyed by (path, size,
  mtime_ns) and a file is read again only when one of those changes.
- hub id: the revision the local hub cache resolved `main` to, when there is one; else the
  id itself (the hub is not reachable from here, and vLLM resolves it on the node).

An s3:// model is fetched once per node into a cache folder named by that identity, so new
weights land in a new folder. Several actors starting on one node take a file lock, so one
downloads while the others wait. Each object is fetched at exactly the version the
identity names (its VersionId, else If-Match on its ETag): weights overwritten after the
driver resolved them fail the fetch instead of serving other bytes under the old name. The
download goes to a temporary folder, is checked (every object, every size) and only then
renamed into place with a `.complete.json` record, so a half-fetched model is never used.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from batch.config import ConfigError, StorageConfig
from batch.io.storage import Location

COMPLETE = ".complete.json"
DEFAULT_CACHE = Path(os.environ.get("BATCH_MODEL_CACHE", Path.home() / ".cache" / "corpus-batch" / "models"))
DIGEST_CACHE = Path(os.environ.get("BATCH_DIGEST_CACHE", Path.home() / ".cache" / "corpus-batch" / "digests.json"))
# A file modified this recently may still change within the same mtime tick (filesystems
# keep mtimes at a few ms at best): its digest is not remembered, as git does for "racy" files.
RACY_SECONDS = 2.0


@dataclass(frozen=True)
class S3Object:
    name: str  # key relative to the model's prefix
    size: int
    etag: str
    version_id: str | None = None


@dataclass(frozen=True)
class Weights:
    """What a model or adapter URI holds, resolved once on the driver."""

    uri: str
    content: str  # sha256 hex of what identifies the content (see the module docstring)
    basis: str  # how it was identified, for logs: "s3 etags", "sha256 of files", "hub revision ..."
    objects: tuple[S3Object, ...] = ()  # s3:// only: exactly what the node cache fetches

    @property
    def short(self) -> str:
        return self.content[:12]


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def is_hub_id(uri: str) -> bool:
    """`org/name` that is not a local path: left to vLLM, which fetches it where a hub is reachable."""
    return not is_remote(uri) and not uri.startswith(("/", ".", "~")) and uri.count("/") == 1 and not Path(uri).exists()


# --- identity (driver) -------------------------------------------------------------------


def identify(uri: str, storage: StorageConfig, digest_cache: Path | None = None) -> Weights:
    if is_remote(uri):
        objects = _s3_objects(uri, storage)
        text = json.dumps([[o.name, o.size, o.etag, o.version_id] for o in objects])
        return Weights(uri, _sha256(text), "s3 etags", objects)
    if is_hub_id(uri):
        revision = _hub_revision(uri)
        # Without a locally resolved revision the id is all we know: a model re-published
        # under the same id is then not told apart.
        basis = f"hub revision {revision}" if revision else "hub id (revision unknown)"
        return Weights(uri, _sha256(f"{uri}@{revision or ''}"), basis)
    return Weights(uri, folder_digest(_local_folder(uri), digest_cache or DIGEST_CACHE), "sha256 of files")


def folder_digest(folder: Path, digest_cache: Path) -> str:
    """sha256 over every file's relative path and full-content sha256; digests of files
    unchanged since they were last hashed (same path, size, mtime_ns) come from `digest_cache`."""
    known = _load_digests(digest_cache)
    changed = False
    total = hashlib.sha256()
    now = time.time()
    for file in _content_files(folder):
        stat = file.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        key = str(file.resolve())
        entry = known.get(key)
        if entry is None or entry[:2] != stamp:
            entry = [*stamp, file_sha256(file)]
            if now - stat.st_mtime_ns / 1e9 > RACY_SECONDS:
                known[key] = entry
                changed = True
        total.update(f"{file.relative_to(folder).as_posix()}\0{entry[2]}\n".encode())
    if changed:
        _save_digests(digest_cache, known)
    return total.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _content_files(folder: Path) -> list[Path]:
    """Every file of the folder but hidden ones (.git, our .complete.json record)."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip


def _load_digests(path: Path) -> dict[str, list]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_digests(path: Path, digests: dict[str, list]) -> None:
    """Write beside, then rename: two drivers at once leave one whole file (a cache: last wins)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(digests))
    os.replace(tmp, path)


def _hub_revision(repo_id: str) -> str | None:
    from huggingface_hub.constants import HF_HUB_CACHE

    ref = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def _local_folder(uri: str) -> Path:
    path = Path(uri).expanduser()
    if not path.is_dir():
        raise ConfigError(f"model {uri}: no such directory (give a local directory, an s3:// prefix or a hub id)")
    return path.resolve()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- object storage ------------------------------------------------------------------------


def _split(uri: str) -> tuple[str, str]:
    """Bucket and key prefix (ending with `/`) of an s3:// model prefix."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""


@functools.lru_cache(maxsize=8)
def _s3_client(storage: StorageConfig):
    """A botocore client: pyarrow's listing carries no ETag or VersionId. Credentials come
    from the AWS chain, as for every other client here."""
    import botocore.session
    from botocore.config import Config

    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    region = storage.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(retries={"max_attempts": max(1, storage.retries), "mode": "standard"})
    return botocore.session.get_session().create_client("s3", endpoint_url=endpoint, region_name=region, config=config)


def _s3_objects(uri: str, storage: StorageConfig) -> tuple[S3Object, ...]:
    from botocore.exceptions import ClientError

    bucket, prefix = _split(uri)
    client = _s3_client(storage)
    objects = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):  # a folder marker
                    continue
                name = safe_name(uri, item["Key"][len(prefix) :])
                head = client.head_object(Bucket=bucket, Key=item["Key"])
                objects.append(S3Object(name, item["Size"], head["ETag"].strip('"'), head.get("VersionId")))
    except ClientError as exc:
        raise ConfigError(f"model {uri}: {_s3_error(exc)}") from None
    if not objects:
        raise ConfigError(f"model {uri}: no files under this prefix")
    return tuple(sorted(objects, key=lambda o: o.name))


def _s3_error(exc: Exception) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    return f"{error.get('Code', type(exc).__name__)}: {error.get('Message', exc)}"


def safe_name(uri: str, name: str) -> str:
    """A listed key, relative to the model's prefix, that stays inside the cache folder when
    joined to it: no absolute path, no `..`, no backslash (a separator on some systems)."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or ".." in parts or "" in parts or "." in parts:
        raise ConfigError(
            f"model {uri}: refusing object key {name!r}: it would land outside the model cache folder "
            "(absolute, '..', '.', empty or backslash path parts)"
        )
    return name


# --- on the actor's node ---------------------------------------------------------------


def resolve(weights: Weights, storage: StorageConfig, cache_root: Path = DEFAULT_CACHE) -> str:
    """A local directory holding the model (or the hub id, unchanged)."""
    if is_remote(weights.uri):
        return str(fetch(weights, storage, cache_root))
    if is_hub_id(weights.uri):
        return weights.uri
    return str(_local_folder(weights.uri))


def fetch(weights: Weights, storage: StorageConfig, cache_root: Path = DEFAULT_CACHE) -> Path:
    """The model in this node's cache, in a folder named by its content identity."""
    stem = PurePosixPath(_split(weights.uri)[1].rstrip("/") or "model").name
    target = cache_root / f"{stem}-{weights.content[:16]}"
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per node; the others wait, then reuse it
        if _complete(target, weights):
            return target
        partial = cache_root / f"{target.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        for obj in weights.objects:
            _download(weights.uri, obj, _inside(partial, weights.uri, obj.name), storage)
        (partial / COMPLETE).write_text(json.dumps(_record(weights)))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def _inside(folder: Path, uri: str, name: str) -> Path:
    """Where a listed object goes; refuses any key that would land outside `folder`."""
    dest = folder / safe_name(uri, name)
    if not dest.resolve().is_relative_to(folder.resolve()):  # e.g. through a symlink
        raise ConfigError(f"model {uri}: refusing object key {name!r}: it would land outside the model cache folder")
    return dest


def _download(uri: str, obj: S3Object, dest: Path, storage: StorageConfig) -> None:
    """One object at exactly the version the run resolved: its VersionId, else If-Match on
    its ETag (a changed object answers 412 instead of other bytes)."""
    from botocore.exceptions import ClientError

    bucket, prefix = _split(uri)
    pinned = {"VersionId": obj.version_id} if obj.version_id else {"IfMatch": f'"{obj.etag}"'}
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        body = _s3_client(storage).get_object(Bucket=bucket, Key=prefix + obj.name, **pinned)["Body"]
        with open(dest, "wb") as out:
            shutil.copyfileobj(body, out, length=8 << 20)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            raise ConfigError(
                f"model {uri}: {obj.name} changed after this run resolved its identity (ETag {obj.etag}); "
                "rerun to pick up the new weights"
            ) from None
        raise ConfigError(f"model {uri}: {obj.name}: {_s3_error(exc)}") from None
    if dest.stat().st_size != obj.size:
        raise OSError(f"model {uri}: {obj.name} is {dest.stat().st_size} bytes, the store says {obj.size}")


def _record(weights: Weights) -> dict[str, Any]:
    return {"uri": weights.uri, "content": weights.content, "files": {o.name: o.size for o in weights.objects}}


def _complete(folder: Path, weights: Weights) -> bool:
    try:
        record = json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    return record == _record(weights) and all((folder / o.name).stat().st_size == o.size for o in weights.objects)


def read_config(uri: str, storage: StorageConfig) -> dict[str, Any] | None:
    """The model's config.json without fetching the weights (None for a hub id): lets the
    driver check a classifier's labels before any engine starts."""
    if is_hub_id(uri):
        return None
    if is_remote(uri):
        return Location(uri.rstrip("/") + "/config.json", storage).read_json()
    config = Path(uri).expanduser() / "config.json"
    if not config.exists():
        raise ConfigError(f"model {uri}: no config.json (is it a Hugging Face model folder?)")
    return json.loads(config.read_text())


def lora_rank(local_adapter: str) -> int:
    config = json.loads((Path(local_adapter) / "adapter_config.json").read_text())
    return int(config.get("r", 8))
