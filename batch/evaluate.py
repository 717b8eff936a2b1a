"""Scoring a job's output against references: pure functions of column values, no storage.

Translation: corpus-level BLEU and chrF (sacrebleu; 0-100), overall and per group (by
default per `source_lang`). Rows without a reference are not scored; a scored row without
a hypothesis (the row failed or was skipped) counts as an empty translation, so failures
cost score instead of vanishing. BLEU on a small group is harsh (few 4-grams): read
per-group BLEU with its row count, chrF is steadier there.

Sentiment: accuracy, macro-F1 (mean F1 over every label seen in gold or predictions), per
label precision / recall / F1 / support, and the confusion matrix (rows: gold, columns:
predicted). Rows without a gold label are not scored; a missing prediction counts as wrong
and shows in the matrix's `(missing)` column.
"""

from __future__ import annotations

import re

from collections import Counter
from typing import Any, Iterable, Sequence

MISSING = "(missing)"
UNKNOWN_GROUP = "(unknown)"

# sacrebleu tokenizer per target language; the mecab ones need extra packages, so
# Japanese and Korean fall back to characters.
BLEU_TOKENIZERS = {"zh": "zh", "ja": "char", "ko": "char", "th": "char", "lo": "char", "km": "char", "my": "char"}


def bleu_tokenizer(language: str | None) -> str:
    """By the base language of a target or its column suffix (zh-Hant, zh_hant -> zh)."""
    base = re.split(r"[-_]", language or "", maxsplit=1)[0]
    return BLEU_TOKENIZERS.get(base, "13a")


# --- translation -----------------------------------------------------------------------


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> dict[str, float]:
    from sacrebleu.metrics import BLEU, CHRF

    bleu = BLEU(tokenize=tokenize).corpus_score(list(hypotheses), [list(references)])
    chrf = CHRF().corpus_score(list(hypotheses), [list(references)])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2)}


def score_translation(
    hypotheses: Sequence[str | None],
    references: Sequence[str | None],
    *,
    groups: Sequence[str | None] | None = None,
    flags: Sequence[Iterable[str] | None] | None = None,
    tokenize: str = "13a",
) -> dict[str, Any]:
    if len(hypotheses) != len(references) or (groups is not None and len(groups) != len(references)):
        raise ValueError("hypotheses, references and groups must have one value per row")
    scored = [i for i, ref in enumerate(references) if ref is not None]
    if not scored:
        raise ValueError("no row has a reference")
    hyps = [hypotheses[i] or "" for i in scored]
    refs = [references[i] for i in scored]
    report: dict[str, Any] = {
        "task": "translation",
        "rows": len(references),
        "scored": len(scored),
        "missing_hypothesis": sum(1 for i in scored if hypotheses[i] is None),
        "tokenize": tokenize,
        **corpus_scores(hyps, refs, tokenize),
    }
    if groups is not None:
        members: dict[str, list[int]] = {}
        for n, i in enumerate(scored):
            members.setdefault(groups[i] or UNKNOWN_GROUP, []).append(n)
        report["by_group"] = {
            group: {"rows": len(idx), **corpus_scores([hyps[n] for n in idx], [refs[n] for n in idx], tokenize)}
            for group, idx in sorted(members.items(), key=lambda item: (-len(item[1]), item[0]))
        }
    if flags is not None:
        counts = Counter(flag for i in scored for flag in (flags[i] or ()))
        report["flagged_rows"] = sum(1 for i in scored if flags[i])
        report["flags"] = dict(counts.most_common())
    return report


# --- sentiment -------------------------------------------------------------------------


def score_sentiment(
    predictions: Sequence[str | None], gold: Sequence[str | None], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    if len(predictions) != len(gold):
        raise ValueError("predictions and gold must have one value per row")
    pairs = [(g, p) for g, p in zip(gold, predictions) if g is not None]
    if not pairs:
        raise ValueError("no row has a gold label")
    seen = {g for g, _ in pairs} | {p for _, p in pairs if p is not None}
    classes = list(labels or []) + sorted(seen - set(labels or []))
    columns = classes + ([MISSING] if any(p is None for _, p in pairs) else [])
    counts = Counter((g, p if p is not None else MISSING) for g, p in pairs)
    matrix = [[counts[(g, p)] for p in columns] for g in classes]

    per_class: dict[str, dict[str, float | int]] = {}
    for c in classes:
        tp = counts[(c, c)]
        predicted = sum(counts[(g, c)] for g in classes)
        support = sum(counts[(c, p)] for p in columns)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    correct = sum(counts[(c, c)] for c in classes)
    return {
        "task": "sentiment",
        "rows": len(gold),
        "scored": len(pairs),
        "missing_prediction": sum(1 for _, p in pairs if p is None),
        "accuracy": correct / len(pairs),
        "macro_f1": sum(stats["f1"] for stats in per_class.values()) / len(classes),
        "per_class": per_class,
        "confusion": {"gold": classes, "predicted": columns, "matrix": matrix},
    }


# --- printing --------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_report(report: dict[str, Any]) -> str:
    if report["task"] == "translation":
        head = table(
            ["", "rows", "BLEU", "chrF"],
            [["all", report["scored"], f"{report['bleu']:.2f}", f"{report['chrf']:.2f}"]]
            + [[g, s["rows"], f"{s['bleu']:.2f}", f"{s['chrf']:.2f}"] for g, s in report.get("by_group", {}).items()],
        )
        notes = [f"rows {report['rows']}, scored {report['scored']} (with a reference), "
                 f"missing hypothesis {report['missing_hypothesis']}, BLEU tokenizer {report['tokenize']}"]  # fmt: skip
        if "flags" in report:
            listed = ", ".join(f"{flag} {n}" for flag, n in report["flags"].items()) or "none"
            notes.append(f"flagged rows {report['flagged_rows']}: {listed}")
        return "\n".join([head, *notes])
    per_class = table(
        ["label", "precision", "recall", "f1", "support"],
        [[c, s["precision"], s["recall"], s["f1"], s["support"]] for c, s in report["per_class"].items()],
    )
    confusion = report["confusion"]
    matrix = table(
        ["gold \\ predicted", *confusion["predicted"]],
        [[g, *row] for g, row in zip(confusion["gold"], confusion["matrix"])],
    )
    summary = (
        f"rows {report['rows']}, scored {report['scored']} (with a gold label), "
        f"missing prediction {report['missing_prediction']}\n"
        f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}"
    )
    return "\n\n".join([summary, per_class, matrix])
