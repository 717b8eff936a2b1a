"""Target locales as BCP-47 tags: a language, optionally a script and a region
(`fr`, `pt-BR`, `zh-Hant`, `es-419`, `sr-Latn`, `zh-Hant-TW`).

What each part of the job needs from a tag:
- `canonical`: one spelling (`pt-br` -> `pt-BR`, `ZH-hant` -> `zh-Hant`), so a tag is one key;
- `column_suffix`: a valid, readable column name part (`pt-BR` -> `pt_br`);
- `base`: the language the detector and the guardrail can judge (`pt-BR` -> `pt`): lingua
  tells Portuguese from Spanish, not Brazilian from European Portuguese;
- `display_name`: what the prompt asks for ("Brazilian Portuguese", "Traditional Chinese").
"""

from __future__ import annotations

import re

LANGUAGE_NAMES = {
    "ar": "Arabic", "bn": "Bengali", "ca": "Catalan", "cs": "Czech", "da": "Danish", "de": "German",
    "el": "Greek", "en": "English", "es": "Spanish", "fa": "Persian", "fi": "Finnish", "fr": "French",
    "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian", "it": "Italian",
    "ja": "Japanese", "km": "Khmer", "ko": "Korean", "ms": "Malay", "nb": "Norwegian Bokmål", "nl": "Dutch",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sr": "Serbian", "sv": "Swedish",
    "sw": "Swahili", "ta": "Tamil", "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian",
    "ur": "Urdu", "vi": "Vietnamese", "zh": "Chinese",
}  # fmt: skip

# Names people use for common locales, where "<language> (<region>)" would read oddly.
LOCALE_NAMES = {
    "pt-BR": "Brazilian Portuguese", "pt-PT": "European Portuguese", "es-419": "Latin American Spanish",
    "es-ES": "European Spanish", "es-MX": "Mexican Spanish", "en-GB": "British English",
    "en-US": "American English", "fr-CA": "Canadian French", "fr-FR": "French (France)",
    "zh-Hans": "Simplified Chinese", "zh-Hant": "Traditional Chinese", "zh-CN": "Simplified Chinese (Mainland China)",
    "zh-TW": "Traditional Chinese (Taiwan)", "zh-HK": "Traditional Chinese (Hong Kong)",
    "sr-Latn": "Serbian in Latin script", "sr-Cyrl": "Serbian in Cyrillic script",
}  # fmt: skip

SCRIPT_NAMES = {"Latn": "Latin", "Cyrl": "Cyrillic", "Arab": "Arabic", "Hans": "Simplified", "Hant": "Traditional"}
REGION_NAMES = {
    "AR": "Argentina", "AT": "Austria", "AU": "Australia", "BE": "Belgium", "BR": "Brazil", "CA": "Canada",
    "CH": "Switzerland", "CN": "Mainland China", "DE": "Germany", "ES": "Spain", "FR": "France",
    "GB": "United Kingdom", "HK": "Hong Kong", "IE": "Ireland", "IN": "India", "MX": "Mexico", "PT": "Portugal",
    "SG": "Singapore", "TW": "Taiwan", "US": "United States", "419": "Latin America",
}  # fmt: skip

_TAG = re.compile(r"^([a-z]{2,3})(?:-([a-z]{4}))?(?:-([a-z]{2}|\d{3}))?$", re.IGNORECASE)


def canonical(tag: str) -> str:
    """`pt-br` -> `pt-BR`, `zh_hant` -> `zh-Hant`; ValueError for anything not language[-Script][-REGION]."""
    match = _TAG.match(tag.strip().replace("_", "-"))
    if not match:
        raise ValueError(
            f"{tag!r} is not a language code or BCP-47 tag like 'fr', 'pt-BR', 'zh-Hant', 'es-419' or 'sr-Latn'"
        )
    language, script, region = match.groups()
    parts = [language.lower()]
    if script:
        parts.append(script.title())
    if region:
        parts.append(region.upper())
    return "-".join(parts)


def base(tag: str) -> str:
    return tag.split("-", 1)[0]


def column_suffix(tag: str) -> str:
    return tag.lower().replace("-", "_")


def display_name(tag: str) -> str:
    if tag in LOCALE_NAMES:
        return LOCALE_NAMES[tag]
    language, *rest = tag.split("-")
    name = LANGUAGE_NAMES.get(language, language)
    details = [
        f"{SCRIPT_NAMES.get(part, part)} script" if len(part) == 4 else REGION_NAMES.get(part, part) for part in rest
    ]
    return f"{name} ({', '.join(details)})" if details else name
