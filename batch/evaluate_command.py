"""`python -m batch eval`: score a job's published output (local folder or s3:// prefix).

    python -m batch eval OUTPUT --task translation --hypothesis translation_en --reference reference_en
    python -m batch eval OUTPUT --task sentiment --gold gold_sentiment --by source_lang [--json report.json]
    python -m batch eval OUTPUT --task topic --gold gold_topic          # a label task of the run, by name

`--task` is a task kind (`label`, `translation`), a task of the output (by name, from its
`_summary.json`), or an old job file's task name (`sentiment`). The scoring is the kind's own
(batch/report/sections/<kind>.py); this command only reads and prints.

Reads every Parquet file under OUTPUT (names starting with `_` or `.` are skipped, as the
job's own markers are), only the columns it scores. Registered in batch/cli.py with
`main.add_command(eval_command)`.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import pyarrow as pa
import pyarrow.parquet as pq

from batch import evaluate


def read_columns(uri: str, columns: list[str], optional: list[str] = (), storage=None) -> pa.Table:
    """The named columns of every Parquet file under `uri`; `optional` ones are read where
    every file has them. Raises click.ClickException naming what is missing."""
    from batch.config import StorageConfig
    from batch.io.storage import Location, expand_input

    storage = storage or StorageConfig()
    files = expand_input(uri, storage)
    if not files:
        raise click.ClickException(f"{uri}: no Parquet files found")
    fs = Location(uri, storage).fs
    schemas = {path: pq.read_schema(Location(path, storage).path, filesystem=fs) for path, _ in files}
    for path, schema in schemas.items():
        missing = [name for name in dict.fromkeys(columns) if name not in schema.names]
        if missing:
            raise click.ClickException(f"{path}: no column {', '.join(missing)}; it has: {', '.join(schema.names)}")
    wanted = list(dict.fromkeys(columns)) + [name for name in optional if all(name in s.names for s in schemas.values())]
    tables = [pq.read_table(Location(path, storage).path, columns=wanted, filesystem=fs) for path in schemas]
    return pa.concat_tables(tables, promote_options="permissive")


def resolve_task(uri: str, task: str, storage) -> dict[str, Any]:
    """--task as a description {name, kind, column, labels, ...}: a kind, a task the run's
    summary describes, or an old job file's task name."""
    from batch.io.write import SUMMARY
    from batch.report.sections import KINDS, kind_of_legacy
    from batch.report.source import read_side_file

    if task in KINDS:
        return {"name": task, "kind": task}
    summary, _ = read_side_file(uri, storage, SUMMARY)
    described = summary.get("tasks") if isinstance(summary, dict) else None
    for item in described if isinstance(described, list) else []:
        if isinstance(item, dict) and item.get("name") == task and item.get("kind") in KINDS:
            return item
    kind = kind_of_legacy(task)
    if kind is not None:
        return KINDS[kind].describe(task, {})
    names = [item.get("name") for item in described or [] if isinstance(item, dict)]
    raise click.UsageError(
        f"--task {task}: neither a task kind ({', '.join(KINDS)}) nor a task of this output"
        + (f" ({', '.join(map(str, names))})" if names else " (its _summary.json describes no tasks)")
    )


@click.command("eval")
@click.argument("output_uri", metavar="OUTPUT")
@click.option("--task", required=True, metavar="TASK",
              help="a task kind (label, translation), a task of the output by name, or sentiment")
@click.option("--hypothesis", metavar="COLUMN", help="translation column to score, e.g. translation_en")
@click.option("--reference", metavar="COLUMN", help="reference translations (default: reference_<lang> of --hypothesis)")
@click.option("--by", "group_by", metavar="COLUMN",
              help="per-group breakdown, e.g. per-language macro-F1 (translation default: source_lang when present)")
@click.option("--tokenize", help="sacrebleu tokenizer (default: by target language: zh, char for ja/ko/th, else 13a)")
@click.option("--prediction", metavar="COLUMN", help="predicted label column (default: the task's column)")
@click.option("--gold", metavar="COLUMN", help="gold label column, e.g. gold_sentiment")
@click.option("--json", "json_path", metavar="PATH", help="also write the report as JSON (local path or s3://)")
@click.option("--endpoint-url", help="S3-compatible endpoint (default $AWS_ENDPOINT_URL, else AWS)")
def eval_command(output_uri, task, hypothesis, reference, group_by, tokenize, prediction, gold, json_path, endpoint_url):
    """Score OUTPUT: translation with BLEU/chrF, label tasks with accuracy, macro-F1 and a confusion matrix."""
    from batch.config import StorageConfig
    from batch.io.storage import Location, StorageError
    from batch.report.sections import KINDS

    storage = StorageConfig(endpoint_url=endpoint_url)
    try:
        description = resolve_task(output_uri, task, storage)
        kind = KINDS[description["kind"]]
        translation = description["kind"] == "translation"
        report = kind.evaluate(
            lambda uri, columns, optional=(): read_columns(uri, columns, optional, storage),
            output_uri,
            description,
            prediction=(hypothesis or prediction) if translation else (prediction or hypothesis),
            gold=(reference or gold) if translation else (gold or reference),
            by=group_by,
            tokenize=tokenize,
        )
        report["output"] = output_uri
        click.echo(evaluate.format_report(report))
        if json_path:
            Location(json_path, storage).write_json(report)
            click.echo(f"report written to {json_path}")
    except (ValueError, StorageError) as exc:
        click.echo(f"EVAL FAILED: {exc}", err=True)
        sys.exit(1)
