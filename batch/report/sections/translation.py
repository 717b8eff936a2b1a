"""Report and eval of the translation task (kind `translation`): per target language the
rows translated, skipped, failed and flagged, the flags, and the length ratio (output chars
/ source chars) overall and per source language; eval with BLEU and chrF (sacrebleu).

Length ratios are kept as a histogram of log2(ratio), so quantiles need no rows in memory.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.report.aggregate import Batch, codes, mentions_task, strings
from batch.report.frame import Frame, ReportOptions, job_input_text_column
from batch.report.source import Output

KIND = "translation"
LEGACY = {"translation": None}  # old job files: `tasks: {translation: {...}}`
DEFAULT_TEXT_COLUMN = "text"
# The targets TranslationConfig accepts, as their column suffix (batch/text/locales.py):
# fr, pt_br, zh_hant, es_419, zh_hant_tw; never translation_model or translation_<t>_flags.
TARGET_COLUMN = re.compile(r"^translation_([a-z]{2,3}(?:_[a-z]{4})?(?:_(?:[a-z]{2}|\d{3}))?)$")
UNKNOWN_GROUP = "(unknown)"

# 400 bins over 1/32 .. 32 is ~1.7% relative resolution; values beyond go to the end bins
# (exact min and max are kept separately).
RATIO_LOG2_MIN, RATIO_LOG2_MAX, RATIO_BINS = -5.0, 5.0, 400
RATIO_BIN_WIDTH = (RATIO_LOG2_MAX - RATIO_LOG2_MIN) / RATIO_BINS
HISTOGRAM_MERGE = 5  # report.json carries the ratio histogram at 400/5 = 80 bins
RATIO_NORMAL = (0.5, 2.0)  # length ratios outside this are counted as suspicious

# sacrebleu tokenizer per target language; the mecab ones need extra packages, so
# Japanese and Korean fall back to characters.
BLEU_TOKENIZERS = {"zh": "zh", "ja": "char", "ko": "char", "th": "char", "lo": "char", "km": "char", "my": "char"}


def translation_column(target: str) -> str:
    return f"translation_{target}"


def flags_column(target: str) -> str:
    return f"translation_{target}_flags"


def translation_targets(columns: Iterable[str]) -> tuple[str, ...]:
    """Target languages of an output, from its `translation_<lang>` columns."""
    return tuple(match.group(1) for name in columns if (match := TARGET_COLUMN.match(name)))


# --- which translation task an output has --------------------------------------------------


def describe(name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "kind": KIND}


def infer(output: Output) -> list[dict[str, Any]]:
    return [{"name": "translation", "kind": KIND}] if translation_targets(output.columns) else []


@dataclass
class RatioHistogram:
    """Output chars / source chars, as a fixed log-scale histogram: mergeable across files,
    bounded in memory, good for quantiles to within a bin (~1.7%)."""

    bins: np.ndarray = field(default_factory=lambda: np.zeros(RATIO_BINS, dtype=np.int64))
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add_values(self, ratios: np.ndarray) -> None:
        if ratios.size == 0:
            return
        with np.errstate(divide="ignore"):
            logs = np.log2(ratios)
        index = np.clip(np.floor((logs - RATIO_LOG2_MIN) / RATIO_BIN_WIDTH), 0, RATIO_BINS - 1).astype(np.int64)
        self.bins += np.bincount(index, minlength=RATIO_BINS)
        self.count += int(ratios.size)
        self.total += float(ratios.sum())
        self.low = min(self.low, float(ratios.min()))
        self.high = max(self.high, float(ratios.max()))

    def add(self, other: "RatioHistogram") -> None:
        self.bins += other.bins
        self.count += other.count
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)

    def quantile(self, q: float) -> float | None:
        """Interpolated within the bin, in log space, and clamped to the exact min/max."""
        if self.count == 0:
            return None
        cumulative = np.cumsum(self.bins)
        target = q * self.count
        index = min(int(np.searchsorted(cumulative, target, side="left")), RATIO_BINS - 1)
        before = cumulative[index - 1] if index > 0 else 0
        inside = self.bins[index]
        fraction = (target - before) / inside if inside else 0.5
        value = 2.0 ** (RATIO_LOG2_MIN + (index + fraction) * RATIO_BIN_WIDTH)
        return min(max(value, self.low), self.high)

    def share_outside(self, low: float, high: float) -> float | None:
        """Share of ratios below `low` or above `high` (bin resolution): a quick signal of
        truncated or run-on translations."""
        if self.count == 0:
            return None
        edges = RATIO_LOG2_MIN + np.arange(RATIO_BINS + 1) * RATIO_BIN_WIDTH
        below = self.bins[edges[1:] <= math.log2(low)].sum()
        above = self.bins[edges[:-1] >= math.log2(high)].sum()
        return float(below + above) / self.count


@dataclass
class TargetCounts:
    """One translation target language."""

    translated: int = 0
    skipped: int = 0
    failed: int = 0
    flagged: int = 0
    flags: Counter = field(default_factory=Counter)
    ratios: dict[str | None, RatioHistogram] = field(default_factory=dict)  # by source language

    def add(self, other: "TargetCounts") -> None:
        self.translated += other.translated
        self.skipped += other.skipped
        self.failed += other.failed
        self.flagged += other.flagged
        self.flags.update(other.flags)
        for language, histogram in other.ratios.items():
            self.ratios.setdefault(language, RatioHistogram()).add(histogram)

    def all_ratios(self) -> RatioHistogram:
        merged = RatioHistogram()
        for histogram in self.ratios.values():
            merged.add(histogram)
        return merged


@dataclass
class TranslationCounts:
    rows: int = 0
    languages: Counter = field(default_factory=Counter)  # (source language, what) -> rows
    targets: dict[str, TargetCounts] = field(default_factory=dict)

    def add(self, other: "TranslationCounts") -> None:
        self.rows += other.rows
        self.languages.update(other.languages)
        for target, counts in other.targets.items():
            self.targets.setdefault(target, TargetCounts()).add(counts)


@dataclass(frozen=True)
class TranslationTask:
    name: str
    targets: tuple[str, ...]
    flagged_targets: tuple[str, ...]  # targets that have a translation_<lang>_flags column
    text: str | None  # the source text column, for length ratios

    def columns(self) -> list[str]:
        names = [translation_column(t) for t in self.targets] + [flags_column(t) for t in self.flagged_targets]
        return names + ([self.text] if self.text else [])

    def count_nothing(self) -> TranslationCounts:
        return TranslationCounts()

    def count(self, batch: Batch) -> TranslationCounts:
        counts = TranslationCounts(rows=batch.num_rows)
        table = batch.table
        language_codes, languages = codes(batch.language)
        skipped_row = mentions_task(batch.skip_reason, self.name)
        failed_row = mentions_task(batch.error, self.name)
        flagged_row = np.zeros(table.num_rows, dtype=bool)
        source_chars = _chars(table, self.text)
        for target in self.targets:
            result = counts.targets.setdefault(target, TargetCounts())
            output = strings(table, translation_column(target))
            translated = output.is_valid().to_numpy(zero_copy_only=False)
            result.translated += int(translated.sum())
            result.skipped += int((~translated & skipped_row).sum())
            result.failed += int((~translated & ~skipped_row & failed_row).sum())
            if target in self.flagged_targets:
                flagged_row |= _count_flags(result, table.column(flags_column(target)).combine_chunks())
            if source_chars is not None:
                output_chars = pc.utf8_length(output).fill_null(0).to_numpy(zero_copy_only=False)
                usable = translated & (source_chars > 0)
                ratios = output_chars / np.where(source_chars > 0, source_chars, 1)
                for code in np.unique(language_codes[usable]):
                    histogram = result.ratios.setdefault(languages[code], RatioHistogram())
                    histogram.add_values(ratios[usable & (language_codes == code)])
        for what, mask in (("rows", None), ("skipped", skipped_row), ("failed", failed_row), ("flagged", flagged_row)):
            weights = None if mask is None else mask.astype(np.int64)
            per_code = np.bincount(language_codes, weights=weights, minlength=len(languages))
            for code, n in enumerate(per_code):
                if n:
                    counts.languages[(languages[code], what)] += int(n)
        return counts

    def build(self, counts: TranslationCounts, frame: Frame) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": KIND,
            "source_text_column": self.text,
            "targets": [self.target_block(counts, target) for target in self.targets],
            "by_source_language": source_language_rows(counts),
        }

    def target_block(self, counts: TranslationCounts, target: str) -> dict[str, Any]:
        """One target language: outcomes, flags, and length ratios (overall and per source language)."""
        result = counts.targets.get(target, TargetCounts())
        by_source = sorted(result.ratios.items(), key=lambda item: (-item[1].count, str(item[0])))
        histogram = result.all_ratios()
        return {
            "language": target,
            "column": translation_column(target),
            "rows": counts.rows,
            "translated": result.translated,
            "skipped": result.skipped,
            "failed": result.failed,
            "missing": counts.rows - result.translated - result.skipped - result.failed,
            "flagged": result.flagged if target in self.flagged_targets else None,
            "flags": dict(result.flags.most_common()),
            "length_ratio": ratio_summary(histogram) if self.text else None,
            "length_ratio_by_source_language": [
                {"language": language, **ratio_summary(h, brief=True)} for language, h in by_source
            ],
            "length_ratio_histogram": ratio_histogram(histogram) if self.text else None,
        }


def plan(description: dict[str, Any], output: Output, options: ReportOptions, job: dict[str, Any]) -> TranslationTask:
    from batch.report.source import ReportError

    columns = output.columns
    targets = translation_targets(columns)
    if options.text_column is not None:
        if options.text_column not in columns:
            raise ReportError(
                f"--text-column {options.text_column}: no such column in {output.uri}; columns: {', '.join(columns)}"
            )
        text = options.text_column
    else:
        configured = job_input_text_column(job)
        text = next((name for name in (configured, DEFAULT_TEXT_COLUMN) if name and name in columns), None)
    return TranslationTask(
        name=description["name"],
        targets=targets,
        flagged_targets=tuple(t for t in targets if flags_column(t) in columns),
        text=text if targets else None,
    )


def alerts(section: dict[str, Any]) -> list[dict[str, Any]]:
    return []


def source_language_rows(counts: TranslationCounts) -> list[dict[str, Any]]:
    """Rows, and rows whose translation was skipped, failed or flagged, per source language."""
    languages = {language for language, _ in counts.languages}
    ordered = sorted(languages, key=lambda language: (-counts.languages[(language, "rows")], str(language)))
    whats = ("rows", "skipped", "failed", "flagged")
    return [{"language": language, **{what: counts.languages[(language, what)] for what in whats}} for language in ordered]


def ratio_summary(histogram: RatioHistogram, brief: bool = False) -> dict[str, Any]:
    """Quantiles of output chars / source chars (to within ~2%: see RatioHistogram)."""

    def q(value: float) -> float | None:
        result = histogram.quantile(value)
        return None if result is None else round(result, 3)

    if brief:
        return {"count": histogram.count, "p05": q(0.05), "median": q(0.5), "p95": q(0.95)}
    empty = histogram.count == 0
    outside = histogram.share_outside(*RATIO_NORMAL)
    return {
        "count": histogram.count,
        "mean": None if empty else round(histogram.total / histogram.count, 3),
        "min": None if empty else round(histogram.low, 3),
        "p05": q(0.05),
        "p25": q(0.25),
        "median": q(0.5),
        "p75": q(0.75),
        "p95": q(0.95),
        "max": None if empty else round(histogram.high, 3),
        "outside": {"low": RATIO_NORMAL[0], "high": RATIO_NORMAL[1], "share": None if outside is None else round(outside, 4)},
    }


def ratio_histogram(histogram: RatioHistogram) -> dict[str, Any]:
    """The histogram at coarser bins, for charts and for machines that want the shape."""
    merged = histogram.bins.reshape(RATIO_BINS // HISTOGRAM_MERGE, HISTOGRAM_MERGE).sum(axis=1)
    width = (RATIO_LOG2_MAX - RATIO_LOG2_MIN) / len(merged)
    edges = [round(2 ** (RATIO_LOG2_MIN + i * width), 5) for i in range(len(merged) + 1)]
    return {"edges": edges, "counts": [int(n) for n in merged], "scale": "log2"}


def _chars(table: pa.Table, column: str | None) -> np.ndarray | None:
    """Characters (code points, like Python's len) of the source text per row; 0 when null."""
    if column is None:
        return None
    values = table.column(column).combine_chunks()
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        values = pa.array([None if v is None else v.decode("utf-8", "replace") for v in values.to_pylist()], pa.string())
    elif not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = strings(table, column)
    return pc.utf8_length(values).fill_null(0).to_numpy(zero_copy_only=False)


def _count_flags(result: TargetCounts, flags: pa.Array) -> np.ndarray:
    if pa.types.is_list(flags.type) or pa.types.is_large_list(flags.type):
        lengths = pc.list_value_length(flags).fill_null(0).to_numpy(zero_copy_only=False)
        for item in pc.value_counts(pc.list_flatten(flags).drop_null()).to_pylist():
            result.flags[str(item["values"])] += item["counts"]
    else:  # not the documented list<string>; any non-null value counts as a flag
        lengths = flags.is_valid().to_numpy(zero_copy_only=False).astype(np.int64)
    flagged = lengths > 0
    result.flagged += int(flagged.sum())
    return flagged


# --- terminal, charts, page -------------------------------------------------------------------


def lines(section: dict[str, Any]) -> list[str]:
    return [
        f"  {t['column']}: {t['translated']:,} translated, {t['skipped']:,} skipped, {t['failed']:,} failed"
        + (f", {t['flagged']:,} flagged" if t["flagged"] else "")
        for t in section["targets"]
    ]


def charts(section: dict[str, Any]) -> list:
    from batch.report.charts import charts_of

    name = section["name"]
    return charts_of([
        (f"{name}_outcomes", "Translation outcomes per target language", _outcomes_chart(section)),
        (f"{name}_by_language", "Rows by source language", _by_language_chart(section)),
        (f"{name}_length_ratio", "Length ratio (output chars / source chars)", _length_ratio_chart(section)),
    ])  # fmt: skip


OUTCOME_COLORS = {"translated": "#27ae60", "skipped": "#f1c40f", "failed": "#c0392b", "missing": "#95a5a6"}


def _outcomes_chart(section: dict[str, Any]):
    from batch.report import charts as draw

    targets = section["targets"]
    if not targets:
        return None
    figure = draw.Figure(figsize=(8, 0.9 + 0.45 * len(targets)))
    axes = figure.subplots()
    names = [target["column"] for target in targets]
    left = [0] * len(targets)
    for outcome, color in OUTCOME_COLORS.items():
        widths = [target[outcome] for target in targets]
        axes.barh(names, widths, left=left, color=color, label=outcome)
        left = [a + b for a, b in zip(left, widths)]
    for name, target in zip(names, targets):
        if target["flagged"]:
            axes.text(target["rows"], name, f"  {target['flagged']:,} flagged", va="center", fontsize=9)
    axes.invert_yaxis()
    axes.set_xlabel("rows")
    draw.legend_above(axes, ncols=4)
    draw.tidy(axes)
    return figure, "; ".join(
        f"{t['column']}: {t['translated']} translated, {t['skipped']} skipped, {t['failed']} failed" for t in targets
    )


def _by_language_chart(section: dict[str, Any]):
    from batch.report import charts as draw

    if not section["by_source_language"]:
        return None
    rows = section["by_source_language"][: draw.MAX_LANGUAGES]
    rest = section["by_source_language"][draw.MAX_LANGUAGES :]
    names = [draw.language_name(row["language"]) for row in rows]
    if rest:
        rows = rows + [{what: sum(row[what] for row in rest) for what in ("rows", "skipped", "failed", "flagged")}]
        names.append(f"other ({len(rest)})")
    figure = draw.Figure(figsize=(8, 0.9 + 0.35 * len(rows)))
    axes = figure.subplots()
    ok = [row["rows"] - row["skipped"] - row["failed"] for row in rows]
    axes.barh(names, ok, color=OUTCOME_COLORS["translated"], label="not skipped or failed")
    axes.barh(names, [row["skipped"] for row in rows], left=ok, color=OUTCOME_COLORS["skipped"], label="skipped")
    after = [a + row["skipped"] for a, row in zip(ok, rows)]
    axes.barh(names, [row["failed"] for row in rows], left=after, color=OUTCOME_COLORS["failed"], label="failed")
    axes.invert_yaxis()
    axes.set_xlabel("rows")
    draw.legend_above(axes, ncols=3)
    draw.tidy(axes)
    return figure, "Rows per source language: " + ", ".join(f"{n} {row['rows']}" for n, row in zip(names, rows))


def _length_ratio_chart(section: dict[str, Any]):
    from batch.report import charts as draw

    targets = [t for t in section["targets"] if t["length_ratio"] and t["length_ratio"]["count"]]
    if not targets:
        return None
    figure = draw.Figure(figsize=(9, 3.6))
    axes = figure.subplots()
    colors = iter(draw.OTHER_COLORS * 4)
    for target in targets:
        histogram = target["length_ratio_histogram"]
        edges, counts = histogram["edges"], histogram["counts"]
        total = sum(counts)
        axes.stairs([n / total for n in counts], edges, color=next(colors), linewidth=1.8,
                    label=f"{target['column']} (median {target['length_ratio']['median']})")  # fmt: skip
    axes.set_xscale("log", base=2)
    axes.axvspan(edges[0], RATIO_NORMAL[0], color="#c0392b", alpha=0.06)
    axes.axvspan(RATIO_NORMAL[1], edges[-1], color="#c0392b", alpha=0.06)
    low = min(t["length_ratio"]["min"] for t in targets)
    high = max(t["length_ratio"]["max"] for t in targets)
    axes.set_xlim(max(edges[0], low / 1.5), min(edges[-1], high * 1.5))
    axes.xaxis.set_major_formatter(lambda value, _: f"{value:g}")
    axes.yaxis.set_major_formatter(draw.PercentFormatter(1.0))
    axes.set_xlabel("output chars / source chars (log scale; shaded: below 0.5 or above 2)")
    axes.set_ylabel("share of rows")
    axes.legend(frameon=False, fontsize=9)
    draw.tidy(axes, grid="y")
    return figure, "Length ratio distribution per target: " + ", ".join(
        f"{t['column']} median {t['length_ratio']['median']}" for t in targets
    )


def html(section: dict[str, Any], charts_by_id: dict[str, Any], report: dict[str, Any]) -> list[str]:
    from batch.report.page import esc, figure, language, language_column, num, pct, ratio, table

    name = section["name"]
    lines = [f"<h2>{esc(name)}</h2>", "<h3>Per target language</h3>"]
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
    lines += figure(charts_by_id.get(f"{name}_outcomes"))
    lines.append(f"<h3>By source language {language_column(report)}</h3>")
    lines.append(
        table(
            ["language", "rows", "skipped", "failed", "flagged"],
            [[language(r["language"]), num(r["rows"]), num(r["skipped"]), num(r["failed"]), num(r["flagged"])]
             for r in section["by_source_language"]],
        )  # fmt: skip
    )
    lines += figure(charts_by_id.get(f"{name}_by_language"))
    if any(t["length_ratio"] for t in section["targets"]):
        lines.append(
            f"<h3>Length ratio <span class=\"small\">(characters of output / characters of "
            f"{esc(section['source_text_column'])}; quantiles to within ~2%)</span></h3>"
        )
        lines += figure(charts_by_id.get(f"{name}_length_ratio"))
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


# --- eval --------------------------------------------------------------------------------------


def bleu_tokenizer(language: str | None) -> str:
    """By the base language of a target or its column suffix (zh-Hant, zh_hant -> zh)."""
    base = re.split(r"[-_]", language or "", maxsplit=1)[0]
    return BLEU_TOKENIZERS.get(base, "13a")


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> dict[str, float]:
    from sacrebleu.metrics import BLEU, CHRF

    bleu = BLEU(tokenize=tokenize).corpus_score(list(hypotheses), [list(references)])
    chrf = CHRF().corpus_score(list(hypotheses), [list(references)])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2)}


