"""`python -m batch report`: on generated outputs (local and through a real S3 endpoint), the
JSON names the planted spike and nothing else, the HTML is self-contained with every chart
inside it, translation figures add up, and bad options fail with messages that say why.
No Ray, no vLLM: the report only reads Parquet."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batch.report.aggregate import Roles, count_table, merge
from batch.report.alerts import AlertSettings, alerts, share_series
from batch.report.sections.label import LabelTask
from batch.report.command import report

START = dt.date(2026, 3, 1)
DAYS = 14
SPIKE_DAY = START + dt.timedelta(days=8)
TINY_DAY = START + dt.timedelta(days=13)  # 3 posts, all negative: below --min-count, must not alert
LANGS = ["en", "fr", "de"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- generated outputs -------------------------------------------------------------------


def sentiment_rows() -> list[dict]:
    """14 days of posts: 20% negative on normal days, 80% on SPIKE_DAY, and a last day of 3
    negative posts. Plus rows the job would skip or fail, and one without a timestamp."""
    rows = []
    for day in range(DAYS):
        date = START + dt.timedelta(days=day)
        posts = 3 if date == TINY_DAY else 50
        for i in range(posts):
            if date == TINY_DAY:
                label = "negative"
            elif date == SPIKE_DAY:
                label = "negative" if i % 5 != 4 else "positive"
            else:
                label = "negative" if i % 5 == 0 else ("neutral" if i % 2 else "positive")
            rows.append(
                {
                    "post_id": f"d{day:02d}-{i:03d}",
                    "created_at": f"{date.isoformat()}T{(i * 7) % 24:02d}:{i % 60:02d}:00Z",
                    "source_lang": LANGS[i % 3],
                    "text": f"post {i} of day {day}",
                    "sentiment": label,
                    "skip_reason": None,
                    "error": None,
                }
            )
    rows[1].update(text="  ", sentiment=None, skip_reason="sentiment: empty text")
    rows[2].update(sentiment=None, error="sentiment: model answered 'meh', not one of ['negative']")
    rows[3].update(created_at=None)
    return rows


def junk_rows(rows: list[dict], n: int) -> list[dict]:
    """Copies of a row, negative and on day 4 when the rows have those columns, so they would
    show (and alert) were they read: they sit where a report must not look (staging, hidden
    files). Same columns and value types as `rows`."""
    junk = dict(rows[0])
    if "sentiment" in junk:
        junk["sentiment"] = "negative"
    when = junk.get("created_at")  # day 0
    if isinstance(when, dt.datetime):
        junk["created_at"] = when + dt.timedelta(days=4)
    elif isinstance(when, str):
        junk["created_at"] = when.replace(START.isoformat(), (START + dt.timedelta(days=4)).isoformat())
    return [dict(junk, post_id=f"junk{i}") for i in range(n)]


def side_files(rows: list[dict], job: dict) -> dict[str, dict]:
    failed = sum(1 for row in rows if row["error"])
    return {
        "_summary.json": {
            "run_id": "20260315T010203Z-abcd1234", "job": job, "output": "x", "status": "running",
            "input_files": 3, "input_files_resumed": 0, "unreadable_inputs": [], "rows_in": len(rows),
            "rows_out": len(rows), "rows_annotated": len(rows) - failed, "rows_failed": failed,
            "skipped": {"sentiment: empty text": 1}, "engines": [{"model": "/models/xlmr"}],
            "wall_seconds": 61.5, "rows_per_second": 11.4,
        },  # fmt: skip
        "_manifest.json": {"run_id": "20260315T010203Z-abcd1234", "rows": len(rows), "files": []},
        "_SUCCESS": {"run_id": "20260315T010203Z-abcd1234", "rows": len(rows)},
    }


SENTIMENT_JOB = {"name": "social", "input": {"text_column": "text"},
                 "tasks": {"sentiment": {"labels": ["negative", "neutral", "positive"]}, "translation": None}}  # fmt: skip


def write_output(root: str, rows: list[dict], job: dict, fs=None, files: int = 3, schema: pa.Schema | None = None) -> None:
    """An output folder as the job publishes it, plus things a reader must skip."""

    def put_table(path: str, table: pa.Table) -> None:
        if fs is None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, filesystem=fs)

    def put_bytes(path: str, data: bytes) -> None:
        if fs is None:
            Path(path).write_bytes(data)
        else:
            with fs.open_output_stream(path) as out:
                out.write(data)

    for i in range(files):
        put_table(f"{root}/part-{i:04d}.parquet", pa.Table.from_pylist(rows[i::files], schema=schema))
    put_table(f"{root}/_staging/abc/parts/k/leftover.parquet", pa.Table.from_pylist(junk_rows(rows, 500), schema=schema))
    put_table(f"{root}/.hidden.parquet", pa.Table.from_pylist(junk_rows(rows, 500), schema=schema))
    for name, content in side_files(rows, job).items():
        put_bytes(f"{root}/{name}", json.dumps(content).encode())


def run_report(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(report, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def load(out: Path) -> tuple[dict, str]:
    return json.loads((out / "report.json").read_text()), (out / "report.html").read_text(encoding="utf-8")


# --- HTML checks -------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
URL_ATTRIBUTES = {"src", "href", "srcset", "poster", "data", "action", "background", "xlink:href"}


class PageChecker(HTMLParser):
    """Collects images and every URL-bearing attribute, and checks that tags nest."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.images: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in URL_ATTRIBUTES:
                self.urls.append((tag, name, value or ""))
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()


