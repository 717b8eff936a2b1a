"""Personal data (batch/text/privacy.py): each detector on real-looking values and their
near misses, the job file's `privacy:` section, and the whole job through its command line:
no planted value reaches an engine (its own request log), the published columns when
redacting, or the caches; hashed ids are stable across runs under one key, and the prepare
stage hashes them differently under another."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.config import ConfigError, validate_job
from batch.demo.corpus import sample_posts
from batch.prepare import PrepareStage, TextStageSpec
from batch.tasks.sentiment import SentimentConfig
from batch.text.privacy import Masker, PrivacyConfig, PrivacyError, iban_checksum_ok, keyed_hash, luhn_ok, publish
from batch.text.spans import PLACEHOLDER_RE, find_spans
from conftest import cli_ok, run_cli, write_corpus, write_job

MASK_ALL = Masker(PrivacyConfig())


def masked_values(text: str, masker: Masker = MASK_ALL) -> list[tuple[str, str]]:
    """(kind, original) of every value masked in `text`."""
    return [(kind, text[start:end]) for start, end, kind in masker.find(text)]


# --- detectors: real-looking positives ---------------------------------------------------


@pytest.mark.parametrize(
    "text, kind, value",
    [
        ("write to sam.taylor@example.co.uk please", "email", "sam.taylor@example.co.uk"),
        ("thanks @TelvoHelp!", "handle", "@TelvoHelp"),
        ("follow @ana@mastodon.example for updates", "handle", "@ana@mastodon.example"),
        ("Call +44 20 7946 0958 now", "phone", "+44 20 7946 0958"),
        ("text me at (212) 555-0147.", "phone", "(212) 555-0147"),
        ("Berlin: +49 30 2345 6789", "phone", "+49 30 2345 6789"),
        ("折り返しは090-1234-5678まで", "phone", "090-1234-5678"),
        ("客服电话 +86 138 0013 8000 打不通", "phone", "+86 138 0013 8000"),
        ("mon numéro est le 06 12 34 56 78.", "phone", "06 12 34 56 78"),
        ("IBAN ES91 2100 0418 4502 0005 1332.", "iban", "ES91 2100 0418 4502 0005 1332"),
        ("IBAN: GB82WEST12345698765432", "iban", "GB82WEST12345698765432"),
        ("card 4111 1111 1111 1111 expired", "card", "4111 1111 1111 1111"),
        ("card 5500-0000-0000-0004", "card", "5500-0000-0000-0004"),
        ("router at 192.168.1.24, help", "ip", "192.168.1.24"),
        ("host 2001:db8::8a2e:370:7334 is down", "ip", "2001:db8::8a2e:370:7334"),
        ("see https://telvo.example/help?ticket=58213&user=dani.r.", "url", "https://telvo.example/help?ticket=58213&user=dani.r"),
    ],
)  # fmt: skip
def test_each_detector_finds_real_looking_values(text, kind, value):
    assert masked_values(text) == [(kind, value)]


@pytest.mark.parametrize(
    "text",
    [
        "IBAN ES91 2100 0418 4502 0005 1333 (one digit off: bad checksum)",
        "IBAN DE89 3704 0044 0532 0130 01",  # bad checksum; its digits are not a card either
        "card 4111 1111 1111 1112 fails Luhn",
        "after the 9.0.2 update, version 2.4.1.0, v1.2.3.4, build 10.0.1.5",  # versions, not IPs
        "999.1.1.1 is not an address",
        "on 2026-11-14 at 20:45, or 14/11/2026, or 16h45",  # dates and times, not phones
        "order nº 88213, order #BR-20931, 12345678 pieces, $1,099, 1,299.00 €",
        "the page https://pixelo.example/9 and www.brewly.example/menu",  # links without a query
        "ratio 10:30:00 and a lone :: here",
    ],
)
def test_near_misses_are_not_masked(text):
    assert masked_values(text) == []


def test_checksums():
    assert iban_checksum_ok("GB82WEST12345698765432") and not iban_checksum_ok("GB82WEST12345698765433")
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


def test_placeholders_are_typed_numbered_per_kind_and_stable_within_a_text():
    text = "Mail jane@example.com or @jane, jane@example.com again, call +44 20 7946 0958 or bob@example.org"
    masked = MASK_ALL.mask(text)
    assert masked.text == "Mail [EMAIL_1] or [HANDLE_1], [EMAIL_1] again, call [PHONE_1] or [EMAIL_2]"
    assert masked.restore(masked.text) == text
    # a placeholder the text already shows literally is never reused, so restoring leaves it alone
    literal = MASK_ALL.mask("[EMAIL_1] means jane@example.com")
    assert literal.text == "[EMAIL_1] means [EMAIL_2]"
    assert literal.restore(literal.text) == "[EMAIL_1] means jane@example.com"


def test_only_the_kinds_asked_for_and_named_custom_regexes_first():
    masker = Masker(PrivacyConfig(mask=["email"], custom={"ticket": r"\bTK-\d{5}\b"}))
    masked = masker.mask("ticket TK-58213 from jane@example.com, call +44 20 7946 0958")
    assert masked.text == "ticket [TICKET_1] from [EMAIL_1], call +44 20 7946 0958"
    assert Masker(PrivacyConfig(mask=[])).mask("jane@example.com").values == ()


def test_publish_restores_originals_in_string_columns_unless_redacting():
    masked = MASK_ALL.mask("call +44 20 7946 0958")
    values = {"translation_fr": "appelez [PHONE_1]", "sentiment": "neutral", "translation_fr_flags": []}
    assert publish(values, masked, redact=False)["translation_fr"] == "appelez +44 20 7946 0958"
    assert publish(values, masked, redact=True) == values


def test_keyed_hash_is_stable_per_key_and_differs_across_keys():
    one, other = b"k" * 32, b"q" * 32
    assert keyed_hash(one, "u-1001") == keyed_hash(one, "u-1001") != keyed_hash(other, "u-1001")
    assert keyed_hash(one, 1001) == keyed_hash(one, "1001") and keyed_hash(one, None) is None


def test_translation_protects_the_placeholders_so_they_come_back_unchanged():
    text = MASK_ALL.mask("Merci @TelvoHelp, mon numéro est le 06 12 34 56 78.").text
    assert [text[s:e] for s, e, kind in find_spans(text) if kind == "masked"] == ["[HANDLE_1]", "[PHONE_1]"]


# --- the job file --------------------------------------------------------------------------


def job(privacy: dict | None = None, **input_fields) -> dict:
    definition = {
        "name": "p",
        "input": {"uris": ["in/"], **input_fields},
        "output": {"uri": "out/"},
        "tasks": {"sentiment": {"model": "m"}},
    }
    if privacy is not None:
        definition["privacy"] = privacy
    return definition


def test_a_job_that_says_nothing_masks_every_kind_and_does_not_redact():
    privacy = validate_job(job()).privacy
    assert privacy.mask == ["url", "handle", "email", "iban", "card", "ip", "phone"]
    assert not privacy.redact and privacy.hash_columns == []


@pytest.mark.parametrize(
    "privacy, message",
    [
        ({"mask": ["emails"]}, "privacy.mask.0"),
        ({"custom": {"Ticket": "x"}}, "privacy.custom"),
        ({"custom": {"ticket": "(unclosed"}}, "ticket: not a valid regex"),
        ({"phone_regions": ["UK"]}, "privacy.phone_regions"),
        ({"hash_columns": ["text"]}, "the text column is masked, not hashed"),
        ({"hash_key_env": "s3cr3t-value!"}, "hash_key_env"),
        ({"redcat": True}, "privacy.redcat: unknown key; allowed here: mask, custom"),
        ({"hash_columns": ["user_id"], "hash_key_env": "PRIVACY_TEST_UNSET_KEY"}, "set $PRIVACY_TEST_UNSET_KEY"),
    ],
)
def test_privacy_mistakes_name_the_field(privacy, message, monkeypatch):
    monkeypatch.delenv("PRIVACY_TEST_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_job(job(privacy))


def test_a_short_hash_key_is_refused_before_start(monkeypatch):
    monkeypatch.setenv("PRIVACY_TEST_KEY", "short")
    with pytest.raises(ConfigError, match="under 16 characters"):
        validate_job(job({"hash_columns": ["user_id"], "hash_key_env": "PRIVACY_TEST_KEY"}))
    with pytest.raises(ConfigError, match="'user_id' is not among input.columns"):
        monkeypatch.setenv("PRIVACY_TEST_KEY", "x" * 32)
        validate_job(job({"hash_columns": ["user_id"], "hash_key_env": "PRIVACY_TEST_KEY"}, columns=["lang"]))


# --- the whole job through its command line ------------------------------------------------

# Every personal value planted in the posts the job reads (batch/data/sample_posts.jsonl).
PLANTED = {
    "p0321": ["@SkyNord", "+44 20 7946 0958", "sam.taylor@example.co.uk"],
    "p0322": ["(212) 555-0147", "@swiftbox_help"],
    "p0323": ["jobs.berlin@brewly.example", "+49 30 2345 6789"],
    "p0324": ["090-1234-5678"],
    "p0325": ["+86 138 0013 8000"],
    "p0326": ["@TelvoHelp", "06 12 34 56 78"],
    "p0327": ["ES91 2100 0418 4502 0005 1332", "lucia.m@example.es"],
    "p0328": ["4111 1111 1111 1111", "192.168.1.24", "https://telvo.example/help?ticket=58213&user=dani.r"],
    "p0083": ["noreply@skynord.example"],
    "p0163": ["@Brewly", "help@brewly.example"],
}
PLAIN = ["p0001", "p0003", "p0004", "p0021", "p0132", "p0320"]  # nothing personal in them
KEY, OTHER_KEY = "k3y-for-tests-0123456789abcdef", "another-key-0123456789abcdef"


def squashed(text: str) -> str:
    """Without the separators people vary (`+44 20 7946 0958` vs `+442079460958`)."""
    return re.sub(r"[\s().-]", "", text)


def leaked(text: str) -> list[str]:
    values = [value for values in PLANTED.values() for value in values]
    return [value for value in values if value in text or squashed(value) in squashed(text)]


def expected_request_text(post: dict) -> str:
    """What a translation request of the post must show besides placeholders: the source
    with its personal values and its protected spans (emoji, links, hashtags) taken out,
    and nothing else changed."""
    text = post["text"]
    for value in PLANTED.get(post["post_id"], ()):
        text = text.replace(value, " ")
    for start, end, _ in reversed(find_spans(text)):
        text = text[:start] + " " + text[end:]
    return " ".join(text.split())


def user_text(prompt: str) -> str:
    """The user message of a prompt rendered by the tiny chat model's template, placeholders removed."""
    content = re.search(r"<\|user\|>\n(.*?)</s>", prompt, re.S).group(1)
    return " ".join(PLACEHOLDER_RE.sub(" ", content).split())


