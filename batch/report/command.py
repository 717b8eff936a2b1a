"""`python -m batch report OUTPUT_URI`: the click command. Parsing and printing only; the
work is in build.py (data), charts.py and page.py (presentation).

Register it with `main.add_command(report)` in batch/cli.py. Heavy imports (matplotlib,
numpy) happen when the command runs, so `python -m batch --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

EXIT_FAILED = 1
EXIT_ALERT = 3  # with --fail-on-alert: the report was written, and some period alerted


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
@click.option("--labels", metavar="A,B,C",
              help="Sentiment labels, in order.  "
                   "[default: the run's labels from _summary.json, else negative,neutral,positive]")
@click.option("--negative-label", default="negative", show_default=True, help="The label the alarm watches.")
@click.option("--alert-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True,
              help="Alert when a period's negative share exceeds its baseline by more than this "
                   "(absolute, 0.2 = 20 points).")
@click.option("--window", type=click.IntRange(min=1), default=7, show_default=True,
              help="Baseline: the pooled negative share of this many previous periods.")
@click.option("--min-count", type=click.IntRange(min=1), default=20, show_default=True,
              help="Periods (and baselines) with fewer labelled rows never alert.")
@click.option("--text-column", metavar="COLUMN",
              help="Source text column, for translation length ratios.  "
                   "[default: the run's text column, else text]")
@click.option("--endpoint-url", metavar="URL", help="S3-compatible endpoint.  [default: $AWS_ENDPOINT_URL, else AWS]")
@click.option("--region", help="S3 region.  [default: $AWS_REGION / $AWS_DEFAULT_REGION]")
@click.option("--fail-on-alert", is_flag=True, help=f"Exit with status {EXIT_ALERT} when any period alerts (for schedulers).")
def report(
    output_uri: str,
    out_dir: Path,
    time_column: str | None,
    freq: str,
    lang_column: str | None,
    labels: str | None,
    negative_label: str,
    alert_threshold: float,
    window: int,
    min_count: int,
    text_column: str | None,
    endpoint_url: str | None,
    region: str | None,
    fail_on_alert: bool,
) -> None:
    """Report on a published OUTPUT_URI (local folder or s3://): sentiment distribution by
    language and over time with negative-spike alerts, translation outcomes and length
    ratios. Writes report.html (self-contained, charts inside) and report.json to --out."""
    from batch.config import ConfigError, StorageConfig
    from batch.io.storage import StorageError
    from batch.report.alerts import AlertSettings
    from batch.report.build import ReportOptions, build_report
    from batch.report.charts import render_charts
    from batch.report.page import render_page
    from batch.report.source import ReportError

    try:
        options = ReportOptions(
            time_column=time_column,
            freq=freq,
            language_column=lang_column,
            labels=parse_labels(labels),
            negative_label=negative_label,
            alert=AlertSettings(threshold=alert_threshold, window=window, min_count=min_count),
            text_column=text_column,
        )
        storage = StorageConfig(endpoint_url=endpoint_url, region=region)
        data = build_report(output_uri, options, storage)
    except (ReportError, StorageError, ConfigError) as exc:
        click.echo(f"FAILED: {exc}", err=True)
        sys.exit(EXIT_FAILED)

    charts = render_charts(data)
    data["charts"] = [{"id": chart.id, "title": chart.title, "alt": chart.alt} for chart in charts]
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out_dir / "report.html", out_dir / "report.json"
    html_path.write_text(render_page(data, charts), encoding="utf-8")
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    for line in summary_lines(data):
        click.echo(line)
    click.echo(f"wrote {html_path} and {json_path}")
    found = ((data.get("sentiment") or {}).get("alerts") or {}).get("alerts") or []
    if fail_on_alert and found:
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


def summary_lines(data: dict) -> list[str]:
    """What a terminal (or a scheduler's log) should show without opening the page."""
    lines = [f"{data['output_uri']}: {data['rows']:,} rows in {data['files']} files"]
    sentiment = data.get("sentiment")
    if sentiment:
        overall = sentiment["overall"]
        shares = ", ".join(f"{label} {share:.1%}" for label, share in overall["shares"].items() if share is not None)
        lines.append(f"  sentiment: {overall['labelled']:,} labelled" + (f" ({shares})" if shares else ""))
        alert_section = sentiment.get("alerts")
        if alert_section:
            for item in alert_section["alerts"]:
                lines.append(
                    f"  ALERT {item['period']}: {sentiment['negative_label']} {item['share']:.1%} of {item['rows']:,} rows, "
                    f"baseline {item['baseline']:.1%} (+{item['jump']:.1%})"
                )
            if not alert_section["alerts"]:
                lines.append("  no alerts")
    translation = data.get("translation")
    if translation:
        for target in translation["targets"]:
            lines.append(
                f"  {target['column']}: {target['translated']:,} translated, {target['skipped']:,} skipped, "
                f"{target['failed']:,} failed" + (f", {target['flagged']:,} flagged" if target["flagged"] else "")
            )
    for note in data["notes"]:
        lines.append(f"  note: {note}")
    return lines
