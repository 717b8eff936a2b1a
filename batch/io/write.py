"""Write: staged parts, per-input-file commits, one idempotent publish.

Layout under the output URI:

    _lease.json                                                  who writes this output (batch/io/lease.py)
    _staging/<job-fingerprint>/parts/<file-key>/<uuid>.parquet   written by Ray tasks
    _staging/<job-fingerprint>/committed/<file-key>.json        an input file fully written
    <file-key>-<n>.parquet                                       published data
    _manifest.json, _summary.json, _SUCCESS                      written last, in that order

The protocol (ARCHITECTURE.md has the table of crash points): everything is written under
names nobody trusts (`_staging/`, and data files while `_SUCCESS` is absent); `_SUCCESS`,
which lists the published files, is the one write that makes the output complete. The
publish before it copies parts (never moves them) under deterministic names and removes
unlisted data files, so it can be cut anywhere and redone from staging; the staging is
dropped only after `_SUCCESS`. Readers that list the folder see no staging data (Arrow,
Spark and Ray skip names starting with `_`). A rerun with the same job (same fingerprint)
keeps the committed files and reads only the others: that is the resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch import schema
from batch.faults import fault_point
from batch.io.lease import Lease
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
    """The output location of one job: staging, commits, publish (see the module's protocol)."""

    def __init__(self, location: Location, fingerprint: str = ""):
        """Without a fingerprint: the output as a reader sees it (published or not, its
        lease, all staging), before the run's identity is resolved."""
        self.location = location
        self.fingerprint = fingerprint
        self.staging = location.join(STAGING, fingerprint)
        self.replaces_published = False  # set by withdraw(); where the overwrite.midway crash point fires

    def lease(self, run_id: str, ttl_seconds: float) -> Lease:
        return Lease(self.location, run_id, ttl_seconds)

    # --- state -----------------------------------------------------------------------

    def is_published(self) -> bool:
        return self.location.join(SUCCESS).exists()

    def has_staging(self) -> bool:
        return bool(self.location.join(STAGING).list_files())

    def committed(self) -> dict[str, dict]:
        """Input URI -> commit record, for files a previous attempt finished. A record whose
        parts are not all staged any more does not count: its file is processed again."""
        staged = {info.path for info in self.staging.join("parts").list_files()}
        folder = self.staging.join("committed")
        records = {}
        for info in folder.list_files():
            if info.path.endswith(".json"):
                record = Location(folder.uri_of(info.path), folder.storage).read_json()
                if all(Location(part, folder.storage).path in staged for part in record["parts"]):
                    records[record["source"]] = record
        return records

    # --- writes before the publish (all under _staging/, which no reader trusts) ------

    def discard_other_attempts(self) -> None:
        """Staging left by a different job definition cannot be resumed: remove it."""
        root = self.location.join(STAGING)
        for info in root.list_files():
            relative = info.path[len(root.path) :].lstrip("/")
            if relative.split("/", 1)[0] != self.fingerprint:
                root.fs.delete_file(info.path)

    def discard_staging(self) -> None:
        """All staging, of every attempt: only once _SUCCESS covers the output, or before
        an --overwrite redoes it."""
        self.location.join(STAGING).delete_dir()

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
        fault_point("commit.after_file")
        return record

    # --- publish ---------------------------------------------------------------------

    def withdraw(self) -> None:
        """Stop claiming the output is complete: _SUCCESS first, then the manifest and summary
        that describe it. The data files stay until the next publish replaces them."""
        if self.location.join(SUCCESS).exists():
            self.replaces_published = True
        for name in (SUCCESS, MANIFEST, SUMMARY):
            target = self.location.join(name)
            if target.exists():
                retrying(lambda: target.fs.delete_file(target.path), target.storage, target.uri)

    def publish(
        self, commits: list[dict], manifest: dict, summary: dict, still_held: Callable[[], None] = lambda: None
    ) -> list[str]:
        """Copy every committed part to its deterministic name, remove data files nobody
        lists, write the manifest and summary, then _SUCCESS (the commit point), then drop
        the staging. Every step before _SUCCESS can be redone from any state it leaves;
        `still_held` raises if this run lost its lease, so it stops writing."""
        placements = self._placements(commits)
        self.withdraw()
        for n, (staged, target) in enumerate(placements, 1):
            still_held()
            retrying(lambda: self._copy(staged, target), target.storage, staged.uri)
            fault_point("publish.after_part")
            if self.replaces_published and n == (len(placements) + 1) // 2:
                fault_point("overwrite.midway")
        published = [target.uri for _, target in placements]
        self._remove_unlisted(published)
        still_held()
        self.location.join(MANIFEST).write_json({**manifest, "files": published})
        self.location.join(SUMMARY).write_json(summary)
        fault_point("publish.after_manifest")
        still_held()
        self.location.join(SUCCESS).write_json(
            {"run_id": manifest.get("run_id"), "rows": manifest.get("rows"), "files": published}
        )
        fault_point("publish.after_success")
        self.discard_staging()  # optional: a rerun that finds _SUCCESS removes what is left
        return published

    def _placements(self, commits: list[dict]) -> list[tuple[Location, Location]]:
        """(staged part, published name) for every committed part: `<file-key>-<n>.parquet`."""
        placements = []
        for record in sorted(commits, key=lambda r: r["source"]):
            key = file_key(record["source"])
            for n, part_uri in enumerate(record["parts"]):
                staged = Location(part_uri, self.location.storage)
                placements.append((staged, self.location.join(f"{key}-{n:04d}.parquet")))
        return placements

    def _copy(self, staged: Location, target: Location) -> None:
        """A copy, never a move: the staged part stays until _SUCCESS, so a publish cut
        anywhere is redone from staging. Each published name appears whole."""
        if staged.is_s3:
            staged.fs.copy_file(staged.path, target.path)  # server-side; an object appears whole
            return
        tmp = self.staging.join("publishing", posixpath.basename(target.path)).path
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by a cut publish
        try:
            os.link(staged.path, tmp)  # same folder tree: no bytes copied
        except OSError:
            shutil.copyfile(staged.path, tmp)
        os.makedirs(os.path.dirname(target.path), exist_ok=True)
        os.replace(tmp, target.path)

    def _remove_unlisted(self, published: list[str]) -> None:
        """Data files at the top of the output that this publish does not list: parts of an
        earlier publish (--overwrite) or of a publish cut short. Gone before _SUCCESS, so a
        reader that lists the folder reads exactly the listed files."""
        keep = {Location(uri, self.location.storage).path for uri in published}
        fs, root = self.location.fs, self.location.path
        selector = pafs.FileSelector(root, recursive=False, allow_not_found=True)
        for info in retrying(lambda: fs.get_file_info(selector), self.location.storage, self.location.uri):
            name = posixpath.basename(info.path)
            if info.type == pafs.FileType.File and name.endswith(".parquet") and not name.startswith(("_", ".")):
                if info.path not in keep:
                    retrying(lambda: fs.delete_file(info.path), self.location.storage, info.path)
