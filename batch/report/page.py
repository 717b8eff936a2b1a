"""The report as one self-contained HTML page.

Self-contained means: the page references nothing outside itself (no scripts, fonts,
stylesheets or images fetched from anywhere); charts are PNGs inside `data:` URIs and the
style is inline, so the file reads the same attached to a ticket, opened offline, or served
from a bucket. Every value from the data is escaped. (Named page.py, not html.py, so that
`import html` here is the standard library.)
"""

from __future__ import annotations

import base64
import html
from typing import Any, Iterable, Sequence

from batch.report.charts import Chart

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #222; margin: 0 auto; max-width: 1040px; padding: 24px 28px 60px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 34px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 22px 0 6px; }
.meta { color: #555; margin: 0 0 14px; } .meta code { font-size: 13px; }
.box { border-radius: 6px; padding: 10px 14px; margin: 12px 0; }
.alert { background: #fdecea; border: 1px solid #e6a39a; } .ok { background: #eaf6ee; border: 1px solid #9fd3ae; }
.note { background: #fff8e1; border: 1px solid #ecd58a; }
.box ul { margin: 4px 0 0; padding-left: 20px; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13px; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 3px 10px; text-align: right; white-space: nowrap; }
th { background: #f5f5f5; font-weight: 600; } th:first-child, td:first-child { text-align: left; }
td.text { text-align: left; white-space: normal; max-width: 640px; word-break: break-word; }
tr.alerted td { background: #fdecea; font-weight: 600; }
figure { margin: 10px 0 18px; } figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: 13px; margin-top: 2px; }
.small { color: #666; font-size: 12px; }
"""


def render_page(report: dict[str, Any], charts: Sequence[Chart]) -> str:
    by_id = {chart.id: chart for chart in charts}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Report: {esc(report['output_uri'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        *header(report),
        *notes(report),
        *run_summary(report),
        *sentiment(report, by_id),
        *translation(report, by_id),
        *outcomes(report),
        '<p class="small">The same figures, for machines: <code>report.json</code> next to this page.</p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# --- building blocks ---------------------------------------------------------------------


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return esc(value)


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], row_classes: Sequence[str] = ()) -> str:
    """Cells are HTML already (escape values with esc/num/pct before)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        css = row_classes[index] if index < len(row_classes) and row_classes[index] else ""
        cells = "".join(f"<td>{cell}</td>" for cell in row)
        body.append(f'<tr class="{css}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(chart: Chart | None) -> list[str]:
    if chart is None:
        return []
    data = base64.b64encode(chart.png).decode("ascii")
    return [
        f'<figure id="{esc(chart.id)}"><img src="data:image/png;base64,{data}" alt="{esc(chart.alt)}">',
        f"<figcaption>{esc(chart.title)}</figcaption></figure>",
    ]


def language_column(report: dict[str, Any]) -> str:
    name = report["columns"]["language"]
    return f'<span class="small">({"column " + esc(name) if name else "no language column"})</span>'


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def language(value: str | None) -> str:
    return "<em>(none)</em>" if value is None else esc(value)


# --- sections ----------------------------------------------------------------------------


def header(report: dict[str, Any]) -> list[str]:
    kinds = [name for name in ("sentiment", "translation") if report.get(name)]
    state = "published (_SUCCESS present)" if report["published"] else "<strong>not published</strong> (no _SUCCESS)"
    lines = [
        f"<h1>Output report: {esc(' + '.join(kinds))}</h1>",
        f'<p class="meta"><code>{esc(report["output_uri"])}</code><br>'
        f"{num(report['rows'])} rows in {num(report['files'])} files · {state} · "
        f"generated {esc(report['generated_at'])}</p>",
    ]
    alert_section = (report.get("sentiment") or {}).get("alerts")
    if alert_section:
        found = alert_section["alerts"]
        settings = alert_section["settings"]
        rule = (
            f"{esc(alert_section['negative_label'])} share more than {pct(settings['threshold'])} above the previous "
            f"{settings['window']} periods, with at least {settings['min_count']} rows"
        )
        if found:
            items = "".join(
                f"<li><strong>{esc(a['period'])}</strong>: {pct(a['share'])} {esc(alert_section['negative_label'])} "
                f"of {num(a['rows'])} rows, baseline {pct(a['baseline'])} (+{pct(a['jump'])})</li>"
                for a in found
            )
            lines.append(f'<div class="box alert"><strong>{len(found)} alert(s)</strong> ({rule}):<ul>{items}</ul></div>')
        else:
            lines.append(f'<div class="box ok">No alerts ({rule}).</div>')
    return lines


def notes(report: dict[str, Any]) -> list[str]:
    if not report["notes"]:
        return []
    items = "".join(f"<li>{esc(note)}</li>" for note in report["notes"])
    return [f'<div class="box note"><strong>Notes</strong><ul>{items}</ul></div>']


def run_summary(report: dict[str, Any]) -> list[str]:
    run = report.get("run")
    lines = ["<h2>Run</h2>"]
    if not run:
        return lines + ["<p>No <code>_summary.json</code> next to the output.</p>"]
    skipped = ", ".join(f"{esc(reason)}: {num(n)}" for reason, n in (run.get("skipped") or {}).items()) or "none"
    rows = [
        ("run id", esc(run.get("run_id"))),
        ("job", esc(run.get("job_name"))),
        ("tasks", esc(", ".join(run.get("tasks") or []))),
        ("input files", f"{num(run.get('input_files'))} ({num(run.get('input_files_resumed'))} resumed)"),
        ("rows in", num(run.get("rows_in"))),
        ("rows out", num(run.get("rows_out"))),
        ("rows annotated", num(run.get("rows_annotated"))),
        ("rows failed", num(run.get("rows_failed"))),
        ("skipped", skipped),
        ("wall time", f"{num(run.get('wall_seconds'))} s ({num(run.get('rows_per_second'))} rows/s)"),
    ]
    if run.get("models"):
        rows.append(("models", esc(", ".join(run["models"]))))
    for bad in run.get("unreadable_inputs") or []:
        rows.append(("unreadable input", f"{esc(bad.get('uri'))}: {esc(bad.get('reason'))}"))
    body = "".join(f'<tr><th>{esc(k)}</th><td class="text">{v}</td></tr>' for k, v in rows)
    return lines + [f"<table><tbody>{body}</tbody></table>"]


def sentiment(report: dict[str, Any], charts: dict[str, Chart]) -> list[str]:
    section = report.get("sentiment")
    if not section:
        return []
    labels = section["labels"]
    overall = section["overall"]
    lines = ["<h2>Sentiment</h2>", "<h3>Overall</h3>"]
    lines.append(
        table(
            ["rows", "labelled", *labels, "unlabelled", "of which skipped", "of which failed"],
            [[num(overall["rows"]), num(overall["labelled"]),
              *(f"{num(overall['counts'][l])} ({pct(overall['shares'][l])})" for l in labels),
              num(overall["unlabelled"]), num(overall["skipped"]), num(overall["failed"])]],
        )  # fmt: skip
    )
    lines += figure(charts.get("sentiment_overall"))
    lines.append(f"<h3>By language {language_column(report)}</h3>")
    lines.append(
        table(
            ["language", "rows", "labelled", *(f"{l} share" for l in labels)],
            [[language(row["language"]), num(row["rows"]), num(row["labelled"]), *(pct(row["shares"][l]) for l in labels)]
             for row in section["by_language"]],
        )  # fmt: skip
    )
    lines += figure(charts.get("sentiment_by_language"))
    over_time = section.get("over_time")
    if not over_time:
        lines.append("<p>No time column given (<code>--time-column</code>): no timeline and no alerts.</p>")
        return lines
    lines.append(
        f'<h3>Over time <span class="small">(by {esc(over_time["time_column"])}, '
        f'per {esc(over_time["freq"])}, UTC)</span></h3>'
    )
    lines += figure(charts.get("sentiment_over_time"))
    lines += figure(charts.get("negative_share"))
    alert_section = section["alerts"]
    flagged = [("alerted" if item["alert"] else "") for item in alert_section["series"]]
    lines.append(
        table(
            ["period", "labelled rows", alert_section["negative_label"], "share", "baseline", "baseline rows", "jump",
             "alert"],
            [[esc(i["period"]), num(i["rows"]), num(i["negatives"]), pct(i["share"]), pct(i["baseline"]),
              num(i["baseline_rows"]), pct(i["jump"]), "ALERT" if i["alert"] else ""]
             for i in alert_section["series"]],
            flagged,
        )  # fmt: skip
    )
    return lines


def translation(report: dict[str, Any], charts: dict[str, Chart]) -> list[str]:
    section = report.get("translation")
    if not section:
        return []
    lines = ["<h2>Translation</h2>", "<h3>Per target language</h3>"]
    rows = []
    for t in section["targets"]:
        summary = t["length_ratio"] or {}
        outside = (summary.get("outside") or {}).get("share")
        rows.append(
            [esc(t["column"]), num(t["rows"]), num(t["translated"]), num(t["skipped"]), num(t["failed"]), num(t["missing"]),
             num(t["flagged"]), ratio(summary.get("p05")), ratio(summary.get("median")), ratio(summary.get("p95")),
             pct(outside)]
        )  # fmt: skip
    lines.append(
        table(["column", "rows", "translated", "skipped", "failed", "missing", "flagged",
               "ratio p5", "ratio median", "ratio p95", "ratio <0.5 or >2"], rows)  # fmt: skip
    )
    if section["source_text_column"] is None:
        lines.append("<p>No source text column found: length ratios left out (see <code>--text-column</code>).</p>")
    lines += figure(charts.get("translation_outcomes"))
    lines.append(f"<h3>By source language {language_column(report)}</h3>")
    lines.append(
        table(
            ["language", "rows", "skipped", "failed", "flagged"],
            [[language(r["language"]), num(r["rows"]), num(r["skipped"]), num(r["failed"]), num(r["flagged"])]
             for r in section["by_source_language"]],
        )  # fmt: skip
    )
    lines += figure(charts.get("translation_by_language"))
    if any(t["length_ratio"] for t in section["targets"]):
        lines.append(
            f"<h3>Length ratio <span class=\"small\">(characters of output / characters of "
            f"{esc(section['source_text_column'])}; quantiles to within ~2%)</span></h3>"
        )
        lines += figure(charts.get("length_ratio"))
        for t in section["targets"]:
            lines.append(f"<p><strong>{esc(t['column'])}</strong> by source language:</p>")
            lines.append(
                table(["language", "rows", "p5", "median", "p95"],
                      [[language(r["language"]), num(r["count"]), ratio(r["p05"]), ratio(r["median"]), ratio(r["p95"])]
                       for r in t["length_ratio_by_source_language"]])  # fmt: skip
            )
    for t in section["targets"]:
        if t["flags"]:
            lines.append(f"<p><strong>{esc(t['column'])}</strong> flags:</p>")
            lines.append(table(["flag", "rows"], [[esc(flag), num(n)] for flag, n in t["flags"].items()]))
    return lines


def outcomes(report: dict[str, Any]) -> list[str]:
    section = report["outcomes"]
    lines = ["<h2>Row outcomes</h2>"]
    lines.append(
        f"<p>Rows with an error: {num(section['failed_rows'])}"
        + (
            " (by task: " + ", ".join(f"{esc(k)} {num(v)}" for k, v in section["failed_by_task"].items()) + ")"
            if section["failed_by_task"]
            else ""
        )
        + "</p>"
    )
    if section["skipped"]:
        lines.append(table(["skipped (task: reason)", "rows"], [[esc(k), num(v)] for k, v in section["skipped"].items()]))
    if section["error_examples"]:
        items = "".join(f'<tr><td class="text">{esc(e)}</td></tr>' for e in section["error_examples"])
        lines.append(f"<table><thead><tr><th>example errors</th></tr></thead><tbody>{items}</tbody></table>")
    return lines
