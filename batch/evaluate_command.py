"""`python -m batch eval`: score a job's published output (local folder or s3:// prefix).

    python -m batch eval OUTPUT --task translation --hypothesis translation_en --reference reference_en
    python -m batch eval OUTPUT --task sentiment --prediction sentiment --gold gold_sentiment [--json report.json]

Reads every Parquet file under OUTPUT (names starting with `_` or `.` are skipped, as the
job's own markers are), only the columns it scores. Registered in batch/cli.py with
`main.add_command(eval_command)`.
"""

from __future__ import annotations

import re
import sys

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
        missing = [name for name in columns if name not in schema.names]
        if missing:
            raise click.ClickException(f"{path}: no column {', '.join(missing)}; it has: {', '.join(schema.names)}")
    wanted = list(columns) + [name for name in optional if all(name in s.names for s in schemas.values())]
    tables = [pq.read_table(Location(path, storage).path, columns=wanted, filesystem=fs) for path in schemas]
    return pa.concat_tables(tables, promote_options="permissive")


@click.command("eval")
@click.argument("output_uri", metavar="OUTPUT")
@click.option("--task", type=click.Choice(["translation", "sentiment"]), required=True)
@click.option("--hypothesis", metavar="COLUMN", help="translation column to score, e.g. translation_en")
@click.option("--reference", metavar="COLUMN", help="reference translations (default: reference_<lang> of --hypothesis)")
@click.option("--by", "group_by", metavar="COLUMN", help="per-group breakdown (default: source_lang when present)")
@click.option("--tokenize", help="sacrebleu tokenizer (default: by target language: zh, char for ja/ko/th, else 13a)")
@click.option("--prediction", default="sentiment", show_default=True, metavar="COLUMN", help="predicted label column")
@click.option("--gold", metavar="COLUMN", help="gold label column, e.g. gold_sentiment")
@click.option("--json", "json_path", metavar="PATH", help="also write the report as JSON (local path or s3://)")
@click.option("--endpoint-url", help="S3-compatible endpoint (default $AWS_ENDPOINT_URL, else AWS)")
def eval_command(output_uri, task, hypothesis, reference, group_by, tokenize, prediction, gold, json_path, endpoint_url):
    """Score OUTPUT: translation with BLEU/chrF, sentiment with accuracy, macro-F1 and a confusion matrix."""
    from batch.config import StorageConfig
    from batch.io.storage import Location, StorageError

    storage = StorageConfig(endpoint_url=endpoint_url)
    try:
        if task == "translation":
            report = _translation(output_uri, hypothesis, reference, group_by, tokenize, storage)
        else:
            report = _sentiment(output_uri, prediction, gold, storage)
        report["output"] = output_uri
        click.echo(evaluate.format_report(report))
        if json_path:
            Location(json_path, storage).write_json(report)
            click.echo(f"report written to {json_path}")
    except (ValueError, StorageError) as exc:
        click.echo(f"EVAL FAILED: {exc}", err=True)
        sys.exit(1)


def _translation(uri, hypothesis, reference, group_by, tokenize, storage) -> dict:
    if not hypothesis:
        raise click.UsageError("--task translation needs --hypothesis COLUMN (e.g. translation_en)")
    language = match.group(1) if (match := re.fullmatch(r"translation_(\w+)", hypothesis)) else None
    if not reference:
        if language is None:
            raise click.UsageError("--reference COLUMN is needed when --hypothesis is not translation_<lang>")
        reference = f"reference_{language}"
    columns = [hypothesis, reference] + ([group_by] if group_by else [])
    optional = [f"{hypothesis}_flags"] + ([] if group_by else ["source_lang"])
    data = read_columns(uri, columns, optional, storage)
    group_column = group_by or ("source_lang" if "source_lang" in data.column_names else None)
    flags_column = f"{hypothesis}_flags"
    report = evaluate.score_translation(
        data.column(hypothesis).to_pylist(),
        data.column(reference).to_pylist(),
        groups=[None if g is None else str(g) for g in data.column(group_column).to_pylist()] if group_column else None,
        flags=data.column(flags_column).to_pylist() if flags_column in data.column_names else None,
        tokenize=tokenize or evaluate.bleu_tokenizer(language),
    )
    return {**report, "hypothesis": hypothesis, "reference": reference, "group_by": group_column}


def _sentiment(uri, prediction, gold, storage) -> dict:
    if not gold:
        raise click.UsageError("--task sentiment needs --gold COLUMN (e.g. gold_sentiment)")
    data = read_columns(uri, [prediction, gold], storage=storage)
    report = evaluate.score_sentiment(data.column(prediction).to_pylist(), data.column(gold).to_pylist())
    return {**report, "prediction": prediction, "gold": gold}
