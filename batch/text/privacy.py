"""Personal data: kept out of every engine, and out of the output and the caches on request.

Masking runs in one place, the prepare stage (batch/prepare.py), before any task sees a
row: every task prepares the masked text, so no prompt of any task can carry personal data,
and the result caches are keyed by the masked text and hold what was computed from it.
The parse stage (batch/parse.py) is the one place where placeholders are put back into the
published task columns (`redact: false`) or left in them, the text column masked as well
(`redact: true`).

A detected value becomes a typed, numbered placeholder: `[EMAIL_1]`, `[PHONE_1]`,
`[PHONE_2]`, ... numbered per kind in order of appearance; a value repeated in the text gets
the same placeholder. Kinds, in priority order (an earlier kind wins where two overlap):

    custom   the job's own named regexes, first because the job knows its data best
    url      http(s)/www addresses that carry a query string (`?...`: tokens, e-mails, ids);
             plain links (a brand's page) are kept
    handle   @user, @user@instance.social
    email    user@example.com
    iban     country code, check digits and account, accepted only with the country's
             length and a valid mod-97 checksum (ISO 13616)
    card     13 to 19 digits (spaces or dashes between), accepted only with a valid Luhn sum
    ip       IPv4 and IPv6 addresses that Python's `ipaddress` accepts; four dotted numbers
             right after a word like "version" or "build" are a version, not an address
    phone    numbers of any country, found by Google's libphonenumber (`phonenumbers`)

URLs, handles and e-mails use the detectors of batch/text/spans.py (the translation's
protected spans), so each kind of span is detected in one place.

Phones: `phonenumbers.PhoneNumberMatcher` with leniency VALID, run once per region of
`phone_regions`. A number written with its country code (`+44 20 7946 0958`) is found
whatever the regions; a national format (`030 901820`, `090-1234-5678`, `(212) 555-0142`) is
found when its country is listed. VALID accepts only numbers that the country's numbering
plan allows, which is what keeps dates, times, prices, order numbers and version strings
out (measured: POSSIBLE, the laxer leniency, took `2026-11-14`, `12345678` and `1.2.3.4`
for phone numbers; VALID took none of them).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import phonenumbers
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from batch.text.spans import MASKED_RE, detector, url_end

Kind = Literal["url", "handle", "email", "iban", "card", "ip", "phone"]
KINDS: tuple[str, ...] = Kind.__args__  # priority order after the custom regexes
# Where libphonenumber looks for national formats by default: the markets of the languages
# the sample corpus and the shipped jobs cover. A number with its +country code is found anyway.
DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "BR", "IN", "JP", "CN")
MIN_KEY_CHARS = 16


class PrivacyConfig(BaseModel):
    """`privacy:` in the job file. Saying nothing masks every kind in every prompt and
    publishes the originals in the text and translation columns (see README, Privacy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mask: list[Kind] = Field(
        default=list(KINDS), description="kinds of personal data masked in every prompt; [] for none"
    )
    custom: dict[str, str] = Field(
        default_factory=dict, description="more kinds: name -> regex; placeholder [NAME_1]"
    )
    phone_regions: list[str] = Field(
        default=list(DEFAULT_PHONE_REGIONS),
        description="countries (ISO 3166 alpha-2) whose national phone formats are found",
    )
    redact: bool = Field(default=False, description="publish placeholders in the text and translation columns too")
    hash_columns: list[str] = Field(default_factory=list, description="columns (user ids) replaced by a keyed hash")
    hash_key_env: str = Field(default="BATCH_HASH_KEY", description="environment variable holding the hash key")

    @field_validator("custom")
    @classmethod
    def _custom(cls, custom: dict[str, str]) -> dict[str, str]:
        for name, regex in custom.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in KINDS:
                raise ValueError(f"{name!r}: a name is lowercase letters, digits and _, and not one of {list(KINDS)}")
            try:
                compiled = re.compile(regex)
            except re.error as exc:
                raise ValueError(f"{name}: not a valid regex: {exc}") from None
            if compiled.match(""):
                raise ValueError(f"{name}: the regex matches the empty string")
        return custom

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, regions: list[str]) -> list[str]:
        if unknown := [region for region in regions if region not in phonenumbers.SUPPORTED_REGIONS]:
            raise ValueError(f"{unknown}: not regions libphonenumber knows (ISO 3166 alpha-2 in capitals, e.g. GB)")
        return regions

    @model_validator(mode="after")
    def _hashing(self) -> "PrivacyConfig":
        if len(set(self.hash_columns)) != len(self.hash_columns):
            raise ValueError("hash_columns lists a column twice")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.hash_key_env):
            raise ValueError("hash_key_env is the name of an environment variable, not the key itself")
        return self

    def key_problem(self) -> str | None:
        """Why the hash key cannot be used in this process (None: it can, or none is needed)."""
        if not self.hash_columns:
            return None
        key = os.environ.get(self.hash_key_env)
        if not key:
            return f"privacy.hash_key_env: set ${self.hash_key_env} to a secret key (e.g. `openssl rand -hex 32`)"
        if len(key) < MIN_KEY_CHARS:
            return f"privacy.hash_key_env: ${self.hash_key_env} is under {MIN_KEY_CHARS} characters; use a random key"
        return None


