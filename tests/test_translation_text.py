"""Translation on real-corpus cases, without an engine: language identification on real
sentences, protected spans, splitting and reassembly of long documents, guardrail flags.
The model is simulated: parse() is fed hand-made Completion results, the way the stage
would after deduplicating requests."""

from __future__ import annotations

import random
import re
from typing import Callable

import pytest
from pydantic import ValidationError

from batch.demo.corpus import sample_posts
from batch.tasks.base import Completion, Failure, Generate, Plan, RowError, Skip
from batch.tasks.translation import FLAGS, TranslationConfig, TranslationTask
from batch.text import checks, langid, segment
from batch.text.spans import PLACEHOLDER_RE, Term, find_spans, localize, protect, restore, visible

GLOSSARY = {"do_not_translate": ["SkyNord", "Pixelo 9"], "fixed": {"fr": {"boarding pass": "carte d'embarquement"}}}


def task(targets=("fr",), **overrides) -> TranslationTask:
    fields = dict(model="m", target_languages=list(targets), glossary=GLOSSARY) | overrides
    return TranslationTask(TranslationConfig(**fields))


def run(t: TranslationTask, texts: list[str], answer: Callable[[Generate], Completion | Failure]) -> list[dict]:
    """What the stage does for one batch: prepare every row, answer each distinct request
    once, parse every row; a RowError becomes {"error": ...}."""
    plans = [t.prepare(text) for text in texts]
    unique = {request: None for plan in plans if isinstance(plan, Plan) for request in plan.requests}
    answers = {request: answer(request) for request in unique}
    rows = []
    for text, plan in zip(texts, plans):
        if isinstance(plan, Skip):
            rows.append({"skip": plan.reason, **plan.values})
            continue
        try:
            rows.append(t.parse(text, plan, [answers[request] for request in plan.requests]))
        except RowError as exc:
            rows.append({"error": str(exc)})
    return rows


def done(text: str, finish_reason: str = "stop") -> Completion:
    return Completion(text=text, finish_reason=finish_reason, prompt_tokens=10, output_tokens=10)


def piece(request: Generate) -> str:
    return request.messages[-1][1]


def target_of(request: Generate) -> str:
    return request.messages[0][1].split(" into ")[1].split(".")[0]


# --- language identification on real sentences ------------------------------------------

SENTENCES = {
    "en": "The train to the airport was cancelled again this morning, so I had to take a taxi.",
    "fr": "Le train pour l'aéroport a encore été annulé ce matin, alors j'ai dû prendre un taxi.",
    "de": "Der Zug zum Flughafen ist heute Morgen schon wieder ausgefallen, also musste ich ein Taxi nehmen.",
    "es": "El tren al aeropuerto volvió a cancelarse esta mañana, así que tuve que tomar un taxi.",
    "it": "Il treno per l'aeroporto è stato cancellato di nuovo stamattina, quindi ho dovuto prendere un taxi.",
    "pt": "O comboio para o aeroporto foi cancelado outra vez esta manhã, por isso tive de apanhar um táxi.",
    "nl": "De trein naar het vliegveld is vanochtend weer geschrapt, dus ik moest een taxi nemen.",
    "tr": "Havalimanına giden tren bu sabah yine iptal edildi, bu yüzden taksiye binmek zorunda kaldım.",
    "pl": "Pociąg na lotnisko znowu został dziś rano odwołany, więc musiałem wziąć taksówkę.",
    "ru": "Поезд в аэропорт сегодня утром снова отменили, поэтому мне пришлось ехать на такси.",
    "uk": "Потяг до аеропорту сьогодні вранці знову скасували, тому мені довелося їхати таксі.",
    "ar": "تم إلغاء القطار المتجه إلى المطار مرة أخرى هذا الصباح، لذلك اضطررت إلى ركوب سيارة أجرة.",
    "hi": "हवाई अड्डे जाने वाली ट्रेन आज सुबह फिर से रद्द हो गई, इसलिए मुझे टैक्सी लेनी पड़ी।",
    "zh": "今天早上去机场的火车又被取消了，所以我只好打了一辆出租车。",
    "ja": "今朝も空港行きの電車が運休になったので、タクシーに乗るしかありませんでした。",
    "ko": "오늘 아침에도 공항으로 가는 기차가 또 취소되어서 택시를 탈 수밖에 없었어요.",
}


