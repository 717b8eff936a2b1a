"""Measures the translation guardrails use. Pure functions of the visible text (spans and
placeholders already removed)."""

from __future__ import annotations

import difflib

COPY_SIMILARITY = 0.9  # a translation this close to its source (after normalizing) is a copy


def weighted_length(text: str) -> float:
    """Length in Latin-character equivalents: a Han character or kana carries about three
    Latin characters of meaning, a Hangul syllable about two and a half, so a length ratio
    between two scripts stays near 1 for a faithful translation (on the sample corpus,
    English references over sources: 0.7-2.0 weighted, against 0.8-4.9 raw for zh/ja/ko)."""
    total = 0.0
    for ch in text:
        code = ord(ch)
        if 0x3040 <= code <= 0x30FF or 0x3400 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF:
            total += 3.0
        elif 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF:
            total += 2.5
        elif not ch.isspace():
            total += 1.0
    return total


def length_ratio(source: str, translation: str) -> float | None:
    """Weighted length of the translation over the source's; None when the source is empty."""
    base = weighted_length(source)
    return weighted_length(translation) / base if base else None


def _normalized(text: str) -> str:
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def is_copy(source: str, translation: str, max_chars: int = 2000) -> bool:
    """The translation repeats the source: equal once case, spaces and punctuation are
    ignored, or at least COPY_SIMILARITY similar (compared on the first max_chars)."""
    a, b = _normalized(source)[:max_chars], _normalized(translation)[:max_chars]
    if not a or not b:
        return False
    if a == b:
        return True
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return all(ratio() >= COPY_SIMILARITY for ratio in (matcher.real_quick_ratio, matcher.quick_ratio, matcher.ratio))
