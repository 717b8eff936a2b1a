"""The result cache: work already done, kept in object storage next to the output, so the
next night's run over a mostly unchanged corpus does only what is new. Two levels:

- `RowCache` (prepare and parse stages): a task's finished columns for a text, keyed by
  the text's hash under the task's identity (its whole config, prompt version included,
  and the weights and decoding settings of the engine that serves it). A hit skips the
  row's prepare, inference and parse: language identification and guardrails cost about
  as much CPU as a small model's inference, so skipping only the engine is not enough.
- `ResultCache` (inference stage): single engine answers, below. It still saves the engine
  when a row's text changed but some of its requests did not (one edited paragraph of a
  long document re-infers that paragraph only).

Both identities come from the run's one description (batch/identity.py). Key of an
answer: the engine's identity (model URI and content identity, runner, output-changing
settings, vLLM's version, the prompt versions of the tasks it serves) + the adapter's
content identity + the request itself (rendered messages or text, token budget, label
choices). Decoding is greedy (temperature 0), so an answer is a pure function of its key
and a warm run's output equals a cold run's. Failures are never cached.

Storage: one Lance dataset per level and identity (`<cache uri>/rows/<task identity>/`,
`<cache uri>/answers/<engine identity>/`), each two tables:

- `entries.lance`: `key` (sha256, 32 bytes, with a B-tree index) and the values (a task's
  columns with their Arrow types, or an answer as JSON). Keys are uniformly random, so no
  file layout groups one batch's keys: a batch looks up its ~1,000 keys through the index
  and reads only their rows (Lance reads single rows; Parquet reads whole pages). Random
  keys also mean each key reads its own index page: pages are small (`INDEX_PAGE_ROWS`
  rows instead of Lance's 4,096), so a lookup reads and compares 16x less at 10M entries,
  and the index cache is small, since a page read for one batch is rarely needed by the
  next. Memory and time per lookup then barely grow with the cache (figures: BENCHMARKS.md).
- `used.lance`: one row per use, `key`, `source` (the row-cache key of the text the use
  came from), `day`, `hit`. It gives retention its last-used day, `cache forget` the answers
  derived from a text, and `cache stats` the hit rate of the last runs.

Writers never coordinate: each actor appends (Lance commits with put-if-absent, so
concurrent appends from actors and from overlapping nights all land). A use is logged before
its entry is appended, so retention never drops an entry a running job just wrote. Files
stay bounded by `compact` (after each publish, or `python -m batch cache compact`): it drops
entries unused for `cache.retention_days`, folds small files, brings the index up to date
and removes superseded versions once older than a grace period (a run still reading them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc

from batch.io.storage import Location
from batch.tasks.base import Classification, Completion, Failure, Request, Result, Scores

log = logging.getLogger(__name__)

_RESULT_TYPES = {cls.__name__: cls for cls in (Completion, Classification, Scores)}
KEY = pa.binary(32)
USED_SCHEMA = pa.schema([("key", KEY), ("source", KEY), ("day", pa.date32()), ("hit", pa.bool_())])
LEVELS = ("rows", "answers")
# Rows per page of the key index. A lookup of random keys reads (and compares) one page per
# key: at 10M entries Lance's default of 4,096 made a 1,000-key lookup read 130 MB and take
# 0.37-0.53 s; 256 reads 10 MB in 0.07-0.10 s, and the pages' directory stays a few MB
# (measured: BENCHMARKS.md, "Cache at scale"). Compaction rebuilds an index with larger pages.
INDEX_PAGE_ROWS = 256
# An actor's share of Lance's caches, whatever the cache's size. Pages of random keys are
# rarely read twice, so a larger index cache only keeps memory (32 MiB: +80 MiB RSS over 30
# lookups at 10M, 8 MiB: +53 MiB, same speed); file metadata is read once and kept.
INDEX_CACHE_BYTES = 8 << 20
METADATA_CACHE_BYTES = 32 << 20
DELETE_CHUNK = 10_000  # keys per delete predicate
CREATE_WAIT_SECONDS = 60
FRAGMENT_ROWS = 1 << 20  # compaction folds files below this size
INDEX_SEGMENTS = 8  # index segments (one per night) before compaction merges them


def text_key(text: str) -> bytes:
    """A text's key in the row cache, and the `source` of every use it causes."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class Store:
    """One level's entries for one identity, and their use log (see the module docstring)."""

    def __init__(self, folder: Location):
        self.folder = folder
        self._entries: Any = None  # the lance dataset, opened on first read
        self._opened = False

    # -- locations ---------------------------------------------------------------------------
    def uri(self, table: str) -> str:
        location = self.folder.join(f"{table}.lance")
        return location.uri if location.is_s3 else location.path

    @property
    def options(self) -> dict[str, str]:
        return lance_options(self.folder)

    def dataset(self, table: str, *, bounded: bool = False):
        import lance

        kwargs = {"index_cache_size_bytes": INDEX_CACHE_BYTES, "metadata_cache_size_bytes": METADATA_CACHE_BYTES} if bounded else {}
        try:
            return lance.dataset(self.uri(table), storage_options=self.options, **kwargs)
        except (ValueError, FileNotFoundError, OSError) as exc:
            if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                return None
            raise

    def entries(self):
        """The entries as of the first call (an actor reads one version: its own appends are
        in its own memory)."""
        if not self._opened:
            self._entries, self._opened = self.dataset("entries", bounded=True), True
        return self._entries

    def count(self) -> int:
        dataset = self.entries()
        return 0 if dataset is None else dataset.count_rows()

    # -- reading -----------------------------------------------------------------------------
    def lookup(self, keys: list[bytes], columns: list[str]) -> dict[bytes, dict[str, Any]]:
        dataset = self.entries()
        if dataset is None or not keys:
            return {}
        table = dataset.to_table(columns=["key", *columns], filter=pc.field("key").isin(pa.array(keys, KEY)))
        found: dict[bytes, dict[str, Any]] = {}
        for row in table.to_pylist():  # two actors may have added the same key: either will do
            found.setdefault(row.pop("key"), row)
        return found

    # -- writing -----------------------------------------------------------------------------
    def log_use(self, keys: list[bytes], sources: list[bytes | None], hit: bool, day: date | None = None) -> None:
        if keys:
            day = day or today()
            table = pa.table({"key": keys, "source": sources, "day": [day] * len(keys), "hit": [hit] * len(keys)}, schema=USED_SCHEMA)
            self.append("used", table)

    def append(self, table_name: str, table: pa.Table) -> None:
        import lance

        uri = self.uri(table_name)
        if self.dataset(table_name) is None:
            self._create(table_name, table.schema)
        lance.write_dataset(table, uri, mode="append", storage_options=self.options)

    def _create(self, table_name: str, schema: pa.Schema) -> None:
        """Create a table empty, once. Lance commits a create as an overwrite, and a racing
        creator's overwrite would drop rows appended in between: so creators first race
        for a marker written with put-if-absent (batch/io/lease.py's conditional writes);
        the loser waits for the winner's table (or, if the winner died, creates it after
        `CREATE_WAIT_SECONDS`)."""
        import lance

        from batch.io.lease import _LocalObject, _S3Object

        marker = self.folder.join(f"{table_name}.lance.created")
        won = (_S3Object(marker) if marker.is_s3 else _LocalObject(marker)).create(b"") is not None
        deadline = time.monotonic() + CREATE_WAIT_SECONDS
        while not won and self.dataset(table_name) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.dataset(table_name) is None:
            if not self.folder.is_s3:
                os.makedirs(self.folder.path, exist_ok=True)
            lance.write_dataset(schema.empty_table(), self.uri(table_name), mode="create", storage_options=self.options)


