"""Label tasks: any number of them in one job, each a named `tasks:` entry (sentiment a
preset, topic multi-label, emotion single-label), sharing one engine when they name one
model. The task logic is checked on plain rows; one real run (Ray, vLLM CPU engine) covers
all three tasks at once and counts the engine actors Ray started."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.config import ConfigError, validate_job
from batch.demo.corpus import TOPICS, sample_posts, topic_of
from batch.tasks import build_task
from batch.tasks.base import Classification, Completion, Plan, RowError, Score, Scores
from batch.tasks.label import LabelConfig, LabelTask, _State
from conftest import write_corpus

EMOTIONS = ["anger", "joy", "sadness", "none"]


def label_tasks(model: str, input_uri: str = "in", output_uri: str = "out") -> dict:
    return {
        "name": "labels",
        "input": {"uris": [input_uri], "id_column": "post_id"},
        "output": {"uri": output_uri},
        "engine": {"batch_size": 32, "max_model_len": 1024},
        "tasks": {
            "sentiment": {"model": model},
            "topic": {
                "kind": "label", "model": model, "multi": True, "threshold": 0.5, "labels": list(TOPICS),
                "instruction": "You sort posts by topic ({labels}). Answer the question about the post.",
            },
            "emotion": {
                "kind": "label", "model": model, "labels": EMOTIONS, "min_confidence": 0.3, "low_confidence_label": "none",
                "instruction": "You label the emotion of posts. Answer with one word from: {labels}.",
            },
        },
    }  # fmt: skip


# --- the job file ---------------------------------------------------------------------------


def test_three_label_tasks_by_name_with_the_contracts_columns():
    job = validate_job(label_tasks("m"))
    tasks = {name: build_task(name, config) for name, config in job.enabled_tasks().items()}
    assert list(tasks) == ["sentiment", "topic", "emotion"]
    assert all(isinstance(task, LabelTask) for task in tasks.values())
    assert tasks["sentiment"].config.labels == ["negative", "neutral", "positive"]  # the preset
    columns = {field.name: field.type for task in tasks.values() for field in task.columns()}
    assert columns["topic"] == pa.list_(pa.string())
    assert columns["emotion"] == columns["sentiment"] == pa.string()
    for prefix in ("sentiment", "topic", "emotion"):
        assert columns[f"{prefix}_probs"] == pa.map_(pa.string(), pa.float64())
        assert columns[f"{prefix}_confidence"] == pa.float64()
        assert columns[f"{prefix}_long_text"] == pa.string()
    assert [task.model_column() for task in tasks.values()] == ["sentiment_model", "topic_model", "emotion_model"]
    assert [task.describe() for task in tasks.values()] == [
        {"name": "sentiment", "kind": "label", "column": "sentiment", "labels": ["negative", "neutral", "positive"], "multi": False},
        {"name": "topic", "kind": "label", "column": "topic", "labels": list(TOPICS), "multi": True},
        {"name": "emotion", "kind": "label", "column": "emotion", "labels": EMOTIONS, "multi": False},
    ]  # fmt: skip


def test_an_old_job_file_keeps_its_tasks_and_column_order():
    job = validate_job({
        "name": "old", "input": {"uris": ["in"]}, "output": {"uri": "out"},
        "tasks": {"sentiment": {"model": "m", "labels": ["bad", "good"]},
                  "translation": {"model": "m", "target_languages": ["fr"]}},
    })  # fmt: skip
    assert list(job.enabled_tasks()) == ["translation", "sentiment"]  # as before: translation's columns first
    assert job.tasks.sentiment.labels == ["bad", "good"] and job.tasks.topic is None
    columns = [field.name for name, config in job.enabled_tasks().items() for field in build_task(name, config).columns()]
    assert columns == [
        "source_lang", "source_lang_confidence", "translation_fr", "translation_fr_flags",
        "sentiment", "sentiment_probs", "sentiment_confidence", "sentiment_long_text",
    ]  # fmt: skip


def test_a_column_prefix_and_a_fourth_task_are_job_file_entries_only():
    definition = label_tasks("m")
    definition["tasks"]["urgency"] = {
        "kind": "label", "model": "m", "labels": ["low", "high"], "column": "urgent_level",
        "instruction": "How urgent is this post? Answer with one word from: {labels}.",
    }  # fmt: skip
    task = build_task("urgency", validate_job(definition).tasks["urgency"])
    assert [field.name for field in task.columns()][:2] == ["urgent_level", "urgent_level_probs"]
    assert task.model_column() == "urgency_model"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"topic": {"model": "m", "labels": ["a", "b"], "instruction": "x"}}, "tasks.topic.kind: required; kinds: translation, label"),
        ({"topic": {"kind": "label", "model": "m", "labels": ["a", "b"]}}, "tasks.topic.instruction: required"),
        ({"topic": {"kind": "label", "model": "m", "labels": ["a"], "instruction": "x"}}, "tasks.topic.labels: List should have at least 2"),
        ({"topic": {"kind": "label", "model": "m", "labels": ["a", "b"], "instruction": "x", "treshold": 0.4}},
         "tasks.topic.treshold: unknown key; allowed here: model, adapter, .*threshold"),
        ({"topic": {"kind": "label", "model": "m", "labels": ["a", "b"], "instruction": "x", "threshold": 0.4}},
         "threshold is for multi-label tasks"),
        ({"topic": {"kind": "label", "model": "m", "labels": ["a", "b"], "instruction": "Pick {label}"}},
         r"unknown placeholder \{label\}; the only one is \{labels\}"),
        ({"emotion": {"kind": "label", "model": "m", "labels": ["a", "b"], "instruction": "x", "column": "sentiment"}},
         "tasks.emotion: column 'sentiment' is also written by tasks.sentiment"),
        ({"Topic": {"kind": "label", "model": "m", "labels": ["a", "b"], "instruction": "x"}}, "tasks.Topic: a task name is lower-case"),
        ({"sentiment": {"kind": "translation", "model": "m"}}, "tasks.sentiment.target_languages: required"),
    ],
)  # fmt: skip
def test_label_task_mistakes_name_the_field(change, message):
    definition = label_tasks("m")
    definition["tasks"].update(change)
    with pytest.raises(ConfigError, match=message):
        validate_job(definition)


def test_scored_label_tasks_beside_a_lora_engine_on_cpu_are_refused_whatever_their_name():
    from types import SimpleNamespace

    from batch.pipeline import EngineGroup, _check_scoring_beside_lora

    tasks = validate_job(label_tasks("m")).enabled_tasks()
    group = EngineGroup(SimpleNamespace(model="m", adapters=[("emotion", "lora")]), list(tasks.items()))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="tasks.sentiment: label probabilities"):
        _check_scoring_beside_lora(group, "cpu")
    group.tasks = [("topic", tasks["topic"])]
    with pytest.raises(ConfigError, match="set tasks.topic.probabilities: false"):
        _check_scoring_beside_lora(group, "cpu")
    group.tasks = [("topic", tasks["topic"].model_copy(update={"probabilities": False}))]
    _check_scoring_beside_lora(group, "cpu")  # yes/no decoded under constrained choice: allowed


def test_a_multi_label_classifier_must_say_so_in_its_config(tmp_path):
    from batch.demo.models import build_classifier
    from batch.pipeline import check_models

    def job(model) -> dict:
        definition = label_tasks("m")
        definition["tasks"] = {"topic": {**definition["tasks"]["topic"], "model": str(model), "mode": "classify"}}
        return validate_job(definition)

    with pytest.raises(ConfigError, match="tasks.topic: multi: true in classify mode needs a multi-label classifier"):
        check_models(job(build_classifier(tmp_path / "single", list(TOPICS))))
    check_models(job(build_classifier(tmp_path / "multi", list(TOPICS), multi_label=True)))


def test_the_social_job_file_validates_on_the_sample_corpus(tmp_path):
    from batch.demo.corpus import write_sample_corpus
    from conftest import cli_ok, run_cli

    write_sample_corpus(tmp_path / "in")
    out = cli_ok(run_cli("validate", "jobs/social_sentiment.yaml", "--input", str(tmp_path / "in"),
                         "--output", str(tmp_path / "out")))  # fmt: skip
    assert "task topic: model" in out and "task emotion: model" in out and "OK" in out


# --- one row through a label task -----------------------------------------------------------


def topic_task(**overrides) -> LabelTask:
    config = LabelConfig(model="m", instruction="Topics: {labels}.", labels=["price", "delivery", "other"], multi=True, **overrides)
    return LabelTask(config, name="topic")


def yes_no(p_yes: float) -> Scores:
    return Scores(logprobs=(math.log(p_yes), math.log(1 - p_yes)), prompt_tokens=10)


def test_multi_label_asks_about_each_label_and_keeps_those_over_the_threshold():
    task = topic_task()
    plan = task.prepare("Delivery was late and it cost too much")
    assert [r.continuations for r in plan.requests] == [("yes", "no")] * 3
    assert [r.messages[1][1].splitlines()[-1] for r in plan.requests] == [
        f'Does the label "{label}" apply to this post? Answer yes or no.' for label in ("price", "delivery", "other")
    ]
    assert len({r.messages[0] for r in plan.requests}) == 1  # one system prompt: a shared prefix
    row = task.parse("...", plan, [yes_no(0.7), yes_no(0.9), yes_no(0.2)])
    assert row["topic"] == ["price", "delivery"]  # in label order
    assert row["topic_probs"] == pytest.approx({"price": 0.7, "delivery": 0.9, "other": 0.2})  # independent: sum 1.8
    assert row["topic_confidence"] is None and row["topic_long_text"] is None
    assert task.parse("...", plan, [yes_no(0.1), yes_no(0.2), yes_no(0.3)])["topic"] == []  # none may apply
    assert topic_task(threshold=0.8).parse("...", plan, [yes_no(0.7), yes_no(0.9), yes_no(0.2)])["topic"] == ["delivery"]


def test_multi_label_chunks_average_per_label_by_tokens_and_decoding_votes_yes_no():
    task = topic_task()
    plan = Plan(task.prepare("x").requests * 2, _State("chunk", (30, 10)))  # two chunks of 30 and 10 tokens
    row = task.parse("...", plan, [yes_no(0.6), yes_no(0.2), yes_no(0.1), yes_no(0.3), yes_no(0.9), yes_no(0.1)])
    assert row["topic_probs"] == pytest.approx({"price": 0.525, "delivery": 0.375, "other": 0.1})
    assert row["topic"] == ["price"] and row["topic_long_text"] == "chunk"

    decoded = topic_task(probabilities=False)
    requests = decoded.prepare("x").requests
    assert all(r.choices == ("yes", "no") for r in requests)
    answers = [Completion(text, "stop", 5, 1) for text in ("yes", "no", "yes")]
    assert decoded.parse("x", Plan(requests), answers) == {
        "topic": ["price", "other"], "topic_probs": None, "topic_confidence": None, "topic_long_text": None,
    }  # fmt: skip
    with pytest.raises(RowError, match="model answered 'maybe'"):
        decoded.parse("x", Plan(requests), [Completion("maybe", "stop", 5, 1)] * 3)


def test_multi_label_classifier_takes_vllms_per_label_sigmoid():
    task = topic_task(mode="classify", label_map={"cost": "price"})
    plan = task.prepare("x")
    assert len(plan.requests) == 1
    result = Classification(probabilities=(0.8, 0.6, 0.1), labels=("cost", "delivery", "other"), prompt_tokens=3)
    assert task.parse("x", plan, [result])["topic"] == ["price", "delivery"]
    problems = task.check_model_config({"id2label": {"0": "cost", "1": "delivery", "2": "other"}})
    assert problems and "problem_type: multi_label_classification" in problems[0]
    assert task.check_model_config({"id2label": {"0": "cost"}, "problem_type": "multi_label_classification"}) == []


def test_a_single_label_task_scores_its_own_labels_under_its_own_column():
    task = build_task("emotion", validate_job(label_tasks("m")).tasks["emotion"])
    plan = task.prepare("so happy today")
    (request,) = plan.requests
    assert isinstance(request, Score) and request.continuations == tuple(EMOTIONS)
    assert "anger, joy, sadness, none" in request.messages[0][1]
    scores = Scores(logprobs=tuple(math.log(p) for p in (0.1, 0.25, 0.25, 0.4)), prompt_tokens=5)
    row = task.parse("so happy today", plan, [scores])
    assert row["emotion"] == "none" and row["emotion_confidence"] == pytest.approx(0.4)
    low = Scores(logprobs=tuple(math.log(p) for p in (0.28, 0.26, 0.24, 0.22)), prompt_tokens=5)
    assert task.parse("x", plan, [low])["emotion"] == "none"  # under min_confidence 0.3


def test_every_sample_post_has_its_rule_derived_topic():
    posts = sample_posts()
    assert len(posts) == 328
    assert all(post["gold_topic"] == topic_of(post["reference_en"]) for post in posts)
    assert {post["gold_topic"] for post in posts} == set(TOPICS)


# --- one real run: three label tasks, one engine ----------------------------------------------


def test_the_social_job_file_runs_three_label_tasks_on_one_engine(models, tmp_path):
    """jobs/social_sentiment.yaml itself, its models pointed at the tiny chat model: sentiment,
    topic (multi-label) and emotion on one engine, with the planted personal data redacted."""
    import json

    import ray
    from ray._private.state import actors as actor_table  # GCS view; needs no dashboard

    from batch.config import load_job
    from batch.pipeline import run
    from batch.text.privacy import Masker
    from batch.text.tokens import load_counter
    from conftest import REPO
    from test_privacy import PLANTED, leaked

    model = str(models["chat"])
    posts = {post["post_id"]: post for post in sample_posts()}
    ids = [f"p{i:04d}" for i in range(1, 41)] + list(PLANTED)
    # reference_en repeats the planted values unmasked; a job would leave it out (input.columns)
    rows = [{k: v for k, v in posts[post_id].items() if k != "reference_en"} for post_id in ids]
    write_corpus(None, str(tmp_path / "in"), rows, files=2)
    job = load_job(REPO / "jobs/social_sentiment.yaml", [
        f"input.uris={tmp_path / 'in'}", f"output.uri={tmp_path / 'out'}",
        "engine.replicas=1", "engine.accelerator_type=null", "engine.batch_size=32", "engine.max_model_len=1024",
        f"tasks.sentiment.model={model}", "tasks.sentiment.mode=generate",
        f"tasks.topic.model={model}", f"tasks.emotion.model={model}",
    ])  # fmt: skip
    topic, emotion = job.tasks["topic"], job.tasks["emotion"]
    assert topic.multi and topic.labels == list(TOPICS) and job.privacy.redact
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        summary = run(job)
        engine_actors = [a for a in actor_table().values() if "InferenceStage" in str(a.get("ActorClassName", a))]
    finally:
        ray.shutdown()
    assert summary.status == "published" and summary.rows_failed == 0
    assert len(engine_actors) == 1, "the three label tasks name one model: one engine serves them all"
    assert [engine["tasks"] for engine in summary.engines] == [["sentiment", "topic", "emotion"]]
    written = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert [task["name"] for task in written["tasks"]] == ["sentiment", "topic", "emotion"]
    assert written["tasks"][1] == {"name": "topic", "kind": "label", "column": "topic", "labels": list(TOPICS), "multi": True}

    # the engine answered exactly the distinct requests the tasks asked for (topic: one per topic)
    masker, counter, distinct = Masker(job.privacy), load_counter(model, 1024, False), set()
    for name, config in job.enabled_tasks().items():
        task = build_task(name, config)
        task.bind_tokens(counter)
        for row in rows:
            distinct.update(task.prepare(masker.mask(row["text"]).text).requests)
    assert summary.requests_inferred == len(distinct)

    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("topic").type == pa.list_(pa.string())
    out = table.to_pylist()
    assert len(out) == len(rows)
    for row in out:
        assert not leaked(row["text"]), row["post_id"]  # privacy.redact: placeholders are published
        topic_probs = dict(row["topic_probs"])
        assert list(topic_probs) == list(TOPICS) and all(0 < p < 1 for p in topic_probs.values())
        assert row["topic"] == [t for t in TOPICS if topic_probs[t] >= topic.threshold]
        assert row["topic_confidence"] is None
        emotion_probs = dict(row["emotion_probs"])
        assert math.isclose(sum(emotion_probs.values()), 1.0, abs_tol=1e-6)
        best = max(emotion_probs, key=emotion_probs.get)
        assert row["emotion"] == (best if emotion_probs[best] >= emotion.min_confidence else "none")
        assert row["sentiment"] in ("negative", "neutral", "positive")
        assert row["topic_model"] == row["emotion_model"] == row["sentiment_model"]

    # report and eval read the same real output by its recorded tasks, segmented by language
    # and by the multi-label topic, and score a label task per language
    from conftest import cli_ok, run_cli

    cli_ok(run_cli("report", str(tmp_path / "out"), "--out", str(tmp_path / "report"), "--time-column", "created_at",
                   "--segment", "lang", "--segment", "topic", "--min-volume", "1"))  # fmt: skip
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(report["tasks"]) >= {"sentiment", "topic", "emotion"}
    segments = report["tasks"]["sentiment"]["segments"]
    assert [segment["column"] for segment in segments] == ["lang", "topic"]
    scored = cli_ok(run_cli("eval", str(tmp_path / "out"), "--task", "sentiment", "--gold", "gold_sentiment",
                            "--by", "lang", "--json", str(tmp_path / "eval.json")))  # fmt: skip
    by_lang = json.loads((tmp_path / "eval.json").read_text())
    assert "macro" in scored.lower() and len({row["lang"] for row in rows}) > 1
    assert json.dumps(by_lang).count('"it"') >= 1, "per-language breakdown names each language"
