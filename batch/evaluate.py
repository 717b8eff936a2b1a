"""Scoring a job's output against references: pure functions of column values, no storage.

Each task kind scores its own output, next to its report section (batch/report/sections/):
- translation: corpus-level BLEU and chrF (sacrebleu; 0-100), overall and per group. Rows
  without a reference are not scored; a scored row without a hypothesis (the row failed or
  was skipped) counts as an empty translation, so failures cost score instead of vanishing.
  BLEU on a small group is harsh (few 4-grams): read per-group BLEU with its row count,
  chrF is steadier there.
- label (sentiment, topic, emotion, ...): accuracy, macro-F1 (mean F1 over every label seen
  in gold or predictions), per label precision / recall / F1 / support and the confusion
  matrix (rows: gold, columns: predicted); multi-label (list values): per-label F1, macro-
  and micro-F1, exact match. Per group (e.g. per language) with `groups`. Rows without a
  gold label are not scored; a missing prediction counts as wrong (the matrix's
  `(missing)` column).

This module is the stable entry point the fine-tune, the demo and `python -m batch eval` use.
"""

from __future__ import annotations

from typing import Any, Sequence

from batch.report.sections import KINDS, label, translation

MISSING = label.MISSING
UNKNOWN_GROUP = label.UNKNOWN_GROUP

bleu_tokenizer = translation.bleu_tokenizer
corpus_scores = translation.corpus_scores
score_translation = translation.score
score_labels = label.score


def score_sentiment(
    predictions: Sequence[str | None],
    gold: Sequence[str | None],
    labels: Sequence[str] | None = None,
    groups: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    return label.score(predictions, gold, labels, groups=groups, task="sentiment")


def format_report(report: dict[str, Any]) -> str:
    """The printed form of any kind's score (by its `kind`; older reports by `task`)."""
    kind = report.get("kind") or ("translation" if report.get("task") == "translation" else label.KIND)
    return KINDS[kind].format_score(report)


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