class RowCache:
    """Finished task columns per text: `entries` holds `key` (sha256 of the masked text) and
    the task's own columns with their Arrow types, so cached values come back exactly as a
    cold run wrote them."""

    def __init__(self, root: Location, identity: str, columns: list[pa.Field]):
        self.store = Store(root.join("rows", identity))
        self.folder = self.store.folder
        self.schema = pa.schema([pa.field("key", KEY), *columns])
        self.names = [field.name for field in columns]
        self.found: dict[bytes, dict[str, Any]] = {}  # this batch's hits
        self.looked_up: set[bytes] = set()
        self.pending: dict[bytes, dict[str, Any]] = {}
        self.usable: bool | None = None  # None: not yet checked against the stored columns

    key = staticmethod(text_key)

    def load(self) -> int:
        """Open the entries (their index and file list, not their rows); the count is from
        metadata."""
        dataset = self.store.entries()
        self.usable = True
        if dataset is None:
            return 0
        stored = pa.schema([dataset.schema.field(name) for name in self.schema.names if name in dataset.schema.names])
        if not stored.equals(self.schema):  # another version of the columns: not this identity's answers
            log.warning("row cache %s: columns differ from this task's; not used", self.folder.uri)
            self.usable = False
            return 0
        return dataset.count_rows()

    def prefetch(self, texts: Iterable[str]) -> None:
        """Look up a batch's texts in one read (the index finds their rows), and log the hits'
        use. `get` then answers from memory."""
        keys = list(dict.fromkeys(self.key(text) for text in texts))
        if self.usable is None:
            self.load()
        self.found = self.store.lookup(keys, self.names) if self.usable else {}
        self.looked_up = set(keys)
        hits = list(self.found)
        self.store.log_use(hits, hits, hit=True)

    def get(self, text: str) -> dict[str, Any] | None:
        key = self.key(text)
        if key not in self.looked_up:
            self.prefetch([text])
        return self.found.get(key)

    def add(self, text: str, values: dict[str, Any]) -> None:
        key = self.key(text)
        if key not in self.found:
            self.pending[key] = values

    def flush(self) -> None:
        if self.usable is None:
            self.load()
        if not self.pending or not self.usable:
            self.pending.clear()
            return
        keys = list(self.pending)
        columns = {"key": keys, **{name: [v.get(name) for v in self.pending.values()] for name in self.names}}
        self.store.log_use(keys, keys, hit=False)  # first: retention never drops a fresh entry
        self.store.append("entries", pa.table(columns, schema=self.schema))
        self.pending.clear()