def cached_text(cache: Path) -> str:
    """Everything the result caches hold, as text."""
    from batch.cache import stores
    from batch.config import StorageConfig
    from batch.io.storage import Location

    root = Location(str(cache), StorageConfig())
    tables = [store.dataset("entries").to_table() for _, _, store in stores(root)]
    assert tables, f"no cache tables under {cache}"
    return json.dumps([table.to_pylist() for table in tables], default=repr, ensure_ascii=False)


def run_job(tmp_path: Path, name: str, model: str, redact: bool, key: str) -> tuple[list[dict], list[str], str]:
    """One run of the job: (output rows by post, prompts the engine got, stdout + published JSON)."""
    definition = {
        "name": f"privacy-{name}",
        "input": {"uris": [str(tmp_path / "in")], "id_column": "post_id", "text_column": "text"},
        "output": {"uri": str(tmp_path / name)},
        "cache": {"uri": str(tmp_path / "cache")},  # shared by the runs
        "engine": {"batch_size": 16, "max_model_len": 1024},
        "tasks": {
            "sentiment": {"model": model},
            "translation": {"model": model, "target_languages": ["fr"], "max_output_tokens": 12},
        },
        "privacy": {"redact": redact, "hash_columns": ["user_id"], "hash_key_env": "PRIVACY_TEST_HASH_KEY"},
    }
    job_file = write_job(tmp_path / f"{name}.yaml", definition)
    request_log = tmp_path / f"{name}-requests.jsonl"
    env = {"PRIVACY_TEST_HASH_KEY": key, "BATCH_REQUEST_LOG": str(request_log)}
    out = cli_ok(run_cli("run", str(job_file), env=env))
    rows = sorted(pq.read_table(tmp_path / name).to_pylist(), key=lambda row: row["post_id"])
    prompts = [json.loads(line)["prompt"] for line in request_log.read_text().splitlines()] if request_log.exists() else []
    published = out + "".join(path.read_text() for path in (tmp_path / name).glob("_*.json"))
    return rows, prompts, published