def check_page(page: str, data: dict, expected_charts: set[str]) -> None:
    checker = PageChecker()
    checker.feed(page)
    checker.close()
    assert page.startswith("<!DOCTYPE html>")
    assert not checker.problems and not checker.stack, (checker.problems, checker.stack)
    assert {"html", "head", "body", "title"} <= set(checker.tags)

    # every chart is inside the page, as a PNG that decodes
    assert {chart["id"] for chart in data["charts"]} == expected_charts
    assert len(checker.images) == len(data["charts"]) == page.count('<img src="data:image/png;base64,')
    for src in checker.images:
        assert src.startswith("data:image/png;base64,")
        try:
            png = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        except binascii.Error as exc:
            pytest.fail(f"chart is not valid base64: {exc}")
        assert png.startswith(PNG_SIGNATURE)
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 300

    # nothing is fetched from anywhere: no scripts, no external stylesheets, images, fonts
    assert "script" not in checker.tags and "iframe" not in checker.tags
    for tag, name, value in checker.urls:
        assert value.startswith(("data:", "#")), f"<{tag} {name}={value[:80]!r}> references a resource"
    lowered = page.lower()
    for needle in ("url(http", "url(//", "@import", 'src="http', 'href="http', "src='http", "href='http"):
        assert needle not in lowered, needle


# --- sentiment ---------------------------------------------------------------------------


SENTIMENT_CHARTS = {"sentiment_overall", "sentiment_by_language", "sentiment_over_time", "sentiment_watch_share"}


def expected_overall(rows: list[dict]) -> dict[str, int]:
    counts = {"negative": 0, "neutral": 0, "positive": 0}
    for row in rows:
        if row["sentiment"]:
            counts[row["sentiment"]] += 1
    return counts


def check_sentiment_report(data: dict, page: str, rows: list[dict]) -> None:
    assert data["rows"] == len(rows), "staging and hidden files are not read"
    assert data["files"] == 3 and data["published"] is True
    section = data["sentiment"]
    assert section["overall"]["counts"] == expected_overall(rows)
    assert section["overall"]["unlabelled"] == 2
    assert section["overall"]["skipped"] == 1 and section["overall"]["failed"] == 1
    assert {row["language"] for row in section["by_language"]} == set(LANGS)
    assert sum(row["rows"] for row in section["by_language"]) == len(rows)

    periods = section["over_time"]["periods"]
    assert [p["period"] for p in periods] == [(START + dt.timedelta(days=d)).isoformat() for d in range(DAYS)]
    assert section["over_time"]["rows_without_time"] == 1
    assert sum(p["rows"] for p in periods) == len(rows) - 1

    # the alarm: the spike day and no other (not the 3-post day, not the day after)
    assert [a["period"] for a in section["alerts"]["alerts"]] == [SPIKE_DAY.isoformat()]
    spike = section["alerts"]["alerts"][0]
    assert spike["share"] == pytest.approx(0.8) and spike["baseline"] == pytest.approx(0.2, abs=0.01)
    tiny = next(item for item in section["alerts"]["series"] if item["period"] == TINY_DAY.isoformat())
    assert tiny["share"] == 1.0 and not tiny["alert"]

    assert data["run"]["rows_in"] == len(rows) and data["run"]["wall_seconds"] == 61.5
    assert list(data["tasks"]) == ["sentiment"] and data["tasks"]["sentiment"] == section
    check_page(page, data, SENTIMENT_CHARTS)
    assert SPIKE_DAY.isoformat() in page and "61.5" in page


def test_sentiment_report_local(tmp_path):
    rows = sentiment_rows()
    write_output(str(tmp_path / "output"), rows, SENTIMENT_JOB)
    out = tmp_path / "report"

    code, output = run_report(str(tmp_path / "output"), "--time-column", "created_at", "--out", str(out))

    assert code == 0, output
    assert f"ALERT {SPIKE_DAY.isoformat()}" in output and output.count("ALERT") == 1
    data, page = load(out)
    check_sentiment_report(data, page, rows)


