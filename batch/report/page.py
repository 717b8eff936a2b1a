"""The report as one self-contained HTML page.

Self-contained means: the page references nothing outside itself (no scripts, fonts,
stylesheets or images fetched from anywhere); charts are PNGs inside `data:` URIs and the
style is inline, so the file reads the same attached to a ticket, opened offline, or served
from a bucket. Every value from the data is escaped.

The page is a frame (header with every alert, notes, run, row outcomes) around one section
per task, which the task's kind draws (batch/report/sections/). (Named page.py, not
html.py, so that `import html` here is the standard library.)
"""

from __future__ import annotations

import base64
import html
from typing import Any, Iterable, Sequence

from batch.report.charts import Chart
from batch.report.sections import KINDS

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
        *task_sections(report, by_id),
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
    names = list(report["tasks"]) or ["no task columns"]
    state = "published (_SUCCESS present)" if report["published"] else "<strong>not published</strong> (no _SUCCESS)"
    lines = [
        f"<h1>Output report: {esc(' + '.join(names))}</h1>",
        f'<p class="meta"><code>{esc(report["output_uri"])}</code><br>'
        f"{num(report['rows'])} rows in {num(report['files'])} files · {state} · "
        f"generated {esc(report['generated_at'])}</p>",
    ]
    watched = [s for s in report["tasks"].values() if s.get("alerts")]
    if not watched:
        return lines
    settings = watched[0]["alerts"]["settings"]
    segments = report["columns"].get("segments") or []
    rule = (
        f"{esc(report['watch_label'])} share more than {pct(settings['threshold'])} above the previous "
        f"{settings['window']} periods, with at least {settings['min_count']} labelled rows"
        + (f"; overall and per {esc(', '.join(segments))}" if segments else "")
    )
    found = report["alerts"]
    if found:
        items = "".join(
            f"<li><strong>{esc(a['period'])}</strong> {esc(a['task'])}"
            + (f" [{esc(a['segment']['column'])} = {esc(a['segment']['value'])}]" if a["segment"] else "")
            + f": {pct(a['share'])} {esc(a['watch_label'])} of {num(a['rows'])} rows, baseline {pct(a['baseline'])} "
            f"(+{pct(a['jump'])})</li>"
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


def task_sections(report: dict[str, Any], charts: dict[str, Chart]) -> list[str]:
    lines = []
    for section in report["tasks"].values():
        lines += KINDS[section["kind"]].html(section, charts, report)
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
