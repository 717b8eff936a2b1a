"""Long documents through the whole job (one CLI run, real vLLM CPU engine, tiny model,
max_model_len 512): one 12,000-character article per script (Chinese, Japanese, Arabic,
Thai, Hindi; over 100 paragraphs each) and a short post; translation into Brazilian
Portuguese with a style note, sentiment on every row with `long_text: truncate` (chunking a
100,000-character post is shown on the real tokenizer in test_long_documents.py; scoring
every chunk of five articles three times over is more than a shared 2-core machine runs in
a test's time). The engine's request log (BATCH_REQUEST_LOG) shows every request it was
sent fit the context; Thai, which the model is declared not to cover, goes to the fallback
adapter; the report and eval read the locale column."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batch.demo.documents import SENTENCES, long_document
from conftest import cli_ok, run_cli, write_corpus, write_job

MAX_MODEL_LEN = 512
LABELS = ["negative", "neutral", "positive"]
SHORT = "The train to the airport was cancelled again this morning, so I had to take a taxi."


@pytest.fixture(scope="module")
def fallback_adapter(models, tmp_path_factory):
    from batch.demo.models import build_lora_adapter

    return build_lora_adapter(models["chat"], tmp_path_factory.mktemp("fallback") / "lora", seed=3)


@pytest.fixture(scope="module")
def job_run(models, fallback_adapter, tmp_path_factory):
    root = tmp_path_factory.mktemp("long-docs")
    rows = [{"id": lang, "text": long_document(lang, 12_000), "reference_pt_br": None} for lang in sorted(SENTENCES)]
    rows.append({"id": "short", "text": SHORT, "reference_pt_br": "O trem para o aeroporto foi cancelado de novo hoje."})
    write_corpus(None, str(root / "in"), rows, files=2)
    model = str(models["chat"])
    job = write_job(root / "job.yaml", {
        "name": "long-documents",
        "input": {"uris": [str(root / "in")], "id_column": "id", "text_column": "text"},
        "output": {"uri": str(root / "out")},
        "engine": {"batch_size": 2, "max_model_len": MAX_MODEL_LEN},
        "max_row_error_rate": 0,
        "tasks": {
            "translation": {
                "model": model, "target_languages": ["pt-BR"], "max_output_tokens": 8,
                "instructions": {"pt-BR": "informal register (você)"},
                "source_languages": ["ar", "en", "hi", "ja", "pt", "zh"],
                "fallback": {"adapter": str(fallback_adapter)},
                "language_detection": {"languages": ["ar", "en", "hi", "ja", "pt", "th", "zh"]},
            },
            # Labels decoded, not scored: with a LoRA adapter on the engine (the fallback), vLLM
            # 0.32's CPU build fails prompt_logprobs requests ("einsum(): subscript b has size 6
            # for operand 1 which does not broadcast with previously seen size 506").
            "sentiment": {
                "model": model, "labels": LABELS, "probabilities": False,
                "long_text": "truncate", "truncate_keep": "head_and_tail",
            },
        },
    })  # fmt: skip
    log = root / "requests.jsonl"
    cli_ok(run_cli("run", str(job), env={"BATCH_REQUEST_LOG": str(log)}, timeout=1500))
    table = pq.read_table(root / "out")
    return {row["id"]: row for row in table.to_pylist()}, table, root, log


@pytest.mark.timeout(1800)  # the module's one job run happens here; 2 shared cores, 7 developers
def test_every_row_annotated_without_error(job_run):
    rows, table, root, _ = job_run
    assert len(rows) == 6
    for column in ("translation_pt_br", "translation_pt_br_flags", "sentiment_long_text"):
        assert column in table.column_names
    for row in rows.values():
        assert row["error"] is None, row["error"]
        assert row["translation_pt_br"]
        # pieces are joined with the source's paragraph breaks (the breaks inside a piece are
        # the random model's business; the echo test in test_long_documents.py checks them all)
        assert row["translation_pt_br"].count("\n\n") >= (row["id"] != "short")
        assert row["sentiment"] in LABELS
        assert row["sentiment_long_text"] == (None if row["id"] == "short" else "truncate")
    summary = json.loads((root / "out" / "_summary.json").read_text())
    assert summary["rows_failed"] == 0


def test_every_request_fit_the_context(job_run):
    *_, log = job_run
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["kind"] for e in entries} == {"generate"}
    assert len(entries) > 100
    for entry in entries:
        assert entry["max_model_len"] == MAX_MODEL_LEN
        assert entry["prompt_tokens"] + entry["max_tokens"] <= MAX_MODEL_LEN, entry


def test_uncovered_language_goes_to_the_fallback_adapter_and_is_counted(job_run, fallback_adapter):
    rows, _, root, _ = job_run
    assert rows["th"]["source_lang"] == "th"
    for lang, row in rows.items():
        assert ("fallback" in row["translation_pt_br_flags"]) == (lang == "th"), lang
    assert f"+lora:translation-fallback={fallback_adapter}@" in rows["th"]["translation_model"]
    summary = json.loads((root / "out" / "_summary.json").read_text())
    assert summary["flagged"] == {"fallback (th)": 1}


def test_report_and_eval_read_locale_columns(job_run, tmp_path):
    from batch.evaluate_command import eval_command
    from batch.report.command import report

    _, _, root, _ = job_run
    result = CliRunner().invoke(report, [str(root / "out"), "--out", str(tmp_path / "report")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    targets = {t["language"]: t for t in data["translation"]["targets"]}
    assert set(targets) == {"pt_br"} and targets["pt_br"]["column"] == "translation_pt_br"
    assert targets["pt_br"]["translated"] == 6
    result = CliRunner().invoke(
        eval_command, [str(root / "out"), "--task", "translation", "--hypothesis", "translation_pt_br"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "chrF" in result.output or "chrf" in result.output.lower()