@pytest.fixture(scope="module")
def identifier() -> langid.LanguageIdentifier:
    return langid.LanguageIdentifier()  # all languages, as the task's default


@pytest.mark.parametrize("language", sorted(SENTENCES))
def test_language_of_real_sentences(identifier, language):
    detection = identifier.detect(SENTENCES[language])
    assert detection.language == language
    assert detection.confidence is not None and detection.confidence > 0.5


@pytest.mark.parametrize("text", ["🔥🔥🔥", "😡😡😡✈️", "", "   ", "12:45 — 3-2 !!!"])
def test_nothing_to_detect(identifier, text):
    assert identifier.detect(text) == langid.Detection(None, None)


def test_restricted_detector_includes_targets_and_rejects_unknown_codes():
    t = task(targets=("fr", "de"), language_detection={"languages": ["en", "es"]})  # noqa
    assert t._langid.languages == ("de", "en", "es", "fr")
    with pytest.raises(ValidationError, match="lingua cannot detect"):
        task(language_detection={"languages": ["en", "xx"]})


def test_source_lang_ignores_protected_spans_and_names():
    t = task(targets=("de",), glossary={"do_not_translate": ["SkyNord"]})
    (row,) = run(t, ["@SkyNord merci pour le vol, équipage adorable 🙏 https://skynord.example/merci #SkyNord"], lambda r: done(piece(r)))
    assert row["source_lang"] == "fr" and row["source_lang_confidence"] > 0.5


# --- protected spans ------------------------------------------------------------------------

SPAN_CASES = [
    ("url", "see https://pixelo.example/9?ref=a_(b). now", "https://pixelo.example/9?ref=a_(b)"),
    ("url", "(more at www.skynord.example/help)", "www.skynord.example/help"),
    ("email", "write to help.desk+eu@telvo.example, thanks", "help.desk+eu@telvo.example"),
    ("mention", "thanks @Brewly_UK!", "@Brewly_UK"),
    ("mention", "cc @ana@mastodon.social please", "@ana@mastodon.social"),
    ("hashtag", "what a night #NORBRI #東京2026", "#NORBRI"),
    ("hashtag", "what a night #NORBRI #東京2026", "#東京2026"),
    ("emoji", "so good 👍🏽 really", "👍🏽"),
    ("emoji", "family 👨‍👩‍👧 trip", "👨‍👩‍👧"),
    ("emoji", "Allez 🇫🇷🇫🇷 !", "🇫🇷🇫🇷"),
    ("emoji", "step 1️⃣ then ❤️", "1️⃣"),
    ("emoji", "step 1️⃣ then ❤️", "❤️"),
    ("code", "run `pip install x` first", "`pip install x`"),
    ("code", "look:\n```\nfor x in y:\n    print(x)\n```\ndone", "```\nfor x in y:\n    print(x)\n```"),
    ("term", "my Pixelo 9 is hot", "Pixelo 9"),
    ("term", "SkyNord's app crashed", "SkyNord"),
    ("placeholder", "literal ⟦1⟧ in the source", "⟦1⟧"),
]


@pytest.mark.parametrize("kind,text,span", SPAN_CASES)
def test_every_kind_of_span_is_found(kind, text, span):
    found = [(text[s:e], k) for s, e, k in find_spans(text, [Term("SkyNord"), Term("Pixelo 9")])]
    assert (span, kind) in found


def test_spans_not_taken_where_they_are_not():
    text = "C# is fine, a@ b, SkyNordic is another airline, 3 # 4, and pixelo 90 is not a phone"
    found = [text[s:e] for s, e, _ in find_spans(text, [Term("SkyNord"), Term("Pixelo 9")])]
    assert found == []


def test_glossary_terms_match_whole_words_case_insensitively_and_in_cjk():
    masked = protect("skynord lost my BOARDING PASS", [Term("SkyNord"), Term("boarding pass", "carte d'embarquement")])
    assert masked.text == "⟦1⟧ lost my ⟦2⟧"
    assert [s.output for s in masked.spans] == ["skynord", "Carte d'embarquement"]  # surface kept; case follows
    masked = protect("昨日スカイノルドで飛んだ", [Term("スカイノルド")])
    assert masked.text == "昨日⟦1⟧で飛んだ"


