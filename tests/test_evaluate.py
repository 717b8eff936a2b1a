"""Evaluation: known scores on hand-made data, then `eval` on a job-shaped output (local
folder and S3) through the command line runner."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batch import evaluate
from batch.evaluate_command import eval_command
from conftest import write_corpus

# --- translation scores -------------------------------------------------------------------

REFS = ["The concert in Milan was amazing from start to finish.", "Tickets go on sale on Friday at 10 am."]


def test_identical_text_scores_100():
    report = evaluate.score_translation(REFS, REFS)
    assert report["bleu"] == pytest.approx(100.0) and report["chrf"] == pytest.approx(100.0)
    assert (report["rows"], report["scored"], report["missing_hypothesis"]) == (2, 2, 0)


def test_unrelated_text_scores_0_bleu_and_a_missing_hypothesis_counts_as_empty():
    report = evaluate.score_translation(["zzz qqq", None], REFS)
    assert report["bleu"] == 0.0 and report["chrf"] < 5
    assert report["missing_hypothesis"] == 1 and report["scored"] == 2


def test_rows_without_reference_are_not_scored_and_groups_break_down():
    hyps = [REFS[0], "zzz qqq", REFS[1], "anything"]
    refs = [REFS[0], REFS[1], REFS[1], None]
    report = evaluate.score_translation(hyps, refs, groups=["it", "ar", "it", "ar"], flags=[[], ["wrong_language"], [], ["empty"]])
    assert report["scored"] == 3
    assert report["by_group"]["it"] == {"rows": 2, "bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}
    assert report["by_group"]["ar"]["rows"] == 1 and report["by_group"]["ar"]["bleu"] == 0.0
    assert report["flags"] == {"wrong_language": 1} and report["flagged_rows"] == 1  # unscored row not counted
    assert list(report["by_group"]) == ["it", "ar"]  # largest group first


def test_null_group_is_unknown_and_cjk_tokenizer():
    report = evaluate.score_translation(["今天很冷"], ["今天很冷"], groups=[None], tokenize=evaluate.bleu_tokenizer("zh"))
    assert report["by_group"] == {"(unknown)": {"rows": 1, "bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}}
    assert evaluate.bleu_tokenizer("zh") == "zh" and evaluate.bleu_tokenizer("ja") == "char"
    assert evaluate.bleu_tokenizer("fr") == evaluate.bleu_tokenizer(None) == "13a"


def test_nothing_to_score_is_an_error():
    with pytest.raises(ValueError, match="no row has a reference"):
        evaluate.score_translation(["a"], [None])


# --- sentiment scores ---------------------------------------------------------------------

GOLD = ["positive", "positive", "positive", "negative", "negative", "neutral"]
PRED = ["positive", "positive", "negative", "negative", "neutral", "neutral"]


def test_sentiment_on_a_hand_computed_example():
    # gold \ pred  negative neutral positive
    # negative        1       1       0        P=1/2 R=1/2 F1=1/2
    # neutral         0       1       0        P=1/2 R=1   F1=2/3
    # positive        1       0       2        P=1   R=2/3 F1=4/5
    report = evaluate.score_sentiment(PRED, GOLD)
    assert report["confusion"] == {
        "gold": ["negative", "neutral", "positive"],
        "predicted": ["negative", "neutral", "positive"],
        "matrix": [[1, 1, 0], [0, 1, 0], [1, 0, 2]],
    }
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)  # 59/90
    assert report["per_class"]["negative"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert report["per_class"]["neutral"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert report["per_class"]["positive"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})


def test_sentiment_missing_predictions_and_gold():
    report = evaluate.score_sentiment(["positive", None, "neutral", "positive"], ["positive", "negative", None, "positive"])
    assert report["scored"] == 3 and report["missing_prediction"] == 1
    assert report["confusion"]["predicted"] == ["negative", "positive", "(missing)"]
    assert report["confusion"]["matrix"] == [[0, 0, 1], [0, 2, 0]]
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["per_class"]["negative"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["macro_f1"] == pytest.approx((0 + 1) / 2)


def test_perfect_sentiment():
    report = evaluate.score_sentiment(GOLD, GOLD)
    assert report["accuracy"] == 1.0 and report["macro_f1"] == 1.0


def test_report_tables_print():
    text = evaluate.format_report(evaluate.score_sentiment(PRED, GOLD))
    assert "macro-F1 0.6556" in text and "gold \\ predicted" in text
    text = evaluate.format_report(evaluate.score_translation(REFS, REFS, groups=["it", "ar"]))
    assert "BLEU" in text and "chrF" in text and "100.00" in text


# --- eval on a job's output, through the command -------------------------------------------


def output_rows() -> list[dict]:
    """A job-shaped output: six rows, two source languages, one failed row."""
    rows = []
    for i, (gold, pred) in enumerate(zip(GOLD, PRED)):
        ok = i != 5
        rows.append({
            "post_id": f"p{i}", "source_lang": "fr" if i < 3 else "de",
            "translation_en": (REFS[i % 2] if i % 3 else "completely different words here") if ok else None,
            "translation_en_flags": (["wrong_language"] if i == 0 else []) if ok else None,
            "reference_en": REFS[i % 2], "sentiment": pred, "gold_sentiment": gold,
            "error": None if ok else "translation: boom",
        })  # fmt: skip
    return rows


def write_output(fs, prefix: str) -> None:
    write_corpus(fs, prefix, output_rows(), files=2)
    junk = pa.table({"x": [1]})  # markers and staging files the job leaves: not part of the output
    if fs is None:
        pq.write_table(junk, f"{prefix}/_staging.parquet")
        pq.write_table(junk, f"{prefix}/.hidden.parquet")
        with open(f"{prefix}/_SUCCESS", "w"):
            pass
    else:
        pq.write_table(junk, f"{prefix}/_staging.parquet", filesystem=fs)
        with fs.open_output_stream(f"{prefix}/_SUCCESS"):
            pass


def expected_translation() -> dict:
    rows = output_rows()
    return evaluate.score_translation(
        [r["translation_en"] for r in rows], [r["reference_en"] for r in rows],
        groups=[r["source_lang"] for r in rows], flags=[r["translation_en_flags"] for r in rows],
    )  # fmt: skip


def test_eval_translation_on_local_output(tmp_path):
    out = tmp_path / "out"
    write_output(None, str(out))
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(
        eval_command,
        [str(out), "--task", "translation", "--hypothesis", "translation_en", "--reference", "reference_en",
         "--json", str(report_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    expected = expected_translation()
    for key in ("rows", "scored", "missing_hypothesis", "bleu", "chrf", "by_group", "flags"):
        assert report[key] == expected[key], key
    assert report["rows"] == 6 and report["missing_hypothesis"] == 1 and report["group_by"] == "source_lang"
    assert set(report["by_group"]) == {"fr", "de"}
    assert f"{expected['bleu']:.2f}" in result.output and "flagged rows 1" in result.output


def test_eval_sentiment_on_local_output(tmp_path):
    out = tmp_path / "out"
    write_output(None, str(out))
    report_path = tmp_path / "sentiment.json"
    result = CliRunner().invoke(eval_command, [str(out), "--task", "sentiment", "--gold", "gold_sentiment", "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["accuracy"] == pytest.approx(4 / 6) and report["macro_f1"] == pytest.approx(59 / 90)
    assert report["confusion"]["matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert "accuracy 0.6667" in result.output


def test_eval_reference_defaults_from_hypothesis_and_errors_are_clear(tmp_path):
    out = tmp_path / "out"
    write_output(None, str(out))
    ok = CliRunner().invoke(eval_command, [str(out), "--task", "translation", "--hypothesis", "translation_en", "--by", "post_id"])
    assert ok.exit_code == 0, ok.output
    assert "p0" in ok.output  # per-post breakdown as asked
    missing = CliRunner().invoke(eval_command, [str(out), "--task", "translation", "--hypothesis", "translation_de"])
    assert missing.exit_code != 0 and "no column translation_de, reference_de" in missing.output
    empty = CliRunner().invoke(eval_command, [str(tmp_path / "nothing"), "--task", "sentiment", "--gold", "g"])
    assert empty.exit_code != 0 and "no Parquet files" in empty.output
    usage = CliRunner().invoke(eval_command, [str(out), "--task", "sentiment"])
    assert usage.exit_code != 0 and "--gold" in usage.output


def test_eval_on_s3_output(s3, tmp_path):
    s3.bucket("annotated")
    write_output(s3.fs, "annotated/run/2026-11-14")
    result = CliRunner().invoke(
        eval_command,
        ["s3://annotated/run/2026-11-14/", "--task", "translation", "--hypothesis", "translation_en",
         "--json", "s3://annotated/reports/translation.json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with s3.fs.open_input_stream("annotated/reports/translation.json") as f:
        report = json.loads(f.read())
    assert report["bleu"] == expected_translation()["bleu"] and report["rows"] == 6


def test_eval_through_the_batch_command_line(tmp_path):
    from batch.cli import main

    assert "eval" in main.commands, "python -m batch eval must be registered"
    out = tmp_path / "out"
    write_output(None, str(out))
    result = CliRunner().invoke(main, ["eval", str(out), "--task", "sentiment", "--gold", "gold_sentiment"])
    assert result.exit_code == 0, result.output
    assert "macro-F1 0.6556" in result.output


# --- per group, and label tasks by name ----------------------------------------------------


def test_eval_sentiment_by_language(tmp_path):
    """fr: gold positive x3, predicted positive, positive, negative -> accuracy 2/3; F1 positive
    0.8, negative 0 (predicted, never gold) -> macro 0.4. de: gold negative, negative, neutral,
    predicted negative, neutral, neutral -> F1 2/3 each -> macro 2/3."""
    out = tmp_path / "out"
    write_output(None, str(out))
    report_path = tmp_path / "by.json"
    result = CliRunner().invoke(eval_command, [str(out), "--task", "sentiment", "--gold", "gold_sentiment",
                                               "--by", "source_lang", "--json", str(report_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["group_by"] == "source_lang" and list(report["by_group"]) == ["de", "fr"]  # equal size: by name
    assert report["by_group"]["fr"] == pytest.approx({"scored": 3, "accuracy": 2 / 3, "macro_f1": 0.4})
    assert report["by_group"]["de"] == pytest.approx({"scored": 3, "accuracy": 2 / 3, "macro_f1": 2 / 3})
    assert report["macro_f1"] == pytest.approx(59 / 90), "the overall score is unchanged by grouping"
    assert "source_lang" in result.output and "0.4000" in result.output


def test_eval_a_multi_label_task_named_in_the_run_summary(tmp_path):
    """a: tp 2, predicted 3, gold 2 -> F1 0.8; b: tp 1, predicted 1, gold 2 -> F1 2/3;
    micro: tp 3 of 4 predicted, 4 gold -> 0.75; exact match 2 of 4 rows."""
    out = tmp_path / "out"
    rows = [{"topic": p, "gold_topic": g, "lang": lang} for p, g, lang in [
        (["a"], ["a"], "en"), (["a"], ["a", "b"], "en"), (["a", "b"], ["b"], "fr"), ([], [], "fr")]]  # fmt: skip
    write_corpus(None, str(out), rows, files=1)
    (out / "_summary.json").write_text(json.dumps(
        {"tasks": [{"name": "topic", "kind": "label", "column": "topic", "labels": ["a", "b"], "multi": True}]}))
    report_path = tmp_path / "topic.json"
    result = CliRunner().invoke(eval_command, [str(out), "--task", "topic", "--gold", "gold_topic", "--by", "lang",
                                               "--json", str(report_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["multi"] is True and report["prediction"] == "topic"
    assert report["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2) and report["micro_f1"] == pytest.approx(0.75)
    assert report["exact_match"] == pytest.approx(0.5)
    assert report["by_group"]["en"]["exact_match"] == pytest.approx(0.5)
    assert "micro-F1 0.7500" in result.output

    unknown = CliRunner().invoke(eval_command, [str(out), "--task", "emotion", "--gold", "gold_topic"])
    assert unknown.exit_code != 0 and "--task emotion: neither a task kind (label, translation) nor a task of this output (topic)" in unknown.output


def test_a_multi_label_task_against_one_gold_label_per_row_in_a_string_column(tmp_path):
    """The sample corpus keeps one gold topic per post as a string: it is one label, not a set
    of characters. price: tp 1 of 2 predicted, 1 gold -> F1 2/3; other: tp 1 of 1, 2 gold -> 2/3."""
    out = tmp_path / "out"
    rows = [{"topic": p, "gold_topic": g} for p, g in [(["price"], "price"), (["price", "other"], "other"), ([], "other")]]
    write_corpus(None, str(out), rows, files=1)
    (out / "_summary.json").write_text(json.dumps(
        {"tasks": [{"name": "topic", "kind": "label", "column": "topic", "labels": ["price", "other"], "multi": True}]}))
    report_path = tmp_path / "topic.json"
    result = CliRunner().invoke(eval_command, [str(out), "--task", "topic", "--gold", "gold_topic", "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert set(report["per_class"]) == {"price", "other"}
    assert report["macro_f1"] == pytest.approx(2 / 3) and report["exact_match"] == pytest.approx(1 / 3)
