"""Translation into one or more target languages, one output column per target
(`translation_fr`, `translation_de`, ...). A row fans out into one request per target; the
stage joins the answers back onto the row."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field, field_validator

from batch.tasks.base import Completion, Failure, Generate, Plan, Result, RowError, Skip, Task, TaskConfig

LANGUAGE_NAMES = {
    "ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "fr": "French", "hi": "Hindi",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese",
    "ru": "Russian", "sv": "Swedish", "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
}  # fmt: skip

INSTRUCTION = (
    "Translate the user's text into {language}. Keep URLs, @mentions, #hashtags, emoji, code and "
    "e-mail addresses exactly as they are. Answer with the translation only."
)


class TranslationConfig(TaskConfig):
    target_languages: list[str] = Field(min_length=1, description="ISO 639-1 codes, one output column each")
    max_output_tokens: int = Field(default=512, gt=0, description="ceiling of the per-row output budget")
    output_tokens_per_char: float = Field(
        default=0.75, gt=0, description="output budget per source character, so long rows get room and short rows stay cheap"
    )

    @field_validator("target_languages")
    @classmethod
    def _codes(cls, codes: list[str]) -> list[str]:
        for code in codes:
            if not code.isalpha() or not code.islower() or len(code) not in (2, 3):
                raise ValueError(f"{code!r} is not an ISO 639 code like 'fr' or 'de'")
        if len(set(codes)) != len(codes):
            raise ValueError("target_languages lists a language twice")
        return codes


class TranslationTask(Task):
    name = "translation"
    Config = TranslationConfig

    config: TranslationConfig

    def columns(self) -> list[pa.Field]:
        return [pa.field(self.column(lang), pa.string()) for lang in self.config.target_languages]

    @staticmethod
    def column(lang: str) -> str:
        return f"translation_{lang}"

    def prepare(self, text: str) -> Plan | Skip:
        if not text.strip():
            return Skip("empty text")
        budget = min(self.config.max_output_tokens, 16 + int(len(text) * self.config.output_tokens_per_char))
        requests = [
            Generate(
                messages=(("system", INSTRUCTION.format(language=LANGUAGE_NAMES.get(lang, lang))), ("user", text)),
                max_tokens=budget,
            )
            for lang in self.config.target_languages
        ]
        return Plan(requests)

    def parse(self, text: str, plan: Plan, results: list[Result]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for lang, result in zip(self.config.target_languages, results):
            if isinstance(result, Failure):
                raise RowError(f"{self.column(lang)}: {result.reason}")
            assert isinstance(result, Completion)
            translated = result.text.strip()
            if not translated:
                raise RowError(f"{self.column(lang)}: the model returned an empty translation")
            values[self.column(lang)] = translated
        return values