def score(
    hypotheses: Sequence[str | None],
    references: Sequence[str | None],
    *,
    groups: Sequence[str | None] | None = None,
    flags: Sequence[Iterable[str] | None] | None = None,
    tokenize: str = "13a",
) -> dict[str, Any]:
    """Corpus BLEU and chrF; rows without a reference are not scored, a missing hypothesis
    counts as an empty translation (failures cost score instead of vanishing)."""
    if len(hypotheses) != len(references) or (groups is not None and len(groups) != len(references)):
        raise ValueError("hypotheses, references and groups must have one value per row")
    scored = [i for i, ref in enumerate(references) if ref is not None]
    if not scored:
        raise ValueError("no row has a reference")
    hyps = [hypotheses[i] or "" for i in scored]
    refs = [references[i] for i in scored]
    report: dict[str, Any] = {
        "task": "translation",
        "kind": KIND,
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


def format_score(report: dict[str, Any]) -> str:
    from batch.evaluate import table

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


def evaluate(read, uri: str, task: dict[str, Any], *, prediction: str | None, gold: str | None,
             by: str | None, tokenize: str | None = None) -> dict[str, Any]:  # fmt: skip
    """`python -m batch eval --task translation`: the hypothesis is a `translation_<lang>`
    column, its reference `reference_<lang>` unless named; grouped by source_lang by default."""
    hypothesis, reference = prediction, gold
    if not hypothesis:
        raise ValueError("--task translation needs --hypothesis COLUMN (e.g. translation_en)")
    language = match.group(1) if (match := re.fullmatch(r"translation_(\w+)", hypothesis)) else None
    if not reference:
        if language is None:
            raise ValueError("--reference COLUMN is needed when --hypothesis is not translation_<lang>")
        reference = f"reference_{language}"
    columns = [hypothesis, reference] + ([by] if by else [])
    optional = [flags_column_of(hypothesis)] + ([] if by else ["source_lang"])
    data = read(uri, columns, optional)
    group_column = by or ("source_lang" if "source_lang" in data.column_names else None)
    flags = flags_column_of(hypothesis)
    report = score(
        data.column(hypothesis).to_pylist(),
        data.column(reference).to_pylist(),
        groups=[None if g is None else str(g) for g in data.column(group_column).to_pylist()] if group_column else None,
        flags=data.column(flags).to_pylist() if flags in data.column_names else None,
        tokenize=tokenize or bleu_tokenizer(language),
    )
    return {**report, "hypothesis": hypothesis, "reference": reference, "group_by": group_column}


def flags_column_of(hypothesis: str) -> str:
    return f"{hypothesis}_flags"