class ResultCache:
    """Single engine answers: `entries` holds `key` and `result` (JSON)."""

    def __init__(self, root: Location, identity: str, adapter_fingerprints: dict[str, str]):
        self.identity = identity
        self.store = Store(root.join("answers", identity))
        self.folder = self.store.folder
        self.adapter_fingerprints = adapter_fingerprints
        self.entries = 0
        self.found: dict[bytes, str] = {}
        self.pending: dict[bytes, tuple[str, list[bytes]]] = {}  # key -> (result, sources)

    @property
    def empty(self) -> bool:
        return self.entries == 0

    def load(self) -> int:
        self.entries = self.store.count()
        return self.entries

    def key(self, request: Request) -> bytes:
        adapter = getattr(request, "adapter", None)
        text = repr((request, self.adapter_fingerprints.get(adapter) if adapter else None))
        return hashlib.sha256(text.encode()).digest()

    def prefetch(self, requests: Iterable[Request], sources: dict[Request, set[bytes]] | None = None) -> None:
        """Look up a batch's requests in one read, and log each hit's use with the texts it
        served (`sources`: request -> row-cache keys of the texts whose plans asked it)."""
        keyed = {self.key(request): request for request in requests}
        found = self.store.lookup(list(keyed), ["result"]) if self.entries else {}
        self.found = {key: row["result"] for key, row in found.items()}
        keys, origins = _by_source(((k, keyed[k]) for k in self.found), sources or {})
        self.store.log_use(keys, origins, hit=True)

    def get(self, request: Request) -> Result | None:
        stored = self.found.get(self.key(request))
        if stored is None:
            return None
        record = json.loads(stored)
        cls = _RESULT_TYPES[record.pop("type")]
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})

    def add(self, request: Request, result: Result, sources: Iterable[bytes] = ()) -> None:
        if isinstance(result, Failure):
            return
        key = self.key(request)
        if key not in self.found and key not in self.pending:
            value = json.dumps({"type": type(result).__name__, **asdict(result)}, ensure_ascii=False)
            self.pending[key] = (value, sorted(set(sources)))

    def flush(self) -> None:
        if not self.pending:
            return
        keys = [key for key, (_, sources) in self.pending.items() for _ in sources or [None]]
        origins = [source for _, sources in self.pending.values() for source in sources or [None]]
        self.store.log_use(keys, origins, hit=False)  # first: retention never drops a fresh entry
        table = pa.table({"key": list(self.pending), "result": [value for value, _ in self.pending.values()]},
                         schema=pa.schema([("key", KEY), ("result", pa.string())]))  # fmt: skip
        self.store.append("entries", table)
        self.entries += len(self.pending)
        self.pending.clear()


