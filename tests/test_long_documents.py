"""Long documents in every script, budgeted in the serving model's own tokens, without an
engine: the demo model's real tokenizer (byte-level, ~3 tokens per CJK character, <=1 per
Latin one) counts every prompt exactly as the engine does (batch/infer/engine.py), so a
request that fits here fits there. The engine run is in test_long_documents_job.py."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
import regex
from pydantic import ValidationError

from batch import schema
from batch.demo.documents import SENTENCES, long_document, long_post
from batch.tasks.base import Completion, Generate, Plan, RowError, Score, Scores, Skip
from batch.tasks.sentiment import SentimentConfig, SentimentTask
from batch.tasks.translation import FALLBACK_ADAPTER, TranslationConfig, TranslationTask
from batch.text import segment
from batch.text.spans import PLACEHOLDER_RE, protect
from batch.text.tokens import TokenCounter

LANGS = sorted(SENTENCES)  # ar, hi, ja, th, zh
# the detector chooses among a few languages: all 75 would load ~1 GB of lingua models
DETECTION = {"languages": ["ar", "en", "es", "fr", "hi", "ja", "pt", "sr", "th", "zh"]}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from batch.demo.models import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def translation(counter: TokenCounter | None, **overrides) -> TranslationTask:
    fields = dict(model="m", target_languages=["en"], max_output_tokens=128, language_detection=DETECTION) | overrides
    task = TranslationTask(TranslationConfig(**fields))
    if counter is not None:
        task.bind_tokens(counter)
    return task


def echo(request: Generate) -> Completion:
    """A model that answers its piece back unchanged: joining its answers must give the
    source back, which shows order, separators and placeholders survive the round trip."""
    return Completion(text=request.messages[-1][1], finish_reason="stop", prompt_tokens=0, output_tokens=0)


def assert_within_budget(counter: TokenCounter, requests) -> None:
    for request in requests:
        assert counter.prompt(request.messages) + request.max_tokens <= counter.max_model_len


def test_documents_are_long_and_have_many_paragraphs():
    for lang in LANGS:
        for chars in (13_000, 40_000):
            text = long_document(lang, chars)
            assert chars <= len(text) <= chars + 1000
            assert text.count("\n\n") + 1 > 100, lang


@pytest.mark.parametrize("max_model_len", [512, 1024])
@pytest.mark.parametrize("lang", LANGS)
def test_every_piece_fits_and_the_echo_gives_the_document_back(tokenizer, lang, max_model_len):
    counter = TokenCounter(tokenizer, max_model_len)
    text = long_document(lang, 40_000 if max_model_len == 1024 else 13_000, seed=max_model_len)
    # targets whose script joins pieces the way the source does (no space after 。 in CJK)
    targets = {"zh": ["ja", "th"], "ja": ["zh-Hant", "th"], "th": ["zh-Hant", "ja"]}.get(lang, ["en", "pt-BR"])
    task = translation(counter, target_languages=targets)
    plan = task.prepare(text)
    assert isinstance(plan, Plan) and len(plan.requests) > 20
    assert_within_budget(counter, plan.requests)
    row = task.parse(text, plan, [echo(r) for r in plan.requests])
    for column in map(task.column, targets):
        assert row[column] == text.strip()  # every piece, in order, with its separators
        assert "hard_cut" not in row[f"{column}_flags"]  # paragraphs and sentences were enough


def test_split_by_tokens_is_exact_on_grapheme_and_placeholder_boundaries(tokenizer):
    counter = TokenCounter(tokenizer, 512)
    for lang in LANGS:
        text = long_document(lang, 13_000) + " ⟦1⟧ ⟦22⟧"
        pieces = segment.split_by(text, counter.count, 150, counter.head)
        assert_exact_on_boundaries(pieces, text)
        for piece in pieces.pieces:
            assert counter.count(piece) <= 150 + 2  # packing sums token counts; `fit` has the last word


def assert_exact_on_boundaries(pieces: segment.Pieces, text: str) -> None:
    """Joining gives the text back, and no cut splits a grapheme cluster or a placeholder."""
    assert pieces.join(pieces.pieces, glue="") == text
    bounds = {0, len(text)} | {m.end() for m in regex.finditer(r"\X", text)}
    offset = len(pieces.separators[0])
    for piece, after in zip(pieces.pieces, pieces.separators[1:]):
        assert len(PLACEHOLDER_RE.findall(piece)) == piece.count("⟦")
        assert offset in bounds and offset + len(piece) in bounds
        offset += len(piece) + len(after)


@pytest.mark.parametrize("text", [
    "ดูข้อมูลเพิ่มเติมได้ที่ศูนย์บริการประชาชนของเทศบาลเมือง" * 60,  # Thai without a single space
    "市政府今天宣布了新的公共交通计划预计明年春季开始实施" * 60,  # Chinese without punctuation
    "नमस्ते🙋🏽‍♀️क्षत्रिय" * 150,  # conjuncts and a ZWJ emoji sequence, no boundary at all
])  # fmt: skip
def test_a_run_longer_than_the_context_is_cut_at_tokens_and_flagged_never_failed(tokenizer, text):
    counter = TokenCounter(tokenizer, 512)
    task = translation(counter)
    plan = task.prepare(text)
    assert_within_budget(counter, plan.requests)
    row = task.parse(text, plan, [echo(r) for r in plan.requests])
    assert "hard_cut" in row["translation_en_flags"]
    assert len(plan.state.targets[0].pieces.pieces) > 1
    assert_exact_on_boundaries(plan.state.targets[0].pieces, protect(text).text)  # emoji are placeholders here


# --- sentiment for any length --------------------------------------------------------------


def sentiment(counter: TokenCounter, **overrides) -> SentimentTask:
    task = SentimentTask(SentimentConfig(model="m", **overrides))
    task.bind_tokens(counter)
    return task


def scored(request: Score) -> Scores:
    """Deterministic made-up log-probabilities per chunk."""
    h = sum(map(ord, request.messages[-1][1][:50]))
    return Scores(logprobs=tuple(-((h + i * 7) % 5) - 0.1 for i in range(len(request.continuations))), prompt_tokens=1)


def score_fits(counter: TokenCounter, request: Score) -> bool:
    longest = max(counter.count(c) for c in request.continuations) + 1  # + end of sequence
    return counter.prompt(request.messages) + longest < counter.max_model_len


def test_a_100k_character_post_gets_a_label_from_its_chunks(tokenizer):
    counter = TokenCounter(tokenizer, 1024)
    text = long_post(100_000)
    assert len(text) >= 100_000
    task = sentiment(counter)
    plan = task.prepare(text)
    assert len(plan.requests) > 50 and all(score_fits(counter, r) for r in plan.requests)
    assert "".join(r.messages[-1][1] for r in plan.requests).count("\n\n") < text.count("\n\n")  # chunks, in order
    row = task.parse(text, plan, [scored(r) for r in plan.requests])
    assert row["sentiment_long_text"] == "chunk"
    assert sum(row["sentiment_probs"].values()) == pytest.approx(1.0)
    assert row["sentiment"] == max(row["sentiment_probs"], key=row["sentiment_probs"].get)
    # the mean is weighted by each chunk's tokens
    chunks = [task._probabilities([scored(r)]) for r in plan.requests]
    weights = plan.state.weights
    expected = sum(w * p["positive"] for w, p in zip(weights, chunks)) / sum(weights)
    assert row["sentiment_probs"]["positive"] == pytest.approx(expected)


@pytest.mark.parametrize("keep", ["head", "head_and_tail"])
def test_truncate_keeps_what_fits_and_says_so(tokenizer, keep):
    counter = TokenCounter(tokenizer, 512)
    text = long_post(100_000)
    task = sentiment(counter, long_text="truncate", truncate_keep=keep)
    (request,) = task.prepare(text).requests
    assert score_fits(counter, request)
    kept = request.messages[-1][1].removeprefix("<post>\n").removesuffix("\n</post>")
    assert kept.startswith(text[:20])
    assert kept.endswith(text[-5:]) == (keep == "head_and_tail")
    assert not regex.match(r"\p{M}", kept.split("\n…\n")[-1])  # never cut inside a grapheme cluster
    row = task.parse(text, Plan([request], task.prepare(text).state), [scored(request)])
    assert row["sentiment_long_text"] == "truncate"


def test_long_text_error_and_short_texts_unchanged(tokenizer):
    counter = TokenCounter(tokenizer, 512)
    with pytest.raises(RowError, match="does not fit max_model_len 512; set tasks.sentiment.long_text"):
        sentiment(counter, long_text="error").prepare(long_post(5_000))
    plan = sentiment(counter).prepare("Great coffee today!")
    assert len(plan.requests) == 1
    assert sentiment(counter).parse("", plan, [scored(plan.requests[0])])["sentiment_long_text"] is None


def test_classifier_chunks_fit_with_special_tokens(tokenizer):
    counter = TokenCounter(tokenizer, 256)
    task = sentiment(counter, mode="classify")
    plan = task.prepare(long_post(20_000))
    assert len(plan.requests) > 10
    assert all(counter.with_special_tokens(r.text) <= 256 for r in plan.requests)


# --- locales and per-target instructions ------------------------------------------------------


def test_locale_targets_columns_prompt_and_instructions():
    config = TranslationConfig(
        model="m",
        target_languages=["pt-br", "zh_hant", "es-419", "sr-Latn", "fr"],
        instructions={"pt-BR": "informal, second person (você)", "fr": "formal (vous)"},
        language_detection=DETECTION,
    )
    assert config.target_languages == ["pt-BR", "zh-Hant", "es-419", "sr-Latn", "fr"]
    task = TranslationTask(config)
    names = [field.name for field in task.columns()]
    assert {"translation_pt_br", "translation_zh_hant", "translation_es_419", "translation_sr_latn"} <= set(names)
    assert "translation_pt_br_flags" in names
    plan = task.prepare("The train to the airport was cancelled again this morning, so I took a taxi.")
    systems = {r.messages[0][1] for r in plan.requests}
    for phrase in ("Brazilian Portuguese", "Traditional Chinese", "Latin American Spanish", "Serbian in Latin script"):
        assert any(phrase in s for s in systems), phrase
    assert any("Style: informal, second person (você)" in s for s in systems)
    assert any(s.startswith("Translate the user's text into French.") and "formal (vous)" in s for s in systems)


def test_instructions_change_the_cache_identity(tmp_path):
    from batch.config import validate_job
    from batch.identity import resolve_run

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")

    def identity(**extra):
        job = validate_job({
            "name": "locales", "input": {"uris": ["in/"]}, "output": {"uri": "out/"},
            "tasks": {"translation": {"model": str(model), "target_languages": ["pt-BR"], **extra}},
        })  # fmt: skip
        return resolve_run(job).row_cache("translation")

    assert identity() != identity(instructions={"pt-BR": "informal"})
    assert identity(instructions={"pt-BR": "informal"}) != identity(instructions={"pt-BR": "formal"})


def test_bad_locale_tags_name_the_problem():
    with pytest.raises(ValidationError, match="'portuguese' is not a language code or BCP-47 tag"):
        TranslationConfig(model="m", target_languages=["portuguese"])
    with pytest.raises(ValidationError, match="lists a language twice"):
        TranslationConfig(model="m", target_languages=["pt-BR", "pt-br"])
    with pytest.raises(ValidationError, match=r"instructions has \['de'\]"):
        TranslationConfig(model="m", target_languages=["fr"], instructions={"de": "formal"})


def test_guardrail_judges_the_base_language():
    task = TranslationTask(TranslationConfig(model="m", target_languages=["pt-BR"], language_detection=DETECTION))
    text = "The train to the airport was cancelled again this morning, so I had to take a taxi."
    plan = task.prepare(text)
    answer = "O trem para o aeroporto foi cancelado de novo hoje de manhã, então tive que pegar um táxi."
    row = task.parse(text, plan, [Completion(answer, "stop", 1, 1)])
    assert row["translation_pt_br"] == answer and "wrong_language" not in row["translation_pt_br_flags"]
    row = task.parse(text, plan, [Completion("Le train pour l'aéroport a encore été annulé ce matin.", "stop", 1, 1)])
    assert "wrong_language" in row["translation_pt_br_flags"]
    portuguese = "O comboio para o aeroporto foi cancelado outra vez esta manhã, por isso tive de apanhar um táxi."
    assert "same_language" in task.parse(portuguese, task.prepare(portuguese), [])["translation_pt_br_flags"]


# --- model coverage ---------------------------------------------------------------------------------

THAI = "เทศบาลประกาศแผนการขนส่งสาธารณะใหม่ในวันนี้ ซึ่งจะเริ่มใช้ในฤดูใบไม้ผลิปีหน้า"
CHINESE = "市政府今天宣布了新的公共交通计划，预计明年春季开始实施。"


def test_targets_must_be_covered_and_fallback_needs_coverage():
    with pytest.raises(ValidationError, match=r"target_languages \['ja'\] are not among source_languages"):
        TranslationConfig(model="m", target_languages=["en", "ja"], source_languages=["en", "zh"])
    with pytest.raises(ValidationError, match="set source_languages too"):
        TranslationConfig(model="m", target_languages=["en"], fallback={"adapter": "/a"})
    TranslationConfig(model="m", target_languages=["pt-BR"], source_languages=["pt", "en"])  # base language covered


def test_uncovered_source_goes_to_the_fallback_adapter():
    task = translation(None, source_languages=["en", "zh"], fallback={"adapter": "/adapters/wide"})
    assert task.adapters()[FALLBACK_ADAPTER] == "/adapters/wide"
    thai, chinese = task.prepare(THAI), task.prepare(CHINESE)
    assert {r.adapter for r in thai.requests} == {FALLBACK_ADAPTER}
    assert {r.adapter for r in chinese.requests} == {None}
    row = task.parse(THAI, thai, [Completion("The city announced a new transit plan today.", "stop", 1, 1)])
    assert "fallback" in row["translation_en_flags"]


def test_uncovered_source_without_fallback_is_flagged_or_skipped_and_counted():
    flagged = translation(None, source_languages=["en", "zh"])
    plan = flagged.prepare(THAI)
    row = flagged.parse(THAI, plan, [Completion("The city announced a new plan.", "stop", 1, 1)])
    assert "unsupported_language" in row["translation_en_flags"]
    skipped = translation(None, source_languages=["en", "zh"], unsupported_language="skip").prepare(THAI)
    assert isinstance(skipped, Skip) and skipped.reason == "unsupported_language (th)"
    batch = pa.table({
        "source_lang": ["th", "th", "zh"], "translation_en_flags": [["unsupported_language"], ["unsupported_language"], []],
        "translation_fr_flags": [["unsupported_language"], [], []],
        schema.ERROR: pa.nulls(3, pa.string()), schema.SKIP_REASON: pa.nulls(3, pa.string()),
    })  # fmt: skip
    assert schema.outcome_counts(batch)["flagged: unsupported_language (th)"] == 2  # rows, not columns


def test_the_token_counter_loads_a_tokenizer_json_without_torch(tmp_path):
    """The prepare actor counts tokens while the engine beside it starts: loading the model's
    tokenizer.json must not import torch (seconds of CPU), and must count as AutoTokenizer does."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from batch.demo.models import build_causal_lm
    from batch.text.tokens import load_counter

    model = build_causal_lm(tmp_path / "chat")
    script = ("import sys; from batch.text.tokens import load_counter; "
              f"c = load_counter({str(model)!r}, None); print(c.max_model_len, 'torch' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False", "loading the token counter imported torch"
    counter, auto = load_counter(str(model), None), AutoTokenizer.from_pretrained(model)
    assert int(out[0]) == counter.max_model_len
    chat = [{"role": "system", "content": "x"}, {"role": "user", "content": SENTENCES["th"][0] * 20}]
    for text in [*(sentences[0] for sentences in SENTENCES.values()), auto.apply_chat_template(chat, tokenize=False)]:
        assert counter.count(text) == len(auto(text, add_special_tokens=False)["input_ids"])