def test_sentiment_report_from_s3(s3, tmp_path):
    """Through a real S3 endpoint, with the time column as a real timestamp type."""
    rows = sentiment_rows()
    for row in rows:
        if row["created_at"] is not None:
            row["created_at"] = dt.datetime.fromisoformat(row["created_at"].replace("Z", "+00:00"))
    schema = pa.schema([("post_id", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
                        ("source_lang", pa.string()), ("text", pa.string()), ("sentiment", pa.string()),
                        ("skip_reason", pa.string()), ("error", pa.string())])  # fmt: skip
    s3.bucket("social-annotated")
    write_output("social-annotated/sentiment/2026-03-15", rows, SENTIMENT_JOB, fs=s3.fs, schema=schema)
    out = tmp_path / "report"

    code, output = run_report(
        "s3://social-annotated/sentiment/2026-03-15/", "--time-column", "created_at", "--out", str(out)
    )

    assert code == 0, output
    data, page = load(out)
    assert data["output_uri"] == "s3://social-annotated/sentiment/2026-03-15/"
    check_sentiment_report(data, page, rows)


def test_fail_on_alert_and_hourly(tmp_path):
    rows = sentiment_rows()
    write_output(str(tmp_path / "output"), rows, SENTIMENT_JOB)
    code, _ = run_report(str(tmp_path / "output"), "--time-column", "created_at", "--out", str(tmp_path / "a"),
                         "--fail-on-alert")  # fmt: skip
    assert code == 3

    # hourly: 2 or 3 posts an hour never reach the minimum count, so nothing alerts
    code, output = run_report(str(tmp_path / "output"), "--time-column", "created_at", "--freq", "hour",
                              "--window", "24", "--out", str(tmp_path / "b"), "--fail-on-alert")  # fmt: skip
    assert code == 0, output
    data, _ = load(tmp_path / "b")
    periods = data["sentiment"]["over_time"]["periods"]
    assert periods[0]["period"] == f"{START.isoformat()}T00:00Z" and len(periods) == 13 * 24 + 1 + 14
    assert sum(p["rows"] for p in periods) == len(rows) - 1
    assert data["sentiment"]["alerts"]["alerts"] == []


# --- translation -------------------------------------------------------------------------


def translation_rows() -> list[dict]:
    """60 posts: French output 1.5x the source length, German 0.5x; 3 skipped (empty
    text), 2 failed, 5 flagged in French."""
    rows = []
    for i in range(60):
        text = "abcdefghij" * (1 + i % 4)  # 10..40 chars
        rows.append(
            {
                "post_id": f"t{i:03d}",
                "source_lang": ["es", "ja", "en"][i % 3],
                "text": text,
                "translation_fr": "x" * int(len(text) * 1.5),
                "translation_fr_flags": ["url_changed"] if i in (10, 11, 12, 13) else [],
                "translation_de": "y" * (len(text) // 2),
                "translation_model": "/models/tower",
                "skip_reason": None,
                "error": None,
            }
        )
    rows[14]["translation_fr_flags"] = ["url_changed", "untranslated"]
    for i in (20, 21, 22):
        rows[i].update(text="", translation_fr=None, translation_de=None, translation_fr_flags=None,
                       skip_reason="translation: empty text")  # fmt: skip
    for i in (30, 31):
        rows[i].update(translation_fr=None, translation_de=None, translation_fr_flags=None,
                       error="translation: translation_de: the model returned an empty translation")  # fmt: skip
    return rows


def test_translation_report(tmp_path):
    rows = translation_rows()
    job = {"name": "nightly", "input": {"text_column": "text"}, "tasks": {"translation": {"target_languages": ["fr", "de"]}}}
    write_output(str(tmp_path / "output"), rows, job, files=2)
    out = tmp_path / "report"

    code, output = run_report(str(tmp_path / "output"), "--out", str(out))

    assert code == 0, output
    data, page = load(out)
    assert list(data["tasks"]) == ["translation"]
    section = data["translation"]
    assert section["source_text_column"] == "text"
    targets = {t["language"]: t for t in section["targets"]}
    assert set(targets) == {"fr", "de"}, "translation_model and translation_fr_flags are not targets"
    fr, de = targets["fr"], targets["de"]
    assert (fr["rows"], fr["translated"], fr["skipped"], fr["failed"], fr["missing"]) == (60, 55, 3, 2, 0)
    assert (de["translated"], de["skipped"], de["failed"]) == (55, 3, 2)
    assert fr["flagged"] == 5 and fr["flags"] == {"url_changed": 5, "untranslated": 1}
    assert de["flagged"] is None, "no flags column for German"
    assert fr["length_ratio"]["median"] == pytest.approx(1.5, rel=0.03)
    assert fr["length_ratio"]["min"] == pytest.approx(1.5) and fr["length_ratio"]["max"] == pytest.approx(1.5)
    assert de["length_ratio"]["median"] == pytest.approx(0.5, rel=0.03)
    assert fr["length_ratio"]["count"] == 55
    by_language = {row["language"]: row for row in section["by_source_language"]}
    assert {lang: row["rows"] for lang, row in by_language.items()} == {"es": 20, "ja": 20, "en": 20}
    assert sum(row["skipped"] for row in by_language.values()) == 3
    assert sum(row["failed"] for row in by_language.values()) == 2
    assert sum(row["flagged"] for row in by_language.values()) == 5
    assert data["outcomes"]["failed_rows"] == 2 and data["outcomes"]["failed_by_task"] == {"translation": 2}
    assert data["outcomes"]["skipped"] == {"translation: empty text": 3}
    check_page(page, data, {"translation_outcomes", "translation_by_language", "translation_length_ratio"})


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--time-column", "created_typo"], "--time-column created_typo: no such column in {uri}; columns: post_id, created_at"),
        (["--time-column", "post_id", "--lang-column", "language"], "--lang-column language: no such column in {uri}; columns:"),
        (["--negative-label", "angry"], "--watch-label angry: not one of the labels negative, neutral, positive"),
        (["--segment", "topic"], "--segment topic: no such column in {uri}; columns:"),
        (["--label-column", "gold"], "--label-column gold: no such column in {uri}; columns:"),
        (["--notify", "ftp://example.org/x"], "--notify ftp://example.org/x: expected an http:// or https:// URL"),
        (["--labels", "good"], "--labels good: expected two or more distinct"),
    ],
)
def test_bad_options_fail_with_a_clear_message(tmp_path, args, expected):
    uri = str(tmp_path / "output")
    write_output(uri, sentiment_rows(), SENTIMENT_JOB)
    code, output = run_report(uri, *args, "--out", str(tmp_path / "report"))
    assert code == 1
    assert expected.format(uri=uri) in output, output
    assert not (tmp_path / "report").exists(), "nothing is written on failure"


