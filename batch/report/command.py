"""`python -m batch report OUTPUT_URI`: the click command. Parsing and printing only; the
work is in build.py (data), charts.py and page.py (presentation), notify.py (the POST).

Register it with `main.add_command(report)` in batch/cli.py. Heavy imports (matplotlib,
numpy) happen when the command runs, so `python -m batch --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from click.core import ParameterSource

EXIT_FAILED = 1  # no report: a bad option, an unreadable output
EXIT_ALERT = 3  # with --fail-on-alert: the report was written, and some period alerted
EXIT_NOTIFY_FAILED = 4  # the report was written, but the --notify POST failed (alerts may be unseen)


@click.command("report")
@click.argument("output_uri", metavar="OUTPUT_URI")
@click.option("--out", "out_dir", default="report", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Local folder for report.html and report.json.")
@click.option("--time-column", metavar="COLUMN",
              help="Timestamp (or date, or ISO-8601 string) column for the timeline and alerts; none: no timeline.")
@click.option("--freq", type=click.Choice(["day", "hour"]), default="day", show_default=True,
              help="Period of the timeline and of the alert window (UTC).")
@click.option("--lang-column", "--language-column", "lang_column", metavar="COLUMN",
              help="Language column.  [default: source_lang when present]")
@click.option("--segment", "segments", multiple=True, metavar="COLUMN",
              help="Watch the share per value of this column too (repeatable: --segment lang --segment topic); "
                   "a list column counts a row in each of its values.")
@click.option("--label-column", "label_columns", multiple=True, metavar="COLUMN",
              help="Report this label column (repeatable; e.g. gold labels) instead of the run's label tasks.  "
                   "[default: the run's label tasks from _summary.json, else columns X with X_probs]")
@click.option("--labels", metavar="A,B,C",
              help="Labels in order, for the one label task reported.  "
                   "[default: the run's labels from _summary.json, else the labels found]")
@click.option("--watch-label", "--negative-label", "watch_label", default="negative", show_default=True,
              metavar="LABEL", help="The label the alarm watches, in every label task that has it.")
@click.option("--alert-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True,
              help="Alert when a period's watched share exceeds its baseline by more than this "
                   "(absolute, 0.2 = 20 points).")
@click.option("--window", type=click.IntRange(min=1), default=7, show_default=True,
              help="Baseline: the pooled watched share of this many previous periods.")
@click.option("--min-volume", "--min-count", "min_volume", type=click.IntRange(min=1), default=20, show_default=True,
              help="Periods (and baselines) with fewer labelled rows never alert, overall or in a segment.")
@click.option("--text-column", metavar="COLUMN",
              help="Source text column, for translation length ratios.  "
                   "[default: the run's text column, else text]")
@click.option("--endpoint-url", metavar="URL", help="S3-compatible endpoint.  [default: $AWS_ENDPOINT_URL, else AWS]")
@click.option("--region", help="S3 region.  [default: $AWS_REGION / $AWS_DEFAULT_REGION]")
@click.option("--fail-on-alert", is_flag=True, help=f"Exit with status {EXIT_ALERT} when any period alerts (for schedulers).")
@click.option("--notify", "notify_url", metavar="URL",
              help=f"POST the alerts as JSON to this http(s) URL when there are any; exit {EXIT_NOTIFY_FAILED} "
                   "if the POST fails.")
@click.pass_context
def report(
    ctx: click.Context,
    output_uri: str,
    out_dir: Path,
    time_column: str | None,
    freq: str,
    lang_column: str | None,
    segments: tuple[str, ...],
    label_columns: tuple[str, ...],
    labels: str | None,
    watch_label: str,
    alert_threshold: float,
    window: int,
    min_volume: int,
    text_column: str | None,
    endpoint_url: str | None,
    region: str | None,
    fail_on_alert: bool,
    notify_url: str | None,
) -> None:
    """Report on a published OUTPUT_URI (local folder or s3://): per task, label distributions
    by language and over time with alerts on the watched label's share (overall and per
    --segment value), translation outcomes and length ratios. Writes report.html
    (self-contained, charts inside) and report.json to --out."""
    from batch.config import ConfigError, StorageConfig
    from batch.io.storage import StorageError
    from batch.report.alerts import AlertSettings
    from batch.report.build import ReportOptions, build_report
    from batch.report.charts import render_charts
    from batch.report.notify import NotifyError, check_url, post_alerts
    from batch.report.page import render_page
    from batch.report.sections import KINDS
    from batch.report.source import ReportError

    try:
        if notify_url is not None:
            check_url(notify_url)
        options = ReportOptions(
            time_column=time_column,
            freq=freq,
            language_column=lang_column,
            labels=parse_labels(labels),
            watch_label=watch_label,
            watch_label_given=ctx.get_parameter_source("watch_label") != ParameterSource.DEFAULT,
            alert=AlertSettings(threshold=alert_threshold, window=window, min_count=min_volume),
            text_column=text_column,
            segments=segments,
            label_columns=label_columns,
        )
        storage = StorageConfig(endpoint_url=endpoint_url, region=region)
        data = build_report(output_uri, options, storage)
    except (ReportError, StorageError, ConfigError, NotifyError) as exc:
        click.echo(f"FAILED: {exc}", err=True)
        sys.exit(EXIT_FAILED)

    charts = render_charts(data)
    data["charts"] = [{"id": chart.id, "title": chart.title, "alt": chart.alt} for chart in charts]
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out_dir / "report.html", out_dir / "report.json"
    html_path.write_text(render_page(data, charts), encoding="utf-8")
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    click.echo(f"{data['output_uri']}: {data['rows']:,} rows in {data['files']} files")
    for section in data["tasks"].values():
        for line in KINDS[section["kind"]].lines(section):
            click.echo(line)
    for note in data["notes"]:
        click.echo(f"  note: {note}")
    click.echo(f"wrote {html_path} and {json_path}")
    if notify_url is not None and data["alerts"]:
        try:
            post_alerts(notify_url, data)
            click.echo(f"notified {notify_url} of {len(data['alerts'])} alert(s)")
        except NotifyError as exc:
            click.echo(f"FAILED: {exc}", err=True)
            sys.exit(EXIT_NOTIFY_FAILED)
    if fail_on_alert and data["alerts"]:
        sys.exit(EXIT_ALERT)


def parse_labels(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    labels = tuple(label.strip() for label in text.split(","))
    if len(labels) < 2 or any(not label for label in labels) or len(set(labels)) != len(labels):
        from batch.report.source import ReportError

        raise ReportError(
            f"--labels {text}: expected two or more distinct, comma-separated labels, e.g. negative,neutral,positive"
        )
    return labels