def test_protect_then_restore_is_exact():
    text = "RT @mia: ⟦2⟧ `x = 1` https://a.example/b, mail a@b.example #tag 🎉🎉 Pixelo 9 ok."
    masked = protect(text, [Term("Pixelo 9")])
    assert [s.kind for s in masked.spans] == ["mention", "placeholder", "code", "url", "email", "hashtag", "emoji", "term"]
    assert not any(s.source in masked.text for s in masked.spans if s.kind != "placeholder")
    assert restore(masked.text, masked.spans).text == text


def test_restore_counts_missing_and_unknown_placeholders():
    masked = protect("go https://a.example now @bob", [])
    assert masked.text == "go ⟦1⟧ now ⟦2⟧"
    ok = restore("allez ⟦ 1 ⟧ maintenant ⟦2⟧", masked.spans)  # lenient spacing
    assert (ok.text, ok.missing, ok.unknown) == ("allez https://a.example maintenant @bob", 0, 0)
    dropped = restore("allez maintenant ⟦2⟧ ⟦7⟧", masked.spans)
    assert (dropped.missing, dropped.unknown) == (1, 1)
    copied = restore("allez https://a.example maintenant ⟦2⟧", masked.spans)  # model copied the span itself
    assert copied.missing == 0


def test_localize_renumbers_a_piece_from_one():
    masked = protect("a @x b @y c @z", [])
    part = localize("b ⟦2⟧ c ⟦3⟧ ⟦2⟧", masked.spans)
    assert part.text == "b ⟦1⟧ c ⟦2⟧ ⟦1⟧"
    assert [s.source for s in part.spans] == ["@y", "@z"]


# --- segmentation ---------------------------------------------------------------------------


def _random_text(rnd: random.Random) -> str:
    words = ["word", "longerword", "x", "⟦1⟧", "⟦12⟧", "日本語の文です。", "end.", "why?", "wow!", "(aside)", "“quoted.”"]
    seps = [" ", " ", " ", "  ", "\n", "\n\n", " \n \n ", "\t"]
    out = [rnd.choice(["", " ", "\n"])]
    for _ in range(rnd.randint(1, 120)):
        out += [rnd.choice(words), rnd.choice(seps)]
    return "".join(out)


@pytest.mark.parametrize("seed", range(40))
def test_split_is_exact_and_within_budget(seed):
    rnd = random.Random(seed)
    text = _random_text(rnd)
    budget = rnd.choice([8, 15, 40, 100, 1000])
    pieces = segment.split(text, budget)
    assert pieces.join(pieces.pieces, glue="") == text
    assert len(pieces.separators) == len(pieces.pieces) + 1
    for p in pieces.pieces:
        assert p and p == p.strip() and len(p) <= budget
        assert len(PLACEHOLDER_RE.findall(p)) == p.count("⟦")  # no placeholder cut in half


def test_split_prefers_paragraphs_then_sentences():
    paragraphs = ["First paragraph. It is short.", "Second one, also short.", "Third paragraph here."]
    text = "\n\n".join(paragraphs)
    assert segment.split(text, 1000).pieces == (text,)  # under budget: one piece
    assert segment.split(text, 60).pieces == (paragraphs[0] + "\n\n" + paragraphs[1], paragraphs[2])
    assert segment.split(text, 30).pieces == tuple(paragraphs)
    assert segment.split(paragraphs[0], 20).pieces == ("First paragraph.", "It is short.")
    assert segment.split("一文目です。二文目です。", 7).pieces == ("一文目です。", "二文目です。")


def test_split_blank_text_has_no_pieces():
    assert segment.split(" \n ", 10) == segment.Pieces((), (" \n ",))


# --- the task: a corpus with every case ------------------------------------------------------

LONG_PARAGRAPHS = [
    " ".join(f"Paragraph {p} sentence {s} tells more of the story about the delayed flight." for s in range(1, 6))
    for p in range(1, 5)
]
LONG_DOCUMENT = "\n\n".join(LONG_PARAGRAPHS)  # ~1500 characters, budget 300

CORPUS = {
    "french": "Merci Brewly pour le café offert après l'attente ce matin, geste très apprécié ☕",
    "english_spans": (
        "Lost my boarding pass on @SkyNord again 😡 Details: https://skynord.example/case?id=42 or mail "
        "care@skynord.example. My Pixelo 9 said `ERR_SYNC` #lostluggage"
    ),
    "emoji_only": "🔥🔥🔥",
    "url_only": "https://pixelo.example/9",
    "german": "Munchly-Bestellung nach 70 Minuten storniert. Hunger und schlechte Laune.",
    "long": LONG_DOCUMENT,
    "blank": "  \n ",
}