def _by_source(items: Iterable[tuple[bytes, Request]], sources: dict[Request, set[bytes]]) -> tuple[list, list]:
    keys: list[bytes] = []
    origins: list[bytes | None] = []
    for key, request in items:
        for source in sorted(sources.get(request) or [None], key=lambda s: s or b""):
            keys.append(key)
            origins.append(source)
    return keys, origins


# -- maintenance: compaction, retention, forgetting, statistics ------------------------------


@dataclass
class Compacted:
    folder: str
    entries: int
    dropped: int
    files_before: int
    files_after: int


def stores(root: Location) -> list[tuple[str, str, Store]]:
    """(level, identity, store) of every identity under the cache root."""
    found = []
    for level in LEVELS:
        base = root.join(level)
        identities = set()
        for info in base.list_files():
            relative = posixpath.relpath(info.path, base.path)
            if "/" in relative and relative.split("/", 2)[1].endswith(".lance"):
                identities.add(relative.split("/", 1)[0])
        found += [(level, identity, Store(base.join(identity))) for identity in sorted(identities)]
    return found


def compact(store: Store, retention_days: int | None, grace: timedelta, now: date | None = None) -> Compacted:
    """Drop entries unused for `retention_days` (and their use rows), fold small files into
    large ones, index the new rows, and remove versions superseded more than `grace` ago."""
    files_before = len(store.folder.list_files())
    dropped = 0
    entries, used = store.dataset("entries"), store.dataset("used")
    if retention_days is not None and entries is not None and used is not None:
        cutoff = (now or today()) - timedelta(days=retention_days)
        # Every entry's write is a use, so an entry unused since the cutoff is one whose uses
        # all come before it: found in the use log alone, whatever the number of entries.
        day = pc.field("day")
        old = pc.unique(used.to_table(columns=["key"], filter=day < pa.scalar(cutoff, pa.date32())).column("key"))
        doomed_keys = old
        if len(old):  # of those, the ones used again since (memory: the old ones, not the log)
            again = (day >= pa.scalar(cutoff, pa.date32())) & pc.field("key").isin(old)
            recent = used.to_table(columns=["key"], filter=again).column("key").combine_chunks()
            doomed_keys = pc.filter(old, pc.invert(pc.is_in(old, value_set=recent)))
        before = entries.count_rows()
        for start in range(0, len(doomed_keys), DELETE_CHUNK):
            entries.delete(pc.field("key").isin(doomed_keys.slice(start, DELETE_CHUNK)))
        used.delete(day < pa.scalar(cutoff, pa.date32()))
        dropped = before - entries.count_rows()
    for dataset in (entries, used):
        if dataset is None:
            continue
        if len(dataset.get_fragments()) > 1 or any(f.deletion_file() for f in dataset.get_fragments()):
            # files of a million rows or more stay as they are: a night rewrites its own
            dataset.optimize.compact_files(target_rows_per_fragment=FRAGMENT_ROWS)
    if entries is not None and entries.count_rows():
        index = next((index for index in entries.describe_indices() if index.name == "key_idx"), None)
        if index is None or _page_rows(entries) > 2 * INDEX_PAGE_ROWS:  # none yet, or an older layout's
            index_keys(entries)
        else:  # the night's rows get an index segment of their own; segments merge now and then
            # (Lance keeps the index's page size for new and merged segments)
            entries.optimize.optimize_indices(num_indices_to_merge=0 if len(index.segments) < INDEX_SEGMENTS else len(index.segments))
    for dataset in (entries, used):
        if dataset is not None:
            dataset.cleanup_old_versions(older_than=grace)
    fresh = store.dataset("entries")
    return Compacted(store.folder.uri, fresh.count_rows() if fresh else 0, dropped, files_before, len(store.folder.list_files()))


def index_keys(entries) -> None:
    """(Re)build the key index over every row, with small pages (`INDEX_PAGE_ROWS`)."""
    from lance.indices import IndexConfig

    layout = IndexConfig(index_type="btree", parameters={"zone_size": INDEX_PAGE_ROWS})
    entries.create_scalar_index("key", layout, name="key_idx", replace=True)


def _page_rows(entries) -> float:
    """Rows per page of the key index, over its segments."""
    index = entries.stats.index_stats("key_idx")
    pages = sum(segment["num_pages"] for segment in index["segments"])
    return index["num_indexed_rows"] / max(1, pages)


def compact_all(root: Location, retention_days: int | None, grace: timedelta) -> list[Compacted]:
    return [compact(store, retention_days, grace) for _, _, store in stores(root)]