def test_wrong_type_and_missing_output(tmp_path):
    rows = [dict(row, likes=i) for i, row in enumerate(sentiment_rows())]
    uri = str(tmp_path / "output")
    write_output(uri, rows, SENTIMENT_JOB)
    code, output = run_report(uri, "--time-column", "likes", "--out", str(tmp_path / "r"))
    assert code == 1 and f"--time-column likes: column of type int64 in {uri}; expected a timestamp" in output

    code, output = run_report(str(tmp_path / "nothing-here"), "--out", str(tmp_path / "r"))
    assert code == 1 and f"{tmp_path / 'nothing-here'}: no Parquet data files here" in output


# --- the parts ---------------------------------------------------------------------------


def test_alarm_rules():
    settings = AlertSettings(threshold=0.2, window=3, min_count=20)
    periods = [("d1", 100, 20), ("d2", 100, 20), ("d3", 5, 5), ("d4", 100, 45), ("d5", 100, 40), ("d6", 10, 10)]
    series = share_series(periods, settings)
    assert [item.period for item in alerts(series)] == ["d4"], "d3, d6: too few rows; d5: not beyond the threshold"
    assert series[0].baseline is None, "no window before the first period"
    assert series[3].baseline == pytest.approx(45 / 205), "pooled over the window, small periods weigh little"


def test_counts_merge_like_one_table():
    """Aggregating file by file, batch by batch, gives the same counts as all at once."""
    table = pa.Table.from_pylist(sentiment_rows())
    roles = Roles(language="source_lang", time="created_at", segments=("source_lang",), skip_reason="skip_reason",
                  error="error")  # fmt: skip
    task = LabelTask(name="sentiment", column="sentiment", labels=None, multi=False, watch="negative")
    whole = count_table(table, roles, [task])
    parts = merge(count_table(table.slice(start, 97), roles, [task]) for start in range(0, table.num_rows, 97))
    assert parts.rows == whole.rows == table.num_rows and parts.periods == whole.periods
    mine, theirs = parts.tasks["sentiment"], whole.tasks["sentiment"]
    assert mine.labels == theirs.labels and mine.labelled == theirs.labelled
    assert mine.segment_labelled == theirs.segment_labelled and mine.segment_watched == theirs.segment_watched
    assert (mine.skipped, mine.failed) == (theirs.skipped, theirs.failed) == (1, 1)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium to render the page with")
def test_page_renders_in_a_browser(tmp_path):
    write_output(str(tmp_path / "output"), sentiment_rows(), SENTIMENT_JOB)
    code, output = run_report(str(tmp_path / "output"), "--time-column", "created_at", "--out", str(tmp_path / "r"))
    assert code == 0, output
    shot = tmp_path / "page.png"
    subprocess.run(
        [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1100,3000",
         f"--screenshot={shot}", (tmp_path / "r" / "report.html").as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert shot.read_bytes().startswith(PNG_SIGNATURE)
