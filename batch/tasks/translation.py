"""Translation into one or more target languages, one output column per target.

Per row:
1. The source language is identified offline (`batch.text.langid`) on the text without its
   protected spans -> `source_lang` (ISO 639-1) and `source_lang_confidence`; both null
   when nothing is left to judge (emoji only, URLs only, digits).
2. Per target language:
   - nothing translatable (no letter outside protected spans): no request; the translation
     is the text itself (glossary fixed terms applied), flag `nothing_to_translate`;
   - already in the target language (detected with at least
     `language_detection.same_language_min_confidence`): no request; the translation is the
     source text, flag `same_language` (other targets of the row are still translated);
   - otherwise protected spans (URLs, e-mails, @mentions, #hashtags, emoji, inline code,
     glossary terms) become placeholders ⟦1⟧..⟦n⟧, and the text is split into pieces
     (paragraphs, then lines, sentences, clauses, words; batch/text/segment.py) so that each
     piece's whole prompt (chat template, instruction, text) plus its output budget fits the
     engine's max_model_len, counted in the serving model's own tokens (the prepare stage
     binds its tokenizer; batch/text/tokens.py). The output budget follows the piece's token
     count (`output_tokens_per_token`, capped by `max_output_tokens`). A run with no boundary
     left is cut at a token boundary (flag `hard_cut`). Each piece is one request, and the
     answers are joined back in order with the original separators.
   - a row whose source language the model does not cover (`source_languages`) goes to the
     `fallback` adapter (flag `fallback`), else is translated anyway (flag
     `unsupported_language`) or skipped, as `unsupported_language` says.

Targets are language codes or BCP-47 tags (`pt-BR`, `zh-Hant`, `es-419`; batch/text/locales.py):
the prompt names the locale ("Brazilian Portuguese") with the target's `instructions`, the
columns use a readable suffix (`translation_pt_br`), and detection and guardrails judge the
base language (`pt`).
3. Guardrails flag, never fail, a translation: see FLAGS. `error` is kept for real failures
   (the engine could not answer a request). A piece the model answered with nothing keeps
   its source text (flag `empty`), so a translation is never blank for a non-blank text and
   a long document never silently loses a paragraph.

Columns: `source_lang` string, `source_lang_confidence` float64, and per target
`translation_<suffix>` string and `translation_<suffix>_flags` list<string> (empty when clean).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from batch.tasks.base import Completion, Failure, Generate, Plan, Result, RowError, Skip, Task, TaskConfig
from batch.text import checks, langid, locales, segment, tokens
from batch.text.spans import Masked, has_letters, localize, protect, restore, terms_from, visible

INSTRUCTION = (
    "Translate the user's text into {language}. Answer with the translation only. Tokens such as "
    "⟦1⟧ are placeholders for text that must stay as it is: copy each one unchanged, exactly once, "
    "where it belongs."
)
STYLE = " Style: {instructions}"  # a target's own instructions (register, formality, a style note)
FALLBACK_ADAPTER = "translation-fallback"  # the engine-wide name of the fallback adapter

# Every flag a translation can carry, in the order they are listed. The first two are
# informational (no request was made); the others mark a translation to filter or requeue.
FLAGS = (
    "same_language",  # the source is already in the target language: copied through
    "nothing_to_translate",  # no letters outside protected spans (emoji, URLs, ...): copied through
    "empty",  # the model's answer for the text, or a piece of it, is empty: that piece's source is kept
    "truncated",  # a generation stopped at its token budget (finish_reason == "length")
    "protected_span_missing",  # a placeholder was dropped or mangled: a protected span is missing
    "wrong_language",  # the translation is confidently detected as another language
    "copied_source",  # the translation repeats the source (source language != target)
    "length_ratio",  # translation/source length outside [min_length_ratio, max_length_ratio]
    "hard_cut",  # a run with no sentence, clause or word boundary was cut inside, at a token boundary
    "unsupported_language",  # the source language is not in source_languages (and there is no fallback)
    "fallback",  # the source language is not in source_languages: the fallback adapter translated it
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Glossary(_Section):
    do_not_translate: list[str] = Field(default_factory=list, description="terms kept as written (brands, names)")
    fixed: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="target language -> {source term: its fixed translation}"
    )

    @field_validator("do_not_translate")
    @classmethod
    def _terms(cls, terms: list[str]) -> list[str]:
        if any(not term.strip() for term in terms):
            raise ValueError("glossary terms must not be blank")
        return terms

    @field_validator("fixed", mode="before")
    @classmethod
    def _tag_keys(cls, fixed: Any) -> Any:
        return {locales.canonical(str(tag)): terms for tag, terms in fixed.items()} if isinstance(fixed, dict) else fixed

    @field_validator("fixed")
    @classmethod
    def _fixed(cls, fixed: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for lang, entries in fixed.items():
            if any(not source.strip() or not target.strip() for source, target in entries.items()):
                raise ValueError(f"{lang}: glossary terms and their translations must not be blank")
        return fixed


class LanguageDetection(_Section):
    languages: list[str] | None = Field(
        default=None,
        description="ISO 639-1 codes the detector chooses from (the targets are always added); "
        "default: all 75 lingua languages. A short list is faster, lighter and avoids exotic confusions",
    )
    low_accuracy: bool = Field(default=False, description="lingua's low-accuracy mode: fast, poor on short posts")
    same_language_min_confidence: float = Field(
        default=0.5, ge=0, le=1, description="copy a row through (no request) only when this sure it is in the target"
    )
    max_chars: int = Field(default=1000, gt=0, description="detect on the first characters only")

    @field_validator("languages")
    @classmethod
    def _known(cls, codes: list[str] | None) -> list[str] | None:
        if codes is not None and (unknown := langid.unknown_codes(codes)):
            known = ", ".join(sorted(langid.supported_languages()))
            raise ValueError(f"lingua cannot detect {unknown}; known: {known}")
        return codes


# The guardrail only asks whether an answer is in its target language, so it chooses among
# the targets and the languages a multilingual model falls back to or a source is most
# likely written in, not all 75: a third of the CPU per answer and a fraction of lingua's
# memory. An answer in a language missing here still lands on some other candidate (a
# closely related language at worst) and is flagged.
JUDGED_LANGUAGES = (
    "ar", "de", "en", "es", "fa", "fr", "hi", "id", "it", "ja", "ko", "nl", "pl", "pt", "ru", "sv", "tr", "uk",
    "vi", "zh",
)  # fmt: skip


class Guardrails(_Section):
    min_length_ratio: float = Field(default=0.33, gt=0, description="flag length_ratio below this")
    max_length_ratio: float = Field(default=3.0, gt=0, description="flag length_ratio above this")
    min_chars_to_judge: int = Field(
        default=20, ge=1, description="length ratio and output language are judged only on texts at least this long"
    )
    wrong_language_min_confidence: float = Field(default=0.5, ge=0, le=1)
    judged_languages: list[str] | None = Field(
        default=None,
        description="languages the wrong_language check chooses from (the targets are always added); "
        "default: language_detection.languages if set, else 20 widely used languages (JUDGED_LANGUAGES)",
    )

    @field_validator("judged_languages")
    @classmethod
    def _judged_known(cls, codes: list[str] | None) -> list[str] | None:
        if codes is not None and (unknown := langid.unknown_codes(codes)):
            raise ValueError(f"lingua cannot detect {unknown}")
        return codes

    @model_validator(mode="after")
    def _bounds(self) -> "Guardrails":
        if self.min_length_ratio >= self.max_length_ratio:
            raise ValueError("min_length_ratio must be below max_length_ratio")
        return self


class Fallback(_Section):
    adapter: str = Field(description="LoRA adapter (local or s3://) on the task's model for uncovered source languages")


class TranslationConfig(TaskConfig):
    kind: Literal["translation"] = "translation"
    prompt_version: str = Field(default="2", description="bump when editing the prompt; part of the result cache key")
    target_languages: list[str] = Field(
        min_length=1, description="language codes or BCP-47 tags (fr, pt-BR, zh-Hant, es-419), one output column each"
    )
    instructions: dict[str, str] = Field(
        default_factory=dict, description="target -> a style note for the prompt (register, formality, audience)"
    )
    max_output_tokens: int = Field(default=512, gt=0, description="ceiling of the per-request output budget")
    output_tokens_per_token: float = Field(
        default=1.0,
        gt=0,
        description="output budget per source token of a piece (plus 16), so long pieces get room and short "
        "ones stay cheap",
    )
    output_tokens_per_char: float | None = Field(
        default=None,
        gt=0,
        description="instead of output_tokens_per_token: an output budget per source character",
    )
    max_source_chars_per_request: int | None = Field(
        default=None,
        ge=20,
        description="also cap pieces at this many characters; default: as long as the context allows "
        "(500 characters where no tokenizer is loaded)",
    )
    source_languages: list[str] | None = Field(
        default=None, description="ISO 639-1 codes the model translates from and into; default: any"
    )
    fallback: Fallback | None = Field(
        default=None, description="where rows in a source language outside source_languages go"
    )
    unsupported_language: Literal["translate", "skip"] = Field(
        default="translate",
        description="without a fallback, a row in an uncovered source language is translated anyway "
        "(flag unsupported_language) or skipped",
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="LoRA adapter per target language (local or s3://); languages not listed use `adapter`",
    )
    glossary: Glossary = Glossary()
    language_detection: LanguageDetection = LanguageDetection()
    guardrails: Guardrails = Guardrails()

    @field_validator("target_languages")
    @classmethod
    def _codes(cls, codes: list[str]) -> list[str]:
        tags = [locales.canonical(code) for code in codes]
        suffixes = [locales.column_suffix(tag) for tag in tags]
        if len(set(suffixes)) != len(suffixes):
            raise ValueError("target_languages lists a language twice")
        return tags

    @field_validator("adapters", "instructions", mode="before")
    @classmethod
    def _tag_keys(cls, per_target: Any) -> Any:
        if not isinstance(per_target, dict):
            return per_target
        return {locales.canonical(str(tag)): value for tag, value in per_target.items()}

    @field_validator("source_languages")
    @classmethod
    def _covered(cls, codes: list[str] | None) -> list[str] | None:
        if codes is not None and (bad := [c for c in codes if not (c.isalpha() and c.islower() and len(c) in (2, 3))]):
            raise ValueError(f"{bad} are not ISO 639-1 codes like 'fr' (the detector reports base languages)")
        return codes

    @model_validator(mode="after")
    def _consistent(self) -> "TranslationConfig":
        if extra := sorted(set(self.adapters) - set(self.target_languages)):
            raise ValueError(f"adapters has {extra}, which are not in target_languages {self.target_languages}")
        if extra := sorted(set(self.glossary.fixed) - set(self.target_languages)):
            raise ValueError(f"glossary.fixed has {extra}, which are not in target_languages {self.target_languages}")
        if extra := sorted(set(self.instructions) - set(self.target_languages)):
            raise ValueError(f"instructions has {extra}, which are not in target_languages {self.target_languages}")
        covered = self.source_languages
        if covered is not None and (uncovered := [t for t in self.target_languages if locales.base(t) not in covered]):
            raise ValueError(
                f"target_languages {uncovered} are not among source_languages {covered} (what the model covers)"
            )
        if self.fallback is not None and covered is None:
            raise ValueError("fallback is for source languages the model does not cover: set source_languages too")
        chosen = self.language_detection.languages
        candidates = set(chosen or []) | set(self.bases)
        if chosen is not None and len(candidates - set(langid.unknown_codes(candidates))) < 2:
            raise ValueError("language_detection.languages: name at least two languages to choose from")
        return self

    @property
    def bases(self) -> list[str]:
        """The base language of every target (pt-BR -> pt): what the detectors can judge."""
        return sorted({locales.base(tag) for tag in self.target_languages})


@dataclass
class _Target:
    """What parse needs for one target language of one row."""

    lang: str
    copy: str | None = None  # the translation, when no request was needed
    flags: tuple[str, ...] = ()
    source: str = ""  # visible source text (spans removed), for the guardrails
    pieces: segment.Pieces | None = None
    parts: tuple[Masked, ...] = ()  # one per piece, placeholders renumbered from ⟦1⟧
    slots: tuple[int | None, ...] = ()  # per piece: its index in plan.requests, None if not sent


@dataclass
class _State:
    detection: langid.Detection
    targets: list[_Target]


class TranslationTask(Task):
    kind = "translation"
    name = "translation"
    Config = TranslationConfig

    config: TranslationConfig

    def __init__(self, config: TranslationConfig, name: str | None = None):
        super().__init__(config, name)
        glossary, detection = config.glossary, config.language_detection
        self._terms = {
            lang: terms_from(glossary.do_not_translate, glossary.fixed.get(lang)) for lang in config.target_languages
        }
        self._names = terms_from(glossary.do_not_translate)  # hidden from the detector: names say no language
        # Detectors know base languages (pt, zh): a locale is judged by its base language.
        languages = None if detection.languages is None else [*detection.languages, *config.bases]
        self._langid = langid.LanguageIdentifier(
            languages, low_accuracy=detection.low_accuracy, max_chars=detection.max_chars
        )
        judged = config.guardrails.judged_languages or detection.languages or JUDGED_LANGUAGES
        self._judge = langid.LanguageIdentifier(
            [*judged, *config.bases], low_accuracy=detection.low_accuracy, max_chars=detection.max_chars
        )
        self._text_limits: dict[str, int] = {}  # target -> most text tokens a piece may have

    def columns(self) -> list[pa.Field]:
        fields = [pa.field("source_lang", pa.string()), pa.field("source_lang_confidence", pa.float64())]
        for lang in self.config.target_languages:
            fields.append(pa.field(self.column(lang), pa.string()))
            fields.append(pa.field(self.flags_column(lang), pa.list_(pa.string())))
        return fields

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "targets": list(self.config.target_languages)}

    @staticmethod
    def column(lang: str) -> str:
        return f"translation_{locales.column_suffix(lang)}"

    @staticmethod
    def flags_column(lang: str) -> str:
        return f"translation_{locales.column_suffix(lang)}_flags"

    # --- prepare ----------------------------------------------------------------------

    def prepare(self, text: str) -> Plan | Skip:
        if not text.strip():
            return Skip("empty text")
        detection = self._langid.detect(visible(protect(text, self._names).text))
        route = self._route(detection)
        if route == "skip":
            values = {"source_lang": detection.language, "source_lang_confidence": detection.confidence}
            return Skip(f"unsupported_language ({detection.language})", values)
        requests: list[Generate] = []
        targets = [self._plan_target(text, lang, detection, route, requests) for lang in self.config.target_languages]
        return Plan(requests, _State(detection, targets))

    def _route(self, detection: langid.Detection) -> Literal["model", "fallback", "unsupported", "skip"]:
        """Which model translates this row: the task's own when it covers the source language
        (or coverage is not declared), else the fallback adapter, else the configured policy."""
        covered = self.config.source_languages
        if covered is None or detection.language is None or detection.language in covered:
            return "model"
        if self.config.fallback is not None:
            return "fallback"
        return "unsupported" if self.config.unsupported_language == "translate" else "skip"

    def _plan_target(
        self, text: str, lang: str, detection: langid.Detection, route: str, requests: list[Generate]
    ) -> _Target:
        masked = protect(text, self._terms[lang])
        source = visible(masked.text)
        if not has_letters(source):
            return _Target(lang, copy=restore(masked.text, masked.spans).text.strip(), flags=("nothing_to_translate",))
        sure = self.config.language_detection.same_language_min_confidence
        if detection.language == locales.base(lang) and detection.confidence >= sure:
            return _Target(lang, copy=text.strip(), flags=("same_language",))
        pieces = self._split(masked.text, lang)
        parts = tuple(localize(piece, masked.spans) for piece in pieces.pieces)
        adapter = FALLBACK_ADAPTER if route == "fallback" else self._adapter_for(lang)
        slots: list[int | None] = []
        for part in parts:
            if has_letters(visible(part.text)):
                slots.append(len(requests))
                requests.append(self._request(lang, part.text, adapter))
            else:  # a piece that is only spans (a code block, a line of links): nothing to ask
                slots.append(None)
        flags = {"fallback": ("fallback",), "unsupported": ("unsupported_language",)}.get(route, ())
        flags += ("hard_cut",) if pieces.hard_cuts else ()
        return _Target(lang, flags=flags, source=source, pieces=pieces, parts=parts, slots=tuple(slots))

    def _system(self, lang: str) -> str:
        system = INSTRUCTION.format(language=locales.display_name(lang))
        if note := self.config.instructions.get(lang):
            system += STYLE.format(instructions=note)
        return system

    def messages(self, lang: str, piece: str) -> tuple[tuple[str, str], ...]:
        """The chat messages asking for one piece in `lang`: what the engine is sent, and what
        a fine-tune is trained on (batch/finetune/data.py), so the two cannot drift."""
        return (("system", self._system(lang)), ("user", piece))

    def _request(self, lang: str, piece: str, adapter: str | None) -> Generate:
        return Generate(messages=self.messages(lang, piece), max_tokens=self._output_budget(piece), adapter=adapter)

    # --- budgets: what a piece may cost -------------------------------------------------

    def _output_budget(self, piece: str) -> int:
        """The output budget follows the piece's size: in the model's tokens when its
        tokenizer is loaded, else (and when the job says so) in characters."""
        ceiling, per_char = self.config.max_output_tokens, self.config.output_tokens_per_char
        if per_char is not None or self.tokens is None:
            return min(ceiling, 16 + int(len(piece) * (per_char or 0.75)))
        return min(ceiling, 16 + math.ceil(self.tokens.count(piece) * self.config.output_tokens_per_token))

    def _split(self, text: str, lang: str) -> segment.Pieces:
        """Pieces whose whole prompt (template, instruction, text) plus output budget fit
        the engine's max_model_len, cut at the most natural boundaries that allow it."""
        cap = self.config.max_source_chars_per_request
        if self.tokens is None:  # no tokenizer here (unit tests): characters only
            return segment.split(text, cap or 500)
        counter, system = self.tokens, self._system(lang)
        limit = self._text_limit(lang, system)

        def fits(piece: str) -> bool:
            prompt = counter.prompt((("system", system), ("user", piece)))
            return prompt + self._output_budget(piece) <= counter.max_model_len

        def resplit(piece: str, budget: int) -> segment.Pieces:
            return segment.split_by(piece, counter.count, budget, counter.head)

        first = segment.split(text, cap) if cap else resplit(text, limit)
        return segment.fit(first, fits, resplit, limit)

    def _text_limit(self, lang: str, system: str) -> int:
        """Most text tokens a piece may have: what the context leaves after the rendered
        instruction and the piece's own output budget."""
        if (limit := self._text_limits.get(lang)) is None:
            counter, rules = self.tokens, self.config
            room = counter.max_model_len - counter.prompt((("system", system), ("user", "")))
            if rules.output_tokens_per_char is not None:  # budget by characters: assume the ceiling
                limit = room - rules.max_output_tokens
            else:
                limit = tokens.largest_fitting(
                    room, lambda t: min(rules.max_output_tokens, 16 + math.ceil(t * rules.output_tokens_per_token))
                )
            if limit < 1:
                raise RowError(
                    f"{self.column(lang)}: the instruction and the output budget (max_output_tokens "
                    f"{rules.max_output_tokens}) leave no room for text in max_model_len {counter.max_model_len}"
                )
            self._text_limits[lang] = limit
        return limit

    def warm_up(self, stage: Literal["prepare", "parse"], texts: Sequence[str] = ()) -> None:
        """Lingua loads a language's models on first use (seconds for a script's languages):
        load them up front, for the scripts of the run's first texts. Prepare identifies
        sources; parse judges the answers' language (the guardrails)."""
        detector = self._langid if stage == "prepare" else self._judge
        for text in ("Warm-up: the detector loads its language models here.", *texts):
            detector.detect(text)

    def adapters(self) -> dict[str, str]:
        """One engine serves every target's adapter and the fallback side by side (vLLM multi-LoRA)."""
        named = super().adapters()
        named.update({f"{self.name}-{lang}": uri for lang, uri in self.config.adapters.items()})
        if self.config.fallback is not None:
            named[FALLBACK_ADAPTER] = self.config.fallback.adapter
        return named

    def _adapter_for(self, lang: str) -> str | None:
        return f"{self.name}-{lang}" if lang in self.config.adapters else self.adapter_name

    # --- parse ------------------------------------------------------------------------

    def parse(self, text: str, plan: Plan, results: list[Result]) -> dict[str, Any]:
        state: _State = plan.state
        values: dict[str, Any] = {
            "source_lang": state.detection.language,
            "source_lang_confidence": state.detection.confidence,
        }
        for target in state.targets:
            if target.copy is not None:
                translation, flags = target.copy, set(target.flags)
            else:
                translation, flags = self._assemble(target, results, state.detection)
                flags |= set(target.flags)
            values[self.column(target.lang)] = translation
            values[self.flags_column(target.lang)] = [flag for flag in FLAGS if flag in flags]
        return values

    def _assemble(self, target: _Target, results: list[Result], detection: langid.Detection) -> tuple[str, set[str]]:
        flags: set[str] = set()
        outputs: list[str] = []
        answered: list[str] = []  # visible model output, for the guardrails
        for i, (part, slot) in enumerate(zip(target.parts, target.slots)):
            if slot is None:
                outputs.append(restore(part.text, part.spans).text)
                continue
            result = results[slot]
            if isinstance(result, Failure):
                where = f" piece {i + 1}/{len(target.parts)}:" if len(target.parts) > 1 else ""
                raise RowError(f"{self.column(target.lang)}:{where} {result.reason}")
            assert isinstance(result, Completion)
            answer = result.text.strip()
            if result.finish_reason == "length":
                flags.add("truncated")
            if not visible(answer):  # keep the source piece: a hole in a document would go unseen
                flags.add("empty")
                outputs.append(restore(part.text, part.spans).text)
                continue
            restored = restore(answer, part.spans)
            if restored.missing or restored.unknown:
                flags.add("protected_span_missing")
            outputs.append(restored.text)
            answered.append(visible(answer))
        assert target.pieces is not None
        glue = "" if locales.base(target.lang) in segment.NO_SPACE_LANGUAGES else " "
        translation = target.pieces.join(outputs, glue=glue).strip()
        return translation, flags | self._guardrails(target, " ".join(answered), detection)

    def _guardrails(self, target: _Target, answer: str, detection: langid.Detection) -> set[str]:
        rules = self.config.guardrails
        flags: set[str] = set()
        if checks.weighted_length(target.source) >= rules.min_chars_to_judge:
            ratio = checks.length_ratio(target.source, answer)
            if ratio is not None and not rules.min_length_ratio <= ratio <= rules.max_length_ratio:
                flags.add("length_ratio")
        base = locales.base(target.lang)  # the detector knows Portuguese, not Brazilian Portuguese
        foreign_source = detection.language is not None and detection.language != base
        if foreign_source and checks.is_copy(target.source, answer):
            flags.add("copied_source")
        if len(answer) >= rules.min_chars_to_judge and self._judge.supports(base):
            judged = self._judge.detect(answer)
            if (
                judged.language is not None
                and judged.language != base
                and judged.confidence >= rules.wrong_language_min_confidence
            ):
                flags.add("wrong_language")
        return flags
