"""`python -m batch cache stats|compact|forget JOB.yaml`: the result cache of a job
(batch/cache.py), seen and kept from the command line.

    cache stats JOB.yaml [--days N] [--json]       entries, bytes, files, hit rate per day
    cache compact JOB.yaml [--grace-hours H]       what a publish does: retention, fold, index
    cache forget JOB.yaml (--text T | --id ID)... [--from URI]
                                                   every cached output derived from those texts
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import click

from batch.config import JobConfig


def _job(job_file: Path, overrides) -> JobConfig:
    from batch.cli import _load
    from batch.config import ConfigError

    try:
        job = _load(job_file, (), None, overrides, None)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not job.cache.uri:
        raise click.UsageError(f"{job_file}: the job has no cache")
    return job


def _root(job: JobConfig):
    from batch.io.storage import Location

    return Location(job.cache.uri, job.storage)


def _options(command):
    command = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a job-file field.")(command)
    return click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))(command)


@click.group()
def cache() -> None:
    """The job's result cache: statistics, compaction, forgetting texts."""


@cache.command()
@_options
@click.option("--days", default=7, show_default=True, help="Hit rate of the runs of this many last days.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats(job_file, overrides, days, as_json):
    """Entries, bytes and files per level and identity, and the hit rate of the last runs
    (per day: lookups that hit, entries added after a miss)."""
    from batch.cache import stats as cache_stats

    job = _job(job_file, overrides)
    report = cache_stats(_root(job), days)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"cache {job.cache.uri}")
    if not report:
        click.echo("  empty")
    for table in report:
        click.echo(f"  {table['level']:<8} {table['identity']}  {table['entries']:>10,} entries  "
                   f"{table['bytes'] / 2**20:>9.1f} MiB  {table['files']:>5} files")  # fmt: skip
        for day, n in table["days"].items():
            click.echo(f"      {day}  {n['hits']:>8,} hits  {n['added']:>8,} added  hit rate {n['hit_rate']:.1%}")


@cache.command()
@_options
@click.option("--grace-hours", type=float, help="Delete replaced files older than this (default: cache.version_grace_hours).")
def compact(job_file, overrides, grace_hours):
    """Drop entries unused for cache.retention_days, fold small files, index new entries,
    delete replaced files past the grace period. Safe while a run writes."""
    from batch.cache import compact_all

    job = _job(job_file, overrides)
    grace = timedelta(hours=job.cache.version_grace_hours if grace_hours is None else grace_hours)
    root = _root(job)
    click.echo(f"cache {root.uri}")
    compacted = 0
    for done in compact_all(root, job.cache.retention_days, grace):
        compacted += 1
        click.echo(f"  {done.folder}: {done.entries:,} entries, {done.dropped:,} dropped, "
                   f"files {done.files_before} -> {done.files_after}")  # fmt: skip
    if not compacted:
        click.echo("  empty: nothing to compact")


@cache.command()
@_options
@click.option("--text", "texts", multiple=True, help="A text whose cached outputs go (repeatable).")
@click.option("--id", "ids", multiple=True, help="A row id (input.id_column) whose text's outputs go (repeatable).")
@click.option("--from", "source", metavar="URI", help="Where to find the ids' texts (default: the job's input.uris).")
def forget(job_file, overrides, texts, ids, source):
    """Remove every cached output derived from the given texts or rows: the task columns in
    the row cache and the engine answers their requests got, so a post that must be erased
    leaves no derived translation behind. Texts are masked as the job masks them."""
    from batch.cache import forget as cache_forget
    from batch.cache import text_key
    from batch.text import privacy

    job = _job(job_file, overrides)
    if not texts and not ids:
        raise click.UsageError("give --text or --id (repeatable)")
    found = list(texts)
    if ids:
        by_id = _texts_of(job, [source] if source else job.input.uris, set(ids))
        if missing := [i for i in ids if i not in by_id]:
            raise click.UsageError(f"ids not found in {source or ', '.join(job.input.uris)}: {', '.join(missing[:10])}")
        found += [t for i in ids for t in by_id[i]]
    masker = privacy.Masker(job.privacy)
    keys = {text_key(text) for text in found} | {text_key(masker.mask(text).text) for text in found}
    removed = cache_forget(_root(job), sorted(keys))
    click.echo(f"forgot {len(found)} texts: {removed['rows']} row-cache entries, {removed['answers']} answers")


def _texts_of(job: JobConfig, uris: list[str], ids: set[str]) -> dict[str, list[str]]:
    """id -> its texts, from the Parquet files under `uris` (ids compared as strings)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from batch.io.storage import Location, expand_input

    id_column, text_column = job.input.id_column, job.input.text_column
    out: dict[str, list[str]] = {}
    for uri in uris:
        for file_uri, _ in expand_input(uri, job.storage):
            location = Location(file_uri, job.storage)
            table = pq.read_table(location.path, filesystem=location.fs, columns=[id_column, text_column])
            table = table.filter(pc.is_in(pc.cast(table.column(id_column), "string"), value_set=pa.array(sorted(ids), pa.string())))
            for row in table.to_pylist():
                if row[text_column] is not None:
                    out.setdefault(str(row[id_column]), []).append(row[text_column])
    return out