def compact_cache(job, echo) -> None:
    """After a publish: compact every identity of the job's cache. Never fails the run: a
    failed compaction leaves a readable cache, and the next one tries again."""
    try:
        root = Location(job.cache.uri, job.storage)
        done = compact_all(root, job.cache.retention_days, timedelta(hours=job.cache.version_grace_hours))
    except Exception as exc:  # noqa: BLE001 - maintenance after the output is safe
        echo(f"cache: compaction failed ({type(exc).__name__}: {exc}); `python -m batch cache compact` retries it")
        return
    dropped = sum(c.dropped for c in done)
    files = sum(c.files_after for c in done)
    echo(f"cache: compacted {len(done)} tables, {sum(c.entries for c in done)} entries in {files} files"
         + (f", {dropped} unused for {job.cache.retention_days} days dropped" if dropped else ""))  # fmt: skip


def forget(root: Location, text_keys: list[bytes]) -> dict[str, int]:
    """Remove every cached output derived from these texts: their rows in each task's row
    cache and, in each engine's answer cache, the answers their requests received (found
    through the use log's `source`), with the use rows that name them."""
    removed = {level: 0 for level in LEVELS}
    if not text_keys:
        return removed
    sources = pa.array(text_keys, KEY)
    for level, _, store in stores(root):
        entries, used = store.dataset("entries"), store.dataset("used")
        if level == "rows":
            doomed = sources
        elif used is not None:
            doomed = pc.unique(used.to_table(columns=["key"], filter=pc.field("source").isin(sources)).column("key"))
        else:
            continue
        if len(doomed) == 0:
            continue
        if entries is not None:
            before = entries.count_rows()
            entries.delete(pc.field("key").isin(doomed))
            removed[level] += before - entries.count_rows()
        if used is not None:
            used.delete(pc.field("key").isin(doomed) | pc.field("source").isin(sources))
    return removed


def stats(root: Location, days: int = 7, now: date | None = None) -> list[dict[str, Any]]:
    """Per level and identity: entries, bytes, files, and per day of the last `days` the
    lookups that hit and the entries added (a miss that was inferred and kept)."""
    since = (now or today()) - timedelta(days=days)
    out = []
    for level, identity, store in stores(root):
        files = store.folder.list_files()
        entries, used = store.dataset("entries"), store.dataset("used")
        per_day: dict[str, dict[str, int]] = {}
        if used is not None:
            table = used.to_table(columns=["key", "day", "hit"], filter=pc.field("day") >= pa.scalar(since, pa.date32()))
            # one count per key and day: an answer used by several texts is one lookup
            table = table.group_by(["key", "day", "hit"]).aggregate([])
            for row in table.group_by(["day", "hit"]).aggregate([("key", "count")]).to_pylist():
                day = per_day.setdefault(row["day"].isoformat(), {"hits": 0, "added": 0})
                day["hits" if row["hit"] else "added"] += row["key_count"]
        out.append({
            "level": level, "identity": identity, "entries": entries.count_rows() if entries else 0,
            "bytes": sum(info.size for info in files), "files": len(files),
            "days": {day: {**n, "hit_rate": n["hits"] / max(1, n["hits"] + n["added"])} for day, n in sorted(per_day.items())},
        })  # fmt: skip
    return out


def today() -> date:
    return datetime.now(timezone.utc).date()


def lance_options(location: Location) -> dict[str, str]:
    """Lance's object-store settings for a location: the endpoint and region only;
    credentials come from the standard AWS chain, as for pyarrow (batch/io/storage.py)."""
    if not location.is_s3:
        return {}
    options: dict[str, str] = {}
    storage = location.storage
    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        options["aws_endpoint"] = endpoint
        if urlparse(endpoint).scheme == "http":
            options["allow_http"] = "true"
    region = storage.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["aws_region"] = region
    return options


def default_cache_uri(output_template: str) -> str:
    """Next to the output, shared by every night: the part of the output URI before its
    first `{date}` (`s3://b/sentiment/{date}/` -> `s3://b/sentiment/_cache`), or
    `<output>/_cache` when the URI has no date."""
    if "{date}" in output_template:
        head = output_template.split("{date}", 1)[0].rstrip("/")
        return f"{head}/_cache"
    return f"{output_template.rstrip('/')}/_cache"
