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

Layout: `<cache uri>/<engine identity>/<uuid>.parquet`, columns `key` (sha256, binary)
and `result` (JSON). An actor loads its engine's folder once at start (only that folder:
a model change starts a new one) and writes one part per batch of new answers.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from batch.io.storage import Location, retrying
from batch.tasks.base import Classification, Completion, Failure, Request, Result, Scores

_RESULT_TYPES = {cls.__name__: cls for cls in (Completion, Classification, Scores)}
_SCHEMA = pa.schema([("key", pa.binary(32)), ("result", pa.string())])


class ResultCache:
    def __init__(self, root: Location, identity: str, adapter_fingerprints: dict[str, str]):
        self.identity = identity
        self.folder = root.join(self.identity)
        self.adapter_fingerprints = adapter_fingerprints
        self.known: dict[bytes, str] = {}
        self.pending: dict[bytes, str] = {}

    def load(self) -> int:
        for table in _read_parts(self.folder):
            self.known.update(zip(table.column("key").to_pylist(), table.column("result").to_pylist()))
        return len(self.known)

    def key(self, request: Request) -> bytes:
        adapter = getattr(request, "adapter", None)
        text = repr((request, self.adapter_fingerprints.get(adapter) if adapter else None))
        return hashlib.sha256(text.encode()).digest()

    def get(self, request: Request) -> Result | None:
        stored = self.known.get(self.key(request))
        if stored is None:
            return None
        record = json.loads(stored)
        cls = _RESULT_TYPES[record.pop("type")]
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})

    def add(self, request: Request, result: Result) -> None:
        if isinstance(result, Failure):
            return
        key = self.key(request)
        if key not in self.known:
            value = json.dumps({"type": type(result).__name__, **asdict(result)}, ensure_ascii=False)
            self.known[key] = self.pending[key] = value

    def flush(self) -> None:
        if self.pending:
            _write_part(self.folder, pa.table({"key": list(self.pending), "result": list(self.pending.values())}, schema=_SCHEMA))
            self.pending.clear()


class RowCache:
    """Finished task columns per text. Layout: `<cache uri>/rows/<task identity>/<uuid>.parquet`,
    columns `key` (sha256 of the text) and the task's own columns with their Arrow types,
    so cached values come back exactly as a cold run wrote them."""

    def __init__(self, root: Location, identity: str, columns: list[pa.Field]):
        self.folder = root.join("rows", identity)
        self.schema = pa.schema([pa.field("key", pa.binary(32)), *columns])
        self.tables: list[pa.Table] = []
        self.index: dict[bytes, tuple[int, int]] = {}  # key -> (table, row): values stay in Arrow memory
        self.pending: dict[bytes, dict[str, Any]] = {}

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()

    def load(self) -> int:
        for table in _read_parts(self.folder):
            if not table.schema.equals(self.schema):
                continue  # written by another version of the columns: not this identity's answers
            n = len(self.tables)
            self.tables.append(table)
            self.index.update((key, (n, row)) for row, key in enumerate(table.column("key").to_pylist()))
        return len(self.index)

    def get(self, text: str) -> dict[str, Any] | None:
        found = self.index.get(self.key(text))
        if found is None:
            return None
        table, row = found
        values = self.tables[table].slice(row, 1).to_pylist()[0]
        del values["key"]
        return values

    def add(self, text: str, values: dict[str, Any]) -> None:
        key = self.key(text)
        if key not in self.index:
            self.pending[key] = values

    def flush(self) -> None:
        if not self.pending:
            return
        names = self.schema.names[1:]
        columns = {"key": list(self.pending), **{name: [v.get(name) for v in self.pending.values()] for name in names}}
        _write_part(self.folder, pa.table(columns, schema=self.schema))
        self.pending.clear()


def _read_parts(folder: Location) -> Iterator[pa.Table]:
    for info in folder.list_files():
        if info.path.endswith(".parquet"):
            part = Location(folder.uri_of(info.path), folder.storage)
            yield retrying(lambda: pq.read_table(part.path, filesystem=part.fs), part.storage, part.uri)


def _write_part(folder: Location, table: pa.Table) -> None:
    """One new part per flush: writers never touch each other's files."""
    part = folder.join(f"{uuid.uuid4().hex}.parquet")
    if not part.is_s3:
        part.fs.create_dir(folder.path, recursive=True)
    retrying(lambda: pq.write_table(table, part.path, filesystem=part.fs), part.storage, part.uri)


def default_cache_uri(output_template: str) -> str:
    """Next to the output, shared by every night: the part of the output URI before its
    first `{date}` (`s3://b/sentiment/{date}/` -> `s3://b/sentiment/_cache`), or
    `<output>/_cache` when the URI has no date."""
    if "{date}" in output_template:
        head = output_template.split("{date}", 1)[0].rstrip("/")
        return f"{head}/_cache"
    return f"{output_template.rstrip('/')}/_cache"