def echo_model(request: Generate) -> Completion:
    """A 'model' that answers its piece back, placeholders kept, marked by target: enough to
    check every span comes back, and in the right place."""
    return done(f"[{target_of(request)}] {piece(request)}")


def test_no_row_lost_and_every_row_has_its_outcome():
    t = task(targets=("fr", "de"), max_source_chars_per_request=300)
    rows = run(t, list(CORPUS.values()), echo_model)
    assert len(rows) == len(CORPUS)
    by_name = dict(zip(CORPUS, rows))
    assert by_name["blank"] == {"skip": "empty text"}
    for name, row in by_name.items():
        if name == "blank":
            continue
        assert "error" not in row
        for lang in ("fr", "de"):
            assert row[f"translation_{lang}"], (name, lang)
            assert set(row[f"translation_{lang}_flags"]) <= set(FLAGS)


def test_same_language_rows_are_copied_only_for_the_matching_target():
    t = task(targets=("fr", "de"))
    text = CORPUS["french"]
    plan = t.prepare(text)
    assert {target_of(r) for r in plan.requests} == {"German"}  # nothing sent for French
    (row,) = run(t, [text], echo_model)
    assert row["source_lang"] == "fr"
    assert row["translation_fr"] == text and row["translation_fr_flags"] == ["same_language"]
    assert row["translation_de"] == "[German] " + text  # German was translated (echoed)
    assert "same_language" not in row["translation_de_flags"]

    only_fr = task(targets=("fr",))
    plan = only_fr.prepare(text)
    assert isinstance(plan, Plan) and plan.requests == []  # no request, and no skip reason either


@pytest.mark.parametrize("name", ["emoji_only", "url_only"])
def test_text_without_language_is_copied_through(name):
    t = task(targets=("fr", "de"))
    plan = t.prepare(CORPUS[name])
    assert plan.requests == []
    (row,) = run(t, [CORPUS[name]], echo_model)
    assert row["source_lang"] is None and row["source_lang_confidence"] is None
    for lang in ("fr", "de"):
        assert row[f"translation_{lang}"] == CORPUS[name]
        assert row[f"translation_{lang}_flags"] == ["nothing_to_translate"]


def test_every_span_survives_a_model_round_trip():
    text = CORPUS["english_spans"]
    t = task(targets=("fr", "de"))
    plan = t.prepare(text)
    for request in plan.requests:
        sent = piece(request)
        for raw in ("@SkyNord", "https://", "care@", "Pixelo 9", "`ERR_SYNC`", "#lostluggage", "😡"):
            assert raw not in sent  # the model never sees them
    (row,) = run(t, [text], echo_model)
    for lang in ("fr", "de"):
        out = row[f"translation_{lang}"]
        for raw in ("@SkyNord", "https://skynord.example/case?id=42", "care@skynord.example", "Pixelo 9",
                    "`ERR_SYNC`", "#lostluggage", "😡"):  # fmt: skip
            assert out.count(raw) == 1, (lang, raw, out)
        assert "⟦" not in out
        assert "protected_span_missing" not in row[f"translation_{lang}_flags"]
    assert "carte d'embarquement" in row["translation_fr"] and "boarding pass" not in row["translation_fr"]
    assert "boarding pass" in row["translation_de"]  # no fixed German translation: translated as text


def test_a_dropped_or_mangled_placeholder_flags_the_row():
    text = CORPUS["english_spans"]
    t = task()
    dropping = lambda r: done(re.sub(r"⟦2⟧", "", piece(r)))  # noqa: E731
    mangling = lambda r: done(re.sub(r"⟦3⟧", "[[3]]", piece(r)))  # noqa: E731
    for model in (dropping, mangling):
        (row,) = run(t, [text], model)
        assert "error" not in row
        assert "protected_span_missing" in row["translation_fr_flags"]
        assert row["translation_fr"]