@pytest.fixture(scope="module")
def planted_rows(tmp_path_factory) -> tuple[Path, list[dict]]:
    # Only the text column is masked: `reference_en` (the English reference, with the same
    # planted values) is left out, as a job would leave it out with input.columns.
    posts = {post["post_id"]: post for post in sample_posts()}
    rows = [
        {"post_id": post_id, "user_id": f"user-{i:04d}", **{k: posts[post_id][k] for k in ("lang", "text", "gold_sentiment")}}
        for i, post_id in enumerate([*PLANTED, *PLAIN])
    ]
    root = tmp_path_factory.mktemp("privacy")
    write_corpus(None, str(root / "in"), rows, files=2)
    return root, rows


def test_no_planted_personal_datum_reaches_an_engine_the_redacted_output_or_the_caches(planted_rows, models):
    root, rows = planted_rows
    by_id = {row["post_id"]: row for row in rows}
    model = str(models["chat"])

    out, prompts, published = run_job(root, "redacted", model, redact=True, key=KEY)

    # the engine's own log: every prompt of both tasks, none with a planted value
    assert len(prompts) >= len(rows) and not [p for p in prompts if leaked(p)]
    # masking changes nothing else: each translation request shows the source's text minus
    # its personal values and protected spans (the echo check)
    requested = {user_text(p) for p in prompts if "Translate the user's text into French" in p}
    for post in rows:
        if post["lang"] != "fr":
            assert expected_request_text(post) in requested, post["post_id"]

    # published: placeholders in the text and translation columns, hashed user ids
    assert len(out) == len(rows) and all(row["error"] is None for row in out)
    assert not leaked(json.dumps(out, ensure_ascii=False)) and not leaked(published)
    p0321 = next(row for row in out if row["post_id"] == "p0321")
    assert p0321["text"] == (
        "Still no refund from [HANDLE_1] after 3 weeks. Call me back on [PHONE_1] or write to [EMAIL_1], "
        "I've given up on the chat."
    )
    assert [row["user_id"] for row in out] == [keyed_hash(KEY.encode(), by_id[row["post_id"]]["user_id"]) for row in out]
    assert KEY not in published and not any(KEY in path.read_text() for path in root.glob("*.yaml"))

    # the caches (answers and finished rows) hold nothing personal
    assert not leaked(cached_text(root / "cache"))

    # Not redacting: same cache, so every row's columns come from it (no engine request),
    # with the originals put back; same key, same hashes.
    out_plain, prompts_plain, _ = run_job(root, "plain", model, redact=False, key=KEY)
    assert prompts_plain == []
    assert [row["text"] for row in out_plain] == [by_id[row["post_id"]]["text"] for row in out_plain]
    assert [row["user_id"] for row in out_plain] == [row["user_id"] for row in out]
    p0326 = next(row for row in out_plain if row["post_id"] == "p0326")  # French: copied to the French column
    assert p0326["translation_fr_flags"] == ["same_language"] and p0326["translation_fr"] == by_id["p0326"]["text"]
    assert not leaked(cached_text(root / "cache"))


