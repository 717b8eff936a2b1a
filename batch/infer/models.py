"""Model sources: a local directory, an s3:// prefix, or a hub id.

An s3:// model is fetched once per node into a local cache. Several actors starting on one
node at once take a file lock, so one downloads while the others wait; the download goes to
a temporary folder, is checked against the listing (every object present, every size equal)
and only then renamed into place with a `.complete.json` record, so a half-fetched model is
never used. A content fingerprint (file names, sizes, and a hash of each file's first and
last MiB) names exactly which weights served a row, for provenance and the result cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from batch.config import ConfigError, StorageConfig
from batch.io.storage import Location, retrying

COMPLETE = ".complete.json"
DEFAULT_CACHE = Path(os.environ.get("BATCH_MODEL_CACHE", Path.home() / ".cache" / "corpus-batch" / "models"))


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def is_hub_id(uri: str) -> bool:
    """`org/name` that is not a local path: left to vLLM, which fetches it where a hub is reachable."""
    return not is_remote(uri) and not uri.startswith(("/", ".", "~")) and uri.count("/") == 1 and not Path(uri).exists()


def resolve(uri: str, storage: StorageConfig, cache_root: Path = DEFAULT_CACHE) -> str:
    """A local directory holding the model (or the hub id, unchanged)."""
    if is_remote(uri):
        return str(fetch(uri, storage, cache_root))
    if is_hub_id(uri):
        return uri
    path = Path(uri).expanduser()
    if not path.is_dir():
        raise ConfigError(f"model {uri}: no such directory (give a local directory, an s3:// prefix or a hub id)")
    return str(path.resolve())


def fetch(uri: str, storage: StorageConfig, cache_root: Path = DEFAULT_CACHE) -> Path:
    location = Location(uri.rstrip("/") + "/", storage)
    listing = {
        info.path[len(location.path) :].lstrip("/"): info.size
        for info in location.list_files()
        if not info.path.endswith("/")
    }
    if not listing:
        raise ConfigError(f"model {uri}: no files under this prefix")
    key = hashlib.sha256(json.dumps([uri, sorted(listing.items())]).encode()).hexdigest()[:16]
    target = cache_root / f"{Path(location.path).name}-{key}"
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per node; the others wait, then reuse it
        if _complete(target, listing):
            return target
        partial = cache_root / f"{target.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        for name, size in listing.items():
            source = location.join(name)
            dest = partial / name
            dest.parent.mkdir(parents=True, exist_ok=True)

            def download(source=source, dest=dest):
                with source.fs.open_input_stream(source.path) as stream, open(dest, "wb") as out:
                    shutil.copyfileobj(stream, out, length=8 << 20)

            retrying(download, storage, source.uri)
            if dest.stat().st_size != size:
                raise OSError(f"model {uri}: {name} is {dest.stat().st_size} bytes, the store says {size}")
        (partial / COMPLETE).write_text(json.dumps({"uri": uri, "files": listing}))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def _complete(folder: Path, listing: dict[str, int]) -> bool:
    try:
        record = json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    return record.get("files") == listing and all((folder / n).stat().st_size == s for n, s in listing.items())


def fingerprint(local: str) -> str:
    """Content fingerprint of a model or adapter folder; a hub id fingerprints as itself."""
    path = Path(local)
    if not path.is_dir():
        return hashlib.sha256(local.encode()).hexdigest()[:12]
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != COMPLETE):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path)}:{size}:".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:12]


def weights_identity(uri: str, storage: StorageConfig) -> str:
    """Which weights a model URI holds, without fetching them (for the result cache's keys,
    computed on the driver): a local folder's content fingerprint; an s3:// prefix's listing
    (names, sizes, modification times: overwriting a file changes it); a hub id as itself
    (its revision is not known here)."""
    if is_remote(uri):
        location = Location(uri.rstrip("/") + "/", storage)
        listing = sorted((info.path, info.size, str(info.mtime)) for info in location.list_files())
        return hashlib.sha256(json.dumps([uri, listing]).encode()).hexdigest()[:12]
    return fingerprint(resolve(uri, storage))


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