def test_long_document_is_split_translated_and_reassembled_in_order():
    t = task(targets=("fr",), max_source_chars_per_request=300, max_output_tokens=400)
    plan = t.prepare(LONG_DOCUMENT)
    assert len(plan.requests) >= len(LONG_DOCUMENT) // 300
    assert all(len(piece(r)) <= 300 for r in plan.requests)
    budgets = [r.max_tokens for r in plan.requests]
    assert all(b == min(400, 16 + int(len(piece(r)) * 0.75)) for b, r in zip(budgets, plan.requests))

    pieces_seen = []

    def model(request):
        pieces_seen.append(piece(request))
        return done(piece(request).upper())  # 'translation' = upper case, so order is checkable

    (row,) = run(t, [LONG_DOCUMENT], model)
    assert row["translation_fr"] == LONG_DOCUMENT.upper()  # every piece, in order, separators kept
    assert row["translation_fr"].count("\n\n") == 3
    assert "".join(pieces_seen).replace(" ", "") == LONG_DOCUMENT.replace("\n", "").replace(" ", "")


def test_output_budget_follows_piece_length_and_is_capped():
    t = task(max_output_tokens=64)
    short, long_ = t.prepare("Short text to translate."), t.prepare(LONG_PARAGRAPHS[0])
    assert short.requests[0].max_tokens == 16 + int(len("Short text to translate.") * 0.75)
    assert long_.requests[0].max_tokens == 64


def test_truncated_and_empty_answers_are_flags_not_errors():
    t = task(targets=("fr",), max_source_chars_per_request=300)
    (row,) = run(t, [LONG_DOCUMENT], lambda r: done(piece(r), finish_reason="length"))
    assert "truncated" in row["translation_fr_flags"] and "error" not in row
    calls = []

    def one_empty_piece(request):
        calls.append(request)
        return done("" if len(calls) == 2 else piece(request))

    (row,) = run(t, [LONG_DOCUMENT], one_empty_piece)
    assert "empty" in row["translation_fr_flags"]
    assert row["translation_fr"] == LONG_DOCUMENT  # the unanswered piece keeps its source, in place
    text = "Hello there @bob, how are you doing today?"
    for blank in ("   ", "⟦1⟧"):  # nothing, or only the placeholders back
        (row,) = run(t, [text], lambda r: done(blank))
        assert row["translation_fr"] == text and "empty" in row["translation_fr_flags"]
        assert "protected_span_missing" not in row["translation_fr_flags"] and "error" not in row


CLEAN_FR = (  # the boarding pass is ⟦1⟧: a fixed glossary term for French
    "J'ai encore perdu ma ⟦1⟧ avec ⟦2⟧ ⟦3⟧ Détails : ⟦4⟧ ou écrivez à ⟦5⟧. Mon ⟦6⟧ affichait ⟦7⟧ ⟦8⟧"
)


def test_guardrails():
    t = task(targets=("fr",))
    text = CORPUS["english_spans"]
    (plan_request,) = t.prepare(text).requests
    assert re.findall(r"⟦\d+⟧", piece(plan_request)) == [f"⟦{i}⟧" for i in range(1, 9)]

    clean = lambda r: done(CLEAN_FR)  # noqa: E731  a faithful French translation
    english = lambda r: done("I lost my boarding pass again, and the airline has still not answered my messages.")  # noqa: E731
    copy = lambda r: done(piece(r))  # noqa: E731
    tiny = lambda r: done("Perdu ⟦1⟧ ⟦2⟧ ⟦3⟧ ⟦4⟧ ⟦5⟧ ⟦6⟧ ⟦7⟧ ⟦8⟧")  # noqa: E731
    bloated = lambda r: done(CLEAN_FR + (" Et puis encore une phrase en français pour rien." * 8))  # noqa: E731

    (row,) = run(t, [text], clean)
    assert row["translation_fr_flags"] == []
    assert row["translation_fr"].startswith("J'ai encore perdu ma carte d'embarquement avec @SkyNord 😡 Détails : https://")
    assert "wrong_language" in run(t, [text], english)[0]["translation_fr_flags"]
    assert "copied_source" in run(t, [text], copy)[0]["translation_fr_flags"]
    assert "length_ratio" in run(t, [text], tiny)[0]["translation_fr_flags"]
    assert "length_ratio" in run(t, [text], bloated)[0]["translation_fr_flags"]

    # too short to judge: no length verdict on a two-word source, no language verdict on a one-word answer
    (row,) = run(t, ["Good morning"], lambda r: done("Bonjour à tous, passez une excellente journée au soleil !"))
    assert row["translation_fr_flags"] == []
    (row,) = run(t, ["Good morning"], lambda r: done("Morning!"))
    assert row["translation_fr_flags"] == []


