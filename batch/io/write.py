"""Write: staged parts, per-input-file commits, one atomic publish.

Layout under the output URI:

    _staging/<job-fingerprint>/parts/<file-key>/<uuid>.parquet   written by Ray tasks
    _staging/<job-fingerprint>/committed/<file-key>.json        an input file fully written
    <file-key>-<n>.parquet                                       published data
    _manifest.json, _summary.json, _SUCCESS                      written last, in that order

Readers that list the folder see no staging data (Arrow, Spark and Ray skip names starting
with `_`), and `_SUCCESS` appears only after every published file and the manifest exist.
A rerun with the same job (same fingerprint) keeps the committed files and reads only the
others: that is the resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch import schema
from batch.io.read import InputFile
from batch.io.storage import Location, retrying

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
SUMMARY = "_summary.json"
STAGING = "_staging"


def file_key(uri: str) -> str:
    """A stable, readable name for an input file's output: `<stem>-<hash of the URI>`."""
    stem = posixpath.basename(uri.rstrip("/")).removesuffix(".parquet")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:60]
    return f"{safe}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def make_part_writer(staging: Location, run_id: str):
    """The write stage: a Ray Data `map_batches` function that writes each batch's rows, one
    Parquet part per source file, and returns one small record per part for the driver. A
    file the reader could not read to its end (a marker row, `schema.READ_ERROR`) gets an
    `unreadable` record instead, and none of its rows in this batch are written."""

    def write(batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        records = []
        unreadable = _unreadable_sources(batch)
        sources = batch.column(schema.SOURCE_FILE)
        for source in sources.unique().to_pylist():
            if source in unreadable:
                reason = unreadable[source]
                records.append({"source": source, "part": None, "rows": 0, "counts": {}, "unreadable": reason})
                continue
            rows = batch.filter(pc.equal(sources, source))
            counts = schema.outcome_counts(rows)
            rows = rows.drop_columns(schema.internal_columns(rows))
            rows = schema.set_column(rows, pa.field(schema.RUN_ID, pa.string()), [run_id] * rows.num_rows)
            part = staging.join("parts", file_key(source), f"{uuid.uuid4().hex}.parquet")
            retrying(lambda: _write_parquet(rows, part), staging.storage, part.uri)
            record = {"source": source, "part": part.uri, "rows": rows.num_rows, "counts": counts, "unreadable": None}
            records.append(record)
        if parts := [record for record in records if record["part"]]:  # charged once per batch
            parts[0]["counts"]["write_ms"] = int((time.perf_counter() - started) * 1000)
        for record in records:
            record["counts"] = json.dumps(record["counts"])
        return pa.Table.from_pylist(records, schema=PART_RECORD)

    return write


def _unreadable_sources(batch: pa.Table) -> dict[str, str]:
    """Source file -> reason, for the files whose marker row is in this batch."""
    if schema.READ_ERROR not in batch.column_names:
        return {}
    markers = batch.filter(pc.is_valid(batch.column(schema.READ_ERROR)))
    return dict(zip(markers.column(schema.SOURCE_FILE).to_pylist(), markers.column(schema.READ_ERROR).to_pylist()))


def _write_parquet(table: pa.Table, target: Location) -> None:
    fs = target.fs
    if not target.is_s3:
        fs.create_dir(posixpath.dirname(target.path), recursive=True)
    pq.write_table(table, target.path, filesystem=fs)


# One record per staged part; `unreadable` (the reason) marks a file whose bytes failed to
# read: `part` is null and the driver quarantines the file (batch/pipeline.py `_consume`).
PART_RECORD = pa.schema(
    [("source", pa.string()), ("part", pa.string()), ("rows", pa.int64()), ("counts", pa.string()),
     ("unreadable", pa.string())]
)  # fmt: skip


@dataclass
class FileProgress:
    file: InputFile
    parts: list[str] = field(default_factory=list)
    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    unreadable: str | None = None  # why the file's bytes failed to read: committed with no parts

    @property
    def complete(self) -> bool:
        return self.rows >= self.file.rows


class Output:
    """The output location of one job: staging, commits, publish."""

    def __init__(self, location: Location, fingerprint: str):
        self.location = location
        self.fingerprint = fingerprint
        self.staging = location.join(STAGING, fingerprint)

    # --- state -----------------------------------------------------------------------

    def is_published(self) -> bool:
        return self.location.join(SUCCESS).exists()

    def committed(self) -> dict[str, dict]:
        """Input URI -> commit record, for files a previous attempt finished."""
        folder = self.staging.join("committed")
        records = {}
        for info in folder.list_files():
            if info.path.endswith(".json"):
                record = Location(folder.uri_of(info.path), folder.storage).read_json()
                records[record["source"]] = record
        return records

    def discard_other_attempts(self) -> None:
        """Staging left by a different job definition cannot be resumed: remove it."""
        root = self.location.join(STAGING)
        for info in root.list_files():
            relative = info.path[len(root.path) :].lstrip("/")
            if relative.split("/", 1)[0] != self.fingerprint:
                root.fs.delete_file(info.path)

    def commit(self, progress: FileProgress) -> dict:
        record = {
            "source": progress.file.uri,
            "size": progress.file.size,
            "rows": progress.rows,
            "parts": progress.parts,
            "counts": progress.counts,
            "unreadable": progress.unreadable,
        }
        self.staging.join("committed", f"{file_key(progress.file.uri)}.json").write_json(record)
        return record

    # --- publish ---------------------------------------------------------------------

    def publish(self, commits: list[dict], manifest: dict, summary: dict) -> list[str]:
        """Move committed parts into place, then the manifest and summary, then _SUCCESS.
        Part names are deterministic, so a publish interrupted halfway redoes cleanly."""
        self.unpublish()
        published = []
        for record in sorted(commits, key=lambda r: r["source"]):
            key = file_key(record["source"])
            for n, part_uri in enumerate(record["parts"]):
                target = self.location.join(f"{key}-{n:04d}.parquet")
                source = Location(part_uri, self.location.storage)
                if source.exists():
                    retrying(lambda: self._move(source, target), self.location.storage, part_uri)
                elif not target.exists():
                    raise FileNotFoundError(f"{part_uri}: committed part is missing from staging")
                published.append(target.uri)
        manifest = {**manifest, "files": published}
        self.location.join(MANIFEST).write_json(manifest)
        self.location.join(SUMMARY).write_json(summary)
        self.location.join(SUCCESS).write_json({"run_id": manifest.get("run_id"), "rows": manifest.get("rows")})
        self.staging.delete_dir()
        return published

    def unpublish(self) -> None:
        """Remove a previous publish (for --overwrite): _SUCCESS first, so no reader trusts
        a folder that is being replaced."""
        for name in (SUCCESS, MANIFEST, SUMMARY):
            target = self.location.join(name)
            if target.exists():
                target.fs.delete_file(target.path)
        for info in self.location.list_files():
            relative = info.path[len(self.location.path) :].lstrip("/")
            if "/" not in relative and relative.endswith(".parquet") and not relative.startswith(("_", ".")):
                self.location.fs.delete_file(info.path)

    @staticmethod
    def _move(source: Location, target: Location) -> None:
        if source.is_s3:
            source.fs.copy_file(source.path, target.path)
            source.fs.delete_file(source.path)
        else:
            os.makedirs(os.path.dirname(target.path), exist_ok=True)
            os.replace(source.path, target.path)


def job_fingerprint(job_definition: dict[str, Any]) -> str:
    """Identifies what a run computes (tasks, models, input, columns): same fingerprint, same
    output, so a rerun may resume from its committed files."""
    text = json.dumps(job_definition, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