# --- masking -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskedText:
    """A text with its personal data replaced: `values` pairs each placeholder with the
    original it stands for, in order of appearance."""

    text: str
    values: tuple[tuple[str, str], ...]

    def restore(self, text: str) -> str:
        """Put the originals back wherever the placeholders are (a translation keeps them)."""
        originals = dict(self.values)
        return MASKED_RE.sub(lambda match: originals.get(match.group(0), match.group(0)), text)


Found = Iterable[tuple[int, int]]  # (start, end) of each value a detector found


class Masker:
    """The detectors a job asked for, in priority order. Built once per actor."""

    def __init__(self, config: PrivacyConfig):
        builtin: dict[str, Callable[[str], Found]] = {
            "url": _urls_with_query, "handle": _matches(detector("mention")), "email": _matches(detector("email")),
            "iban": _ibans, "card": _cards, "ip": _ips, "phone": _phones(tuple(config.phone_regions)),
        }  # fmt: skip
        self.detectors = [(name, _matches(re.compile(regex))) for name, regex in config.custom.items()]
        self.detectors += [(kind, builtin[kind]) for kind in KINDS if kind in config.mask]

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, kind) of every value to mask, non-overlapping, in text order."""
        taken: list[tuple[int, int, str]] = []
        for kind, detect in self.detectors:
            for start, end in detect(text):
                start, end = _trimmed(text, start, end)
                if end > start and not any(start < e and s < end for s, e, _ in taken):
                    taken.append((start, end, kind))
        return sorted(taken)

    def mask(self, text: str) -> MaskedText:
        placeholders: dict[str, str] = {}  # original -> its placeholder
        counts: dict[str, int] = {}
        pieces: list[str] = []
        cursor = 0
        for start, end, kind in self.find(text):
            original = text[start:end]
            if original not in placeholders:
                placeholders[original] = _new_placeholder(kind, counts, text)
            pieces += [text[cursor:start], placeholders[original]]
            cursor = end
        pieces.append(text[cursor:])
        return MaskedText("".join(pieces), tuple((p, original) for original, p in placeholders.items()))


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """Without surrounding whitespace (libphonenumber's matches can start with a space)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _new_placeholder(kind: str, counts: dict[str, int], text: str) -> str:
    """The next free `[KIND_n]`: a number the text already shows literally is skipped, so
    restoring never touches text that was there before masking."""
    while True:
        counts[kind] = counts.get(kind, 0) + 1
        candidate = f"[{kind.upper()}_{counts[kind]}]"
        if candidate not in text:
            return candidate


def publish(values: dict[str, Any], masked: MaskedText | None, redact: bool) -> dict[str, Any]:
    """A task's columns as published: computed on the masked text, placeholders in string
    values replaced by the originals unless the job redacts."""
    if redact or masked is None or not masked.values:
        return values
    return {name: masked.restore(value) if isinstance(value, str) else value for name, value in values.items()}


# --- detectors ---------------------------------------------------------------------------


def _matches(regex: re.Pattern[str]) -> Callable[[str], Found]:
    return lambda text: (match.span() for match in regex.finditer(text))


def _urls_with_query(text: str) -> Found:
    for match in detector("url").finditer(text):
        start, end = match.start(), url_end(text, *match.span())
        if re.search(r"\?[^#\s]", text[start:end]):
            yield start, end


# Lengths from the IBAN registry (SWIFT, ISO 13616): a checksum alone would also accept a
# prefix or an overlong run of the right remainder.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
_IBAN_CANDIDATE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")


def _ibans(text: str) -> Found:
    for match in _IBAN_CANDIDATE.finditer(text):
        candidate = match.group(0)
        length = IBAN_LENGTHS.get(candidate[:2])
        compact = candidate.replace(" ", "")
        if length is None or len(compact) < length or not iban_checksum_ok(compact[:length]):
            continue
        end = match.start() + _position_of_nth_alnum(candidate, length)
        if not text[end : end + 1].isalnum():  # a longer run is not this IBAN
            yield match.start(), end


def iban_checksum_ok(iban: str) -> bool:
    """ISO 13616: the first four characters moved to the end, letters as 10..35, mod 97 is 1."""
    digits = "".join(str(int(ch, 36)) for ch in iban[4:] + iban[:4])
    return int(digits) % 97 == 1


def _position_of_nth_alnum(text: str, n: int) -> int:
    seen = 0
    for i, ch in enumerate(text):
        seen += ch.isalnum()
        if seen == n:
            return i + 1
    return len(text)


# Issuer ranges start with 2-6 (Mastercard 2/5, Amex 3, Visa 4, Discover 6); groups of
# digits may be separated by single spaces or dashes, as people type them. The digits of an
# IBAN-shaped run (`DE89 3704 ...`) that failed its own checksum are not a card either.
_CARD_CANDIDATE = re.compile(r"(?<![\w+.,-])(?<![A-Z]{2}\d{2} )[2-6](?:[ -]?\d){12,18}(?![\w.,-]?\d)")


def _cards(text: str) -> Found:
    for match in _CARD_CANDIDATE.finditer(text):
        if luhn_ok(re.sub(r"\D", "", match.group(0))):
            yield match.span()


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        value = int(ch) * (2 if i % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


_IPV4_CANDIDATE = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
_IPV6_CANDIDATE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)
_VERSION_BEFORE = re.compile(r"(?i)\b(?:v|ver|version|versión|build|release|firmware|update|os)\.?\s*$")


def _ips(text: str) -> Found:
    for candidates in (_IPV4_CANDIDATE, _IPV6_CANDIDATE):
        for match in candidates.finditer(text):
            start, end = match.span()
            if _VERSION_BEFORE.search(text[max(0, start - 12) : start]):
                continue
            try:
                ipaddress.ip_address(match.group(0))
            except ValueError:
                continue
            if any(ch.isalnum() for ch in match.group(0)):  # `::` alone is punctuation, not an address
                yield start, end


# Six digits or more, with the separators people type between them. Most posts have no such
# run, and the matcher (once per region) is then skipped: masking the sample corpus took
# 2.0 ms a post without this test and 0.5 ms with it (2 busy cores).
_PHONE_HINT = re.compile(r"\d(?:[\s().\-/]{0,3}\d){5,}")


def _phones(regions: tuple[str, ...]) -> Callable[[str], Found]:
    def find(text: str) -> Found:
        if not _PHONE_HINT.search(text):
            return
        for region in regions:
            for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
                yield match.start, match.end

    return find


# --- keyed hashes of id columns ------------------------------------------------------------


def hash_key(config: PrivacyConfig) -> bytes:
    """The key, read from this process's environment: it never travels with the job, the
    way storage credentials do not (see ARCHITECTURE.md)."""
    if problem := config.key_problem():
        raise PrivacyError(problem)
    return os.environ[config.hash_key_env].encode()


def keyed_hash(key: bytes, value: Any) -> str | None:
    """HMAC-SHA256 of the value's text, hex: the same id always gives the same hash under one
    key, and nobody without the key can link a hash back to an id by hashing guesses."""
    if value is None:
        return None
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
    return hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def hash_columns(batch: pa.Table, columns: list[str], key: bytes) -> pa.Table:
    """Each listed column replaced by the keyed hashes of its values (as strings)."""
    for name in columns:
        index = batch.schema.get_field_index(name)
        if index < 0:
            columns_here = ", ".join(batch.column_names)
            raise PrivacyError(f"privacy.hash_columns: no column {name!r} in the input (its columns: {columns_here})")
        hashed = pa.array([keyed_hash(key, value) for value in batch.column(index).to_pylist()], pa.string())
        batch = batch.set_column(index, pa.field(name, pa.string()), hashed)
    return batch


def missing_hash_columns(config: PrivacyConfig, columns: Iterable[str]) -> list[str]:
    present = set(columns)
    return [name for name in config.hash_columns if name not in present]


class PrivacyError(Exception):
    """A privacy setting that cannot be honoured: the run must not go on without it."""