def test_engine_failure_is_a_row_error_naming_the_column_and_piece():
    t = task(targets=("fr",), max_source_chars_per_request=300)
    (row,) = run(t, [LONG_DOCUMENT], lambda r: Failure("prompt too long"))
    assert row["error"].startswith("translation_fr: piece 1/")
    (row,) = run(t, ["Hello there, how are you?"], lambda r: Failure("prompt too long"))
    assert row["error"] == "translation_fr: prompt too long"


def test_columns_and_config():
    t = task(targets=("fr", "de"))
    names = [f.name for f in t.columns()]
    assert names == ["source_lang", "source_lang_confidence", "translation_fr", "translation_fr_flags",
                     "translation_de", "translation_de_flags"]  # fmt: skip
    with pytest.raises(ValidationError, match="glossary.fixed"):
        task(targets=("de",))  # the glossary has French fixed terms
    with pytest.raises(ValidationError):
        task(glossary={"do_not_translate": ["x"], "unknown": 1})
    with pytest.raises(ValidationError):
        task(guardrails={"min_length_ratio": 3, "max_length_ratio": 2})
    with pytest.raises(ValidationError):
        task(max_source_chars_per_request=5)
    with pytest.raises(ValidationError, match="at least two languages"):
        task(targets=("fil",), glossary={}, language_detection={"languages": ["en"]})


def test_weighted_length_keeps_cross_script_ratios_near_one():
    ratio = checks.length_ratio("今天早上去机场的火车又被取消了。", "The train to the airport was cancelled again this morning.")
    assert 0.8 < ratio < 1.6
    assert checks.is_copy("Hello, World!", "hello world") and not checks.is_copy("Hello world", "Bonjour le monde")


# --- the sample corpus: flags never turn into errors ---------------------------------------------


def test_sample_corpus_rows_never_become_errors_whatever_the_model_says():
    posts = [post["text"] for post in sample_posts()]
    t = task(targets=("fr",), max_output_tokens=12)  # the end-to-end job's settings
    rnd = random.Random(7)
    gibberish = lambda r: done("".join(rnd.choice("xq ,.⟦⟧19") for _ in range(rnd.randint(0, 30))), "length")  # noqa: E731
    rows = run(t, posts, gibberish)
    assert len(rows) == len(posts)
    assert all("error" not in row for row in rows)
    assert all(row["translation_fr"] for row in rows)  # never blank, even where the answer was
    assert any("empty" in row["translation_fr_flags"] for row in rows)


def test_faithful_translations_of_the_sample_corpus_raise_no_problem_flag():
    """English references played back as the model's answers: a clean translation must come
    out clean (no false alarms), whatever the source language and script."""
    posts = list(sample_posts())
    names = {"do_not_translate": GLOSSARY["do_not_translate"]}
    t = task(targets=("en",), glossary=names, max_source_chars_per_request=5000, max_output_tokens=5000)
    reference = {post["text"]: post["reference_en"] for post in posts}
    texts = [post["text"] for post in posts]
    plans = {text: t.prepare(text) for text in texts}
    rows = []
    for text in texts:
        plan = plans[text]
        answers = [done(_with_placeholders(reference[text], r, plan)) for r in plan.requests]
        rows.append(t.parse(text, plan, answers))
    problems = {text: row["translation_en_flags"] for text, row in zip(texts, rows)
                if set(row["translation_en_flags"]) - {"same_language", "nothing_to_translate"}}  # fmt: skip
    assert problems == {}
    detected = sum(row["source_lang"] == post["lang"] for row, post in zip(rows, posts))
    assert detected / len(posts) > 0.95


def _with_placeholders(reference: str, request: Generate, plan: Plan) -> str:
    """Put the request's placeholders into the reference where its spans appear, as a model
    following the prompt would."""
    target = next(tg for tg in plan.state.targets if tg.parts)
    part = next(p for p in target.parts if p.text == piece(request))
    for number, span in enumerate(part.spans, 1):
        reference = reference.replace(span.source, f"⟦{number}⟧", 1)
    return reference


def test_visible_text_drops_placeholders():
    assert visible(" a ⟦1⟧  b\n⟦2⟧ ") == "a b"
