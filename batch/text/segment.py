"""Split a long text into pieces that fit a budget, and join them back.

The budget is counted by a cost function: characters (`split`) or the serving model's own
tokens (`split_by` with `batch.text.tokens.TokenCounter.count`). A character is one token
in some scripts and three in others, so only the model's tokenizer can say what fits.

Boundaries are tried from the most natural to the least: paragraphs (a blank line), lines,
sentences (the sentence punctuation of every script: . ! ? … ; and ؟ ۔ । ॥ after a space,
。！？；។៕။። with or without one), clauses (, : ، ، and 、，： which need no space), words
(whitespace: this is also where Thai, which puts spaces between phrases, is cut), and only
for a single unit longer than the budget a hard cut: at the budget's token (or character),
moved back to a grapheme-cluster boundary (a base letter and its marks, a Devanagari
conjunct, an emoji sequence stay whole) and never inside a placeholder such as ⟦3⟧.
Adjacent units are packed greedily back together while they fit, so a text under the
budget stays one piece and a long one becomes as few pieces as the budget allows.

Exact by construction: `separators[0] + pieces[0] + separators[1] + ... + pieces[-1] +
separators[-1] == text`; joining translated pieces keeps the original separators.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import regex

from batch.text.spans import PLACEHOLDER_RE

_LEVELS = (
    re.compile(r"(\s*\n\s*\n\s*)"),  # paragraphs
    re.compile(r"(\s*\n\s*)"),  # lines
    re.compile(  # sentences
        r"((?:(?<=[.!?…;؟۔।॥؛])|(?<=[.!?…][\"'”’»)\]]))\s+|(?<=[。！？；។៕။።])\s*|(?<=[。！？][」』”）])\s*)"
    ),
    re.compile(r"((?<=[,:،、，：])\s+|(?<=[、，：])(?=\S))"),  # clauses
    re.compile(r"(\s+)"),  # words
)

# Targets written without spaces between words: pieces cut with no separator join with none.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my"})

Cost = Callable[[str], int]
Cut = Callable[[str, int], int]  # (text, budget) -> character offset where the budget ends


@dataclass(frozen=True)
class Pieces:
    pieces: tuple[str, ...]
    separators: tuple[str, ...]  # one more than pieces: before the first, between, after the last
    hard_cuts: int = 0  # pieces cut inside a sentence-less run (no boundary left to use)

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
    """Pieces of at most `max_chars` characters."""
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    return split_by(text, len, max_chars)


def split_by(text: str, cost: Cost, limit: int, cut: Cut | None = None) -> Pieces:
    """Pieces whose cost is at most `limit` (units packed by summing their costs, which
    tokenizers make nearly exact; `fit` below verifies). `cut` finds a hard cut's offset
    (default: `limit` characters)."""
    if limit < 1:
        raise ValueError("the budget must be positive")
    body = text.strip()
    if not body:
        return Pieces((), (text,))
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(lead) + len(body) :]
    splitter = _Splitter(lru_cache(maxsize=4096)(cost), limit, cut or (lambda _text, n: n))
    items = splitter.split(body, 0)
    return Pieces(tuple(items[0::2]), (lead, *items[1::2], trail), splitter.hard_cuts)


def fit(pieces: Pieces, fits: Callable[[str], bool], resplit: Callable[[str, int], Pieces], limit: int) -> Pieces:
    """Pieces that all pass `fits` (the exact check: the whole prompt of the piece plus its
    output budget): a piece that does not is split again under a smaller budget."""
    out, seps, hard = [], [pieces.separators[0]], pieces.hard_cuts
    for piece, after in zip(pieces.pieces, pieces.separators[1:]):
        if fits(piece) or limit <= 1:
            out.append(piece)
            seps.append(after)
            continue
        sub = fit(resplit(piece, max(1, limit * 9 // 10)), fits, resplit, max(1, limit * 9 // 10))
        seps[-1] += sub.separators[0]
        out.extend(sub.pieces)
        seps.extend(sub.separators[1:-1])
        seps.append(sub.separators[-1] + after)
        hard += sub.hard_cuts
    return Pieces(tuple(out), tuple(seps), hard)


class _Splitter:
    def __init__(self, cost: Cost, limit: int, cut: Cut):
        self.cost, self.limit, self.cut = cost, limit, cut
        self.hard_cuts = 0

    def within(self, text: str) -> bool:
        """cost(text) <= limit; a long text's prefix often answers that alone (the cost of
        a prefix is at most the cost of the whole), and costs far less to count."""
        prefix = 4 * self.limit
        if len(text) > prefix and self.cost(text[:prefix]) > self.limit:
            return False
        return self.cost(text) <= self.limit

    def split(self, text: str, level: int) -> list[str]:
        """Alternating [unit, separator, unit, ..., unit], every unit within the budget."""
        if self.within(text):
            return [text]
        if level == len(_LEVELS):
            return self._hard_cut(text)
        parts = _clean(_LEVELS[level].split(text))
        if len(parts) == 1:
            return self.split(text, level + 1)
        items: list[str] = []
        for i, part in enumerate(parts):
            items.extend(self.split(part, level + 1) if i % 2 == 0 else [part])
        return self._pack(items)

    def _pack(self, items: list[str]) -> list[str]:
        out, total = [items[0]], self.cost(items[0])
        for sep, unit in zip(items[1::2], items[2::2]):
            more = (self.cost(sep) if sep else 0) + self.cost(unit)
            if total + more <= self.limit:
                out[-1] += sep + unit
                total += more
            else:
                out += [sep, unit]
                total = self.cost(unit)
        return out

    def _hard_cut(self, text: str) -> list[str]:
        """Cut a unit with no boundary left at the budget, on a grapheme boundary outside
        any placeholder; each cut piece is checked with the cost function."""
        bounds = _safe_boundaries(text)
        items: list[str] = []
        start = 0
        while not self.within(text[start:]):
            rest = text[start:]
            end = start + max(1, min(len(rest) - 1, self.cut(rest, self.limit)))
            end = max((b for b in bounds if start < b <= end), default=None) or min(
                (b for b in bounds if b > start), default=len(text)
            )
            while self.cost(text[start:end]) > self.limit and (smaller := [b for b in bounds if start < b < end]):
                end = smaller[-1]
            if end >= len(text):
                break
            items += [text[start:end], ""]
            self.hard_cuts += 1
            start = end
        items.append(text[start:])
        return items


def grapheme_floor(text: str, offset: int) -> int:
    """The last grapheme-cluster boundary at or before `offset`."""
    return max((b for b in _safe_boundaries(text[: offset + 16]) if b <= offset), default=0)


def grapheme_ceil(text: str, offset: int) -> int:
    """The first grapheme-cluster boundary at or after `offset`."""
    start = max(0, offset - 16)
    return min((start + b for b in [0, *_safe_boundaries(text[start:])] if start + b >= offset), default=len(text))


def _safe_boundaries(text: str) -> list[int]:
    """Offsets where a cut splits no grapheme cluster and no placeholder."""
    atoms = [m.span() for m in PLACEHOLDER_RE.finditer(text)]
    bounds = [m.end() for m in regex.finditer(r"\X", text)]
    return [b for b in bounds if not any(a < b < z for a, z in atoms)]


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