def hashed_by_the_prepare_stage(table: pa.Table, key: str, monkeypatch) -> list[str]:
    """The prepare stage (the one place ids are hashed) on one batch, in this process: it
    reads the key from its own environment, as its actors do."""
    monkeypatch.setenv("PRIVACY_TEST_HASH_KEY", key)
    privacy = PrivacyConfig(hash_columns=["user_id"], hash_key_env="PRIVACY_TEST_HASH_KEY")
    spec = TextStageSpec(tasks=(("sentiment", SentimentConfig(model="unused")),), text_column="text", privacy=privacy)
    return PrepareStage(spec)(table).column("user_id").to_pylist()


def test_another_key_gives_other_hashes_and_a_missing_column_stops_the_stage(monkeypatch):
    table = pa.table({"user_id": ["user-0001", "user-0002", None], "text": ["a", "b", "c"]})
    one, again = (hashed_by_the_prepare_stage(table, KEY, monkeypatch) for _ in range(2))
    other = hashed_by_the_prepare_stage(table, OTHER_KEY, monkeypatch)
    assert one == again == [keyed_hash(KEY.encode(), "user-0001"), keyed_hash(KEY.encode(), "user-0002"), None]
    assert other[:2] != one[:2] and other[2] is None
    assert not set(one + other) & {"user-0001", "user-0002"}
    with pytest.raises(PrivacyError, match="no column 'user_id'"):
        hashed_by_the_prepare_stage(table.drop_columns(["user_id"]), KEY, monkeypatch)


def test_hashing_without_its_key_or_its_column_stops_before_start(planted_rows, models, tmp_path, monkeypatch):
    root, _ = planted_rows
    monkeypatch.delenv("PRIVACY_TEST_HASH_KEY", raising=False)
    definition = {
        "name": "no-key", "input": {"uris": [str(root / "in")], "id_column": "post_id"}, "output": {"uri": str(tmp_path / "o")},
        "tasks": {"sentiment": {"model": str(models["chat"])}},  # identified before the inputs are read
        "privacy": {"hash_columns": ["user_id"], "hash_key_env": "PRIVACY_TEST_HASH_KEY"},
    }  # fmt: skip
    result = run_cli("run", str(write_job(tmp_path / "job.yaml", definition)))
    assert result.returncode == 3 and "set $PRIVACY_TEST_HASH_KEY" in result.stderr  # invalid: no retry helps
    assert not (tmp_path / "o").exists()

    # with its key, a hash column no input file has (a misspelt id column) is caught too
    definition["privacy"]["hash_columns"] = ["userid"]
    job_file = write_job(tmp_path / "job.yaml", definition)
    env = {"PRIVACY_TEST_HASH_KEY": KEY}
    for command in ("validate", "run"):
        result = run_cli(command, str(job_file), env=env)
        assert result.returncode == 3 and "privacy.hash_columns: no column 'userid' in any input file" in result.stderr
    assert not list((tmp_path / "o").rglob("*.parquet"))  # validate may probe that it can write there
