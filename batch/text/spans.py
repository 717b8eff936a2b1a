"""Protected spans: parts of a text that must reach the translation unchanged.

Before prompting, every protected span is replaced by a numbered placeholder (`⟦1⟧`,
`⟦2⟧`, ... in order of appearance); after generation the placeholders are put back. A
placeholder the model dropped or mangled is counted as missing, so the caller can flag the
row instead of publishing a translation that silently lost a URL.

Kinds, in priority order (an earlier kind wins where two overlap):
    placeholder  text that already looks like a placeholder (`⟦3⟧`), so it cannot be confused
    masked       a personal-data placeholder (`[EMAIL_1]`, batch/text/privacy.py): it must come
                 back unchanged so the original can be restored, or published as it is
    code         fenced ```...``` blocks and inline `...` code
    url          http(s):// and www. addresses (trailing punctuation left outside)
    mention      @user, @user@instance.social
    email        user@example.com
    term         glossary terms: do-not-translate terms keep their surface form, fixed terms
                 become their fixed translation (case-insensitive match, whole words)
    hashtag      #tag
    emoji        a run of emoji, with modifiers, ZWJ sequences, keycaps and flags
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

PLACEHOLDER_RE = re.compile(r"⟦\s*(\d+)\s*⟧")  # lenient: `⟦ 1 ⟧` still counts
# What batch/text/privacy.py puts where it masked personal data: `[EMAIL_1]`, `[PHONE_2]`
MASKED_RE = re.compile(r"\[([A-Z][A-Z0-9_]*)_(\d+)\]")


def placeholder(number: int) -> str:
    return f"⟦{number}⟧"


@dataclass(frozen=True)
class Term:
    """A glossary entry: `translation` None means do not translate (keep the text as found)."""

    source: str
    translation: str | None = None


@dataclass(frozen=True)
class Span:
    kind: str
    source: str  # the text as it appears in the source
    output: str  # what the translation must contain in its place


@dataclass(frozen=True)
class Masked:
    """A text with its protected spans replaced: placeholder ⟦i⟧ stands for spans[i-1]."""

    text: str
    spans: tuple[Span, ...]


@dataclass(frozen=True)
class Restored:
    text: str
    missing: int  # placeholders of the source absent from the output (dropped or mangled)
    unknown: int  # placeholders in the output that the source never had


# --- patterns ----------------------------------------------------------------------------

_EMOJI_CHAR = (
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff\u2190-\u21ff\u2934\u2935"
    "\u3030\u303d\u3297\u3299\u00a9\u00ae\u203c\u2049\u2122\u2139\u24c2\u25aa-\u25fe]"
)
_EMOJI_MODIFIER = "[\ufe0e\ufe0f\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f\u20e3]"
_EMOJI_ELEMENT = f"(?:[#*0-9]\ufe0f?\u20e3|{_EMOJI_CHAR}{_EMOJI_MODIFIER}*)"

_PATTERNS: tuple[tuple[str, re.Pattern[str] | None], ...] = (
    ("placeholder", re.compile(r"⟦[^⟦⟧\n]{0,20}⟧")),
    ("masked", MASKED_RE),
    ("code", re.compile(r"```[\s\S]*?```|`[^`\n]+`")),
    ("url", re.compile(r"(?<![\w@])(?:https?://|www\.)[^\s<>\"'`]+", re.IGNORECASE)),
    ("mention", re.compile(r"(?<![\w@])@\w+(?:@[\w-]+(?:\.[\w-]+)+)?")),
    ("email", re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("term", None),  # built per call from the glossary
    ("hashtag", re.compile(r"(?<![\w#&])#\w+")),
    ("emoji", re.compile(f"{_EMOJI_ELEMENT}(?:\u200d?{_EMOJI_ELEMENT})*")),
)


def detector(kind: str) -> re.Pattern[str]:
    """The detector of one kind of span; batch/text/privacy.py masks e-mails, URLs and
    handles with these same ones, so each kind is detected in one place."""
    found = dict(_PATTERNS)[kind]
    assert found is not None, kind
    return found


# Scripts written without spaces: a glossary term there cannot require word boundaries.
_NO_SPACE_SCRIPT = re.compile("[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]")
_URL_TRAILING = ".,;:!?'\"”’»"


def _term_regex(terms: Sequence[Term]) -> re.Pattern[str] | None:
    parts = []
    for term in sorted(terms, key=lambda t: len(t.source), reverse=True):  # longest first
        words = term.source.split()
        if not words:
            continue
        body = r"\s+".join(re.escape(word) for word in words)
        first, last = words[0][0], words[-1][-1]
        if (first.isalnum() or first == "_") and not _NO_SPACE_SCRIPT.match(first):
            body = r"(?<!\w)" + body
        if (last.isalnum() or last == "_") and not _NO_SPACE_SCRIPT.match(last):
            body += r"(?!\w)"
        parts.append(body)
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def url_end(text: str, start: int, end: int) -> int:
    """Leave sentence punctuation and an unbalanced closing bracket outside the URL."""
    while end > start:
        last = text[end - 1]
        if last in _URL_TRAILING:
            end -= 1
        elif last == ")" and text.count("(", start, end) < text.count(")", start, end):
            end -= 1
        else:
            break
    return end


def find_spans(text: str, terms: Sequence[Term] = ()) -> list[tuple[int, int, str]]:
    """(start, end, kind) of every protected span, non-overlapping, in text order."""
    taken: list[tuple[int, int, str]] = []
    term_regex = _term_regex(terms)
    for kind, pattern in _PATTERNS:
        pattern = term_regex if kind == "term" else pattern
        if pattern is None:
            continue
        for match in pattern.finditer(text):
            start, end = match.span()
            if kind == "url":
                end = url_end(text, start, end)
            if end <= start or any(start < e and s < end for s, e, _ in taken):
                continue
            taken.append((start, end, kind))
    return sorted(taken)


def protect(text: str, terms: Sequence[Term] = ()) -> Masked:
    """Replace every protected span of `text` by a placeholder."""
    fixed = {" ".join(term.source.split()).casefold(): term.translation for term in terms}
    pieces: list[str] = []
    spans: list[Span] = []
    cursor = 0
    for start, end, kind in find_spans(text, terms):
        source = text[start:end]
        output = source
        if kind == "term":
            translation = fixed.get(" ".join(source.split()).casefold())
            if translation is not None:
                output = _match_case(source, translation)
        spans.append(Span(kind, source, output))
        pieces += [text[cursor:start], placeholder(len(spans))]
        cursor = end
    pieces.append(text[cursor:])
    return Masked("".join(pieces), tuple(spans))


def _match_case(source: str, translation: str) -> str:
    if source[:1].isupper() and translation[:1].islower():
        return translation[:1].upper() + translation[1:]
    return translation


def localize(text: str, spans: Sequence[Span]) -> Masked:
    """A piece of a masked text, renumbered from ⟦1⟧ so identical pieces make identical
    requests wherever they occur. `spans` are the spans of the whole text."""
    local: dict[int, int] = {}
    chosen: list[Span] = []

    def renumber(match: re.Match[str]) -> str:
        number = int(match.group(1))
        if number not in local:
            chosen.append(spans[number - 1])
            local[number] = len(chosen)
        return placeholder(local[number])

    return Masked(PLACEHOLDER_RE.sub(renumber, text), tuple(chosen))


def restore(translated: str, spans: Sequence[Span]) -> Restored:
    """Put the spans back into a model's output. A span whose placeholder is gone but whose
    text the model copied verbatim counts as present."""
    seen: set[int] = set()
    unknown = 0

    def put_back(match: re.Match[str]) -> str:
        nonlocal unknown
        number = int(match.group(1))
        if 1 <= number <= len(spans):
            seen.add(number)
            return spans[number - 1].output
        unknown += 1
        return match.group(0)

    text = PLACEHOLDER_RE.sub(put_back, translated)
    missing = sum(
        1 for number, span in enumerate(spans, 1) if number not in seen and span.output not in translated
    )
    return Restored(text, missing, unknown)


def visible(text: str) -> str:
    """The text a reader would judge: placeholders removed, whitespace collapsed."""
    return " ".join(PLACEHOLDER_RE.sub(" ", text).split())


def has_letters(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


def terms_from(do_not_translate: Iterable[str], fixed: dict[str, str] | None = None) -> list[Term]:
    terms = [Term(term) for term in do_not_translate]
    terms += [Term(source, translation) for source, translation in (fixed or {}).items()]
    return terms
