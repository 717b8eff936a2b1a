"""`report` on an output with several label tasks (sentiment, multi-label topic) and
translation, shaped as the job writes it (issue #18 contract): each task gets its own
section; a spike planted in one language and in one topic alerts per segment while the
overall series stays under the threshold; a small segment never alerts; --notify POSTs the
alerts to a real local HTTP server. No Ray, no vLLM: the report only reads Parquet."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batch.report.command import EXIT_ALERT, EXIT_NOTIFY_FAILED, report
from test_report import check_page

START = dt.date(2026, 5, 1)
DAYS = 14
SPIKE_DE = START + dt.timedelta(days=8)  # German posts turn negative this day
SPIKE_TECH = START + dt.timedelta(days=10)  # posts about tech turn negative this day
TINY_IT = START + dt.timedelta(days=11)  # 3 Italian posts, all negative: below the minimum volume
SENTIMENT = ["negative", "neutral", "positive"]
TOPICS = ["politics", "sports", "tech"]
VOLUME = {"en": 100, "fr": 100, "de": 30, "it": 3}

TASKS = [
    {"name": "sentiment", "kind": "label", "column": "sentiment", "labels": SENTIMENT, "multi": False},
    {"name": "topic", "kind": "label", "column": "topic", "labels": TOPICS, "multi": True},
    {"name": "translation", "kind": "translation", "targets": ["fr"]},
]

SCHEMA = pa.schema([
    ("post_id", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")), ("lang", pa.string()),
    ("text", pa.string()), ("label", pa.string()),
    ("sentiment", pa.string()), ("sentiment_probs", pa.map_(pa.string(), pa.float64())),
    ("sentiment_confidence", pa.float64()), ("sentiment_long_text", pa.string()), ("sentiment_model", pa.string()),
    ("topic", pa.list_(pa.string())), ("topic_probs", pa.map_(pa.string(), pa.float64())),
    ("topic_confidence", pa.float64()), ("topic_long_text", pa.string()), ("topic_model", pa.string()),
    ("translation_fr", pa.string()), ("translation_fr_flags", pa.list_(pa.string())), ("translation_model", pa.string()),
    ("run_id", pa.string()), ("error", pa.string()), ("skip_reason", pa.string()),
])  # fmt: skip


def rows() -> list[dict]:
    """14 days; 20% negative in every language and topic, except German posts on SPIKE_DE
    (26 of 30 negative), tech posts on SPIKE_TECH (all negative) and Italian posts on
    TINY_IT (3 of 3). Every 8th English/French post is about tech (26 a day)."""
    out = []
    for day in range(DAYS):
        date = START + dt.timedelta(days=day)
        for lang, volume in VOLUME.items():
            for i in range(volume):
                tech = lang in ("en", "fr") and i % 8 == 0
                negative = i % 5 == 0
                if (date == SPIKE_DE and lang == "de" and i < 25) or (date == SPIKE_TECH and tech):
                    negative = True
                if lang == "it":
                    negative = date == TINY_IT
                label = "negative" if negative else ("neutral" if i % 2 else "positive")
                topic = ["tech", "politics"] if tech and i % 16 == 0 else ["tech"] if tech else (["sports"] if i % 3 else [])
                out.append({
                    "post_id": f"{lang}-{day:02d}-{i:03d}",
                    "created_at": dt.datetime(date.year, date.month, date.day, i % 24, tzinfo=dt.timezone.utc),
                    "lang": lang, "text": f"post {i}", "label": label,
                    "sentiment": label, "sentiment_probs": [(name, 0.8 if name == label else 0.1) for name in SENTIMENT],
                    "sentiment_confidence": 0.8, "sentiment_long_text": None, "sentiment_model": "/models/xlmr",
                    "topic": topic, "topic_probs": [(name, 0.9 if name in topic else 0.1) for name in TOPICS],
                    "topic_confidence": None, "topic_long_text": None, "topic_model": "/models/xlmr",
                    "translation_fr": f"billet {i}", "translation_fr_flags": [], "translation_model": "/models/tower",
                    "run_id": "r1", "error": None, "skip_reason": None,
                })  # fmt: skip
    return out


def write(root: Path, data: list[dict], summary: dict | None, schema: pa.Schema = SCHEMA, files: int = 3) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        pq.write_table(pa.Table.from_pylist(data[i::files], schema=schema), root / f"part-{i:04d}.parquet")
    if summary is not None:
        (root / "_summary.json").write_text(json.dumps(summary))
    (root / "_SUCCESS").write_text("{}")
    return str(root)


def summary(n: int) -> dict:
    job = {"name": "social", "input": {"text_column": "text"},
           "tasks": {"sentiment": {"labels": SENTIMENT}, "topic": {"kind": "label", "multi": True, "labels": TOPICS},
                     "translation": {"target_languages": ["fr"]}}}  # fmt: skip
    return {"run_id": "r1", "job": job, "tasks": TASKS, "rows_in": n, "rows_out": n, "rows_annotated": n,
            "rows_failed": 0, "skipped": {}, "engines": [], "wall_seconds": 10.0, "rows_per_second": 300.0}  # fmt: skip


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> str:
    data = rows()
    return write(tmp_path_factory.mktemp("segments") / "out", data, summary(len(data)))


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(report, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def segment_alerts(data: dict) -> list[tuple]:
    return [(a["task"], a["segment"] and (a["segment"]["column"], a["segment"]["value"]), a["period"]) for a in data["alerts"]]


def test_spikes_in_one_language_and_one_topic_alert_while_the_overall_series_does_not(output, tmp_path):
    code, printed = run(output, "--time-column", "created_at", "--segment", "lang", "--segment", "topic",
                        "--out", str(tmp_path / "r"), "--fail-on-alert")  # fmt: skip
    assert code == EXIT_ALERT, printed
    data = json.loads((tmp_path / "r" / "report.json").read_text())

    assert segment_alerts(data) == [
        ("sentiment", ("lang", "de"), SPIKE_DE.isoformat()),
        ("sentiment", ("topic", "tech"), SPIKE_TECH.isoformat()),
    ]
    sentiment = data["tasks"]["sentiment"]
    overall = sentiment["alerts"]["series"]
    assert sentiment["alerts"]["alerts"] == [], "the overall share stays under the threshold"
    jumps = {item["period"]: item["jump"] for item in overall}
    assert 0.05 < jumps[SPIKE_DE.isoformat()] < 0.2 and 0.05 < jumps[SPIKE_TECH.isoformat()] < 0.2, "a visible bump"

    by_column = {segment["column"]: {v["value"]: v for v in segment["values"]} for segment in sentiment["segments"]}
    assert set(by_column["lang"]) == set(VOLUME)
    italian = by_column["lang"]["it"]
    assert italian["series"] is None and italian["alerts"] == [], "3 posts a day: never the minimum volume"
    assert by_column["lang"]["de"]["labelled"] == 30 * DAYS
    assert by_column["topic"]["tech"]["labelled"] == 26 * DAYS, "a list column counts the row in each of its values"
    assert by_column["topic"]["politics"]["labelled"] == 14 * DAYS

    topic = data["tasks"]["topic"]
    assert topic["multi"] is True and topic["labels"] == TOPICS and topic["watch_label"] is None
    assert topic["overall"]["counts"] == {"politics": 14 * DAYS, "sports": sum(
        1 for r in rows() if r["topic"] == ["sports"]), "tech": 26 * DAYS}  # fmt: skip
    assert topic["alerts"] is None and topic["segments"] is None, "topics have no negative label to watch"
    assert data["tasks"]["translation"]["targets"][0]["translated"] == len(rows())

    assert f"ALERT {SPIKE_DE.isoformat()} [lang=de]" in printed and f"ALERT {SPIKE_TECH.isoformat()} [topic=tech]" in printed
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    check_page(page, data, {
        "sentiment_overall", "sentiment_by_language", "sentiment_over_time", "sentiment_watch_share",
        "sentiment_by_lang", "sentiment_by_topic", "topic_overall", "topic_by_language", "topic_over_time",
        "translation_outcomes", "translation_by_language", "translation_length_ratio",
    })  # fmt: skip
    assert "[lang = de]" in page and "(too small)" in page


def test_a_lower_minimum_volume_lets_the_small_segment_alert(output, tmp_path):
    code, _ = run(output, "--time-column", "created_at", "--segment", "lang", "--min-volume", "3",
                  "--out", str(tmp_path / "r"))  # fmt: skip
    assert code == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert ("sentiment", ("lang", "it"), TINY_IT.isoformat()) in segment_alerts(data)


class Receiver(BaseHTTPRequestHandler):
    """Records every POST; answers with the status the test sets on the server."""

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.received, server.status = [], 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_notify_posts_the_alerts_to_a_local_server(output, tmp_path, receiver):
    url = f"http://127.0.0.1:{receiver.server_port}/hooks/alerts"
    code, printed = run(output, "--time-column", "created_at", "--segment", "lang", "--segment", "topic",
                        "--notify", url, "--out", str(tmp_path / "r"))  # fmt: skip
    assert code == 0, printed
    assert f"notified {url} of 2 alert(s)" in printed
    [(path, content_type, body)] = receiver.received
    assert path == "/hooks/alerts" and content_type.startswith("application/json")
    assert body["output"] == output and body["watch_label"] == "negative"
    assert [(a["segment"]["column"], a["segment"]["value"], a["period"]) for a in body["alerts"]] == [
        ("lang", "de", SPIKE_DE.isoformat()), ("topic", "tech", SPIKE_TECH.isoformat())]  # fmt: skip
    spike = body["alerts"][0]
    assert spike["task"] == "sentiment" and spike["rows"] == 30 and spike["watched"] == 26

    # no alerts (no segments, and the overall series stays under the threshold): nothing is sent
    code, printed = run(output, "--time-column", "created_at", "--notify", url, "--out", str(tmp_path / "quiet"))
    assert code == 0 and len(receiver.received) == 1 and "notified" not in printed


def test_a_failed_notify_exits_non_zero_naming_the_url(output, tmp_path, receiver):
    receiver.status = 500
    url = f"http://127.0.0.1:{receiver.server_port}/down"
    code, printed = run(output, "--time-column", "created_at", "--segment", "lang", "--notify", url,
                        "--out", str(tmp_path / "r"))  # fmt: skip
    assert code == EXIT_NOTIFY_FAILED and f"--notify {url}: the server answered HTTP 500" in printed
    assert (tmp_path / "r" / "report.json").exists(), "the report is written before the notification"

    port = receiver.server_port
    receiver.shutdown()
    receiver.server_close()
    code, printed = run(output, "--time-column", "created_at", "--segment", "lang",
                        "--notify", f"http://127.0.0.1:{port}/gone", "--out", str(tmp_path / "r2"))  # fmt: skip
    assert code == EXIT_NOTIFY_FAILED and f"--notify http://127.0.0.1:{port}/gone: could not POST the alerts" in printed


def test_label_column_points_the_report_at_gold_labels(output, tmp_path):
    code, printed = run(output, "--label-column", "label", "--labels", "negative,neutral,positive",
                        "--time-column", "created_at", "--segment", "lang", "--out", str(tmp_path / "r"))  # fmt: skip
    assert code == 0, printed
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert list(data["tasks"]) == ["translation", "label"], "the label tasks are replaced by the named column"
    gold = data["tasks"]["label"]
    assert gold["column"] == "label" and gold["labels"] == SENTIMENT
    assert [a["segment"]["value"] for a in data["alerts"]] == ["de"]

    code, printed = run(output, "--labels", "a,b", "--out", str(tmp_path / "x"))
    assert code == 1 and "--labels: applies to one label task, and this report has 2 (sentiment, topic)" in printed


def test_tasks_inferred_from_the_schema_and_an_output_without_task_columns(tmp_path):
    data = rows()[:400]
    plain = write(tmp_path / "plain", data, summary=None, files=2)  # no _summary.json
    code, printed = run(plain, "--out", str(tmp_path / "r"))
    assert code == 0, printed
    report_data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {name: s["kind"] for name, s in report_data["tasks"].items()} == {
        "sentiment": "label", "topic": "label", "translation": "translation"}  # fmt: skip
    assert report_data["tasks"]["topic"]["multi"] is True
    assert report_data["tasks"]["topic"]["labels"] == ["politics", "sports", "tech"], "labels found in the data"

    other = [{"id": i, "body": f"text {i}", "error": "mystery: boom" if i == 3 else None} for i in range(10)]
    schema = pa.schema([("id", pa.int64()), ("body", pa.string()), ("error", pa.string())])
    unknown = write(tmp_path / "unknown", other, summary=None, schema=schema, files=1)
    code, printed = run(unknown, "--time-column", "body", "--segment", "body", "--out", str(tmp_path / "u"))
    assert code == 0, printed
    report_data = json.loads((tmp_path / "u" / "report.json").read_text())
    assert report_data["tasks"] == {} and report_data["alerts"] == [] and report_data["rows"] == 10
    assert report_data["outcomes"]["failed_by_task"] == {"mystery": 1}
    assert any("no task columns found" in note for note in report_data["notes"])
    page = (tmp_path / "u" / "report.html").read_text(encoding="utf-8")
    assert "Row outcomes" in page and "<h2>Run</h2>" in page
    check_page(page, report_data, set())


def test_a_summary_task_of_an_unknown_kind_is_a_note_not_an_error(tmp_path):
    data = rows()[:200]
    described = summary(len(data))
    described["tasks"] = TASKS[:1] + [{"name": "ner", "kind": "spans", "column": "entities"}]
    uri = write(tmp_path / "out", data, described, files=1)
    code, printed = run(uri, "--out", str(tmp_path / "r"))
    assert code == 0, printed
    report_data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert list(report_data["tasks"]) == ["sentiment"]
    assert any("task ner: kind 'spans' has no report section" in note for note in report_data["notes"])


def test_any_label_can_be_watched(output, tmp_path):
    """--watch-label tech: the topic task is watched (its share is steady: no alerts), the
    sentiment task, which has no such label, is not."""
    code, printed = run(output, "--time-column", "created_at", "--watch-label", "tech", "--segment", "lang",
                        "--out", str(tmp_path / "r"))  # fmt: skip
    assert code == 0, printed
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    topic, sentiment = data["tasks"]["topic"], data["tasks"]["sentiment"]
    assert topic["watch_label"] == "tech" and sentiment["watch_label"] is None and sentiment["alerts"] is None
    shares = {item["share"] for item in topic["alerts"]["series"]}
    assert shares == {round(26 / sum(VOLUME.values()), 4)} and data["alerts"] == []
    assert [segment["column"] for segment in topic["segments"]] == ["lang"]

    code, printed = run(output, "--watch-label", "angry", "--out", str(tmp_path / "x"))
    assert code == 1 and "--watch-label angry: not one of the labels sentiment: negative, neutral, positive; topic:" in printed
