"""Split a long text into pieces of at most `max_chars` characters, and join them back.

Boundaries are tried from the most natural to the least: paragraphs (a blank line), lines,
sentences (., !, ?, …, and 。！？؟। which need no space after them), words, and only for a
single word longer than the budget a hard cut (never inside a placeholder such as ⟦3⟧).
Adjacent units are packed greedily back together while they fit, so a text under the
budget stays one piece and a long one becomes as few pieces as the budget allows.

Exact by construction: `separators[0] + pieces[0] + separators[1] + ... + pieces[-1] +
separators[-1] == text`; joining translated pieces keeps the original separators.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from batch.text.spans import PLACEHOLDER_RE

_LEVELS = (
    re.compile(r"(\s*\n\s*\n\s*)"),  # paragraphs
    re.compile(r"(\s*\n\s*)"),  # lines
    re.compile(r"((?:(?<=[.!?…;؟।])|(?<=[.!?…][\"'”’»)\]]))\s+|(?<=[。！？])\s*)"),  # sentences
    re.compile(r"(\s+)"),  # words
)

# Targets written without spaces between words: pieces cut with no separator join with none.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my"})


@dataclass(frozen=True)
class Pieces:
    pieces: tuple[str, ...]
    separators: tuple[str, ...]  # one more than pieces: before the first, between, after the last

    def join(self, translated: Sequence[str], glue: str = " ") -> str:
        """Translated pieces in order with the original separators; `glue` replaces an empty
        separator (a hard cut or a CJK sentence end) between two pieces."""
        if len(translated) != len(self.pieces):
            raise ValueError(f"{len(translated)} translated pieces for {len(self.pieces)} source pieces")
        out = [self.separators[0]]
        for i, piece in enumerate(translated):
            if i:
                out.append(self.separators[i] or glue)
            out.append(piece)
        out.append(self.separators[-1])
        return "".join(out)


def split(text: str, max_chars: int) -> Pieces:
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    body = text.strip()
    if not body:
        return Pieces((), (text,))
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(lead) + len(body) :]
    items = _split(body, max_chars, 0)
    return Pieces(tuple(items[0::2]), (lead, *items[1::2], trail))


def _split(text: str, max_chars: int, level: int) -> list[str]:
    """Alternating [unit, separator, unit, ..., unit], every unit within the budget."""
    if len(text) <= max_chars:
        return [text]
    if level == len(_LEVELS):
        return _hard_cut(text, max_chars)
    parts = _clean(_LEVELS[level].split(text))
    if len(parts) == 1:
        return _split(text, max_chars, level + 1)
    items: list[str] = []
    for i, part in enumerate(parts):
        items.extend(_split(part, max_chars, level + 1) if i % 2 == 0 else [part])
    return _pack(items, max_chars)


def _clean(parts: list[str]) -> list[str]:
    """Drop empty units (a zero-width sentence boundary at the very end), keeping every
    character: an empty unit's separators merge with their neighbours."""
    out = [parts[0]]
    for sep, unit in zip(parts[1::2], parts[2::2]):
        if unit:
            out += [sep, unit]
        else:
            out[-1] += sep
    if not out[0] and len(out) > 1:  # cannot happen on stripped text; kept exact anyway
        out = [out[1] + out[2], *out[3:]]
    return out


def _pack(items: list[str], max_chars: int) -> list[str]:
    out = [items[0]]
    for sep, unit in zip(items[1::2], items[2::2]):
        if len(out[-1]) + len(sep) + len(unit) <= max_chars:
            out[-1] += sep + unit
        else:
            out += [sep, unit]
    return out


def _hard_cut(text: str, max_chars: int) -> list[str]:
    atoms = [match.span() for match in PLACEHOLDER_RE.finditer(text)]
    items: list[str] = []
    start = 0
    while len(text) - start > max_chars:
        cut = start + max_chars
        for a, b in atoms:
            if a < cut < b:  # never inside a placeholder
                cut = a if a > start else b
                break
        items += [text[start:cut], ""]
        start = cut
    items.append(text[start:])
    return items
