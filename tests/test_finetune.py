"""Fine-tuning on Ray Train, end to end on the real parts: labelled Parquet in moto S3, a
TorchTrainer with 2 CPU workers (gloo DDP), the tiny models, and the job serving what the
fine-tune wrote through its command line, with no conversion in between."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import cli_ok, run_cli, upload_folder, write_corpus, write_job

LABELS = ["negative", "neutral", "positive"]


def labelled_rows() -> list[dict]:
    """The sample corpus's gold sentiment and English references, with a seeded stratified split."""
    from batch.demo.corpus import sample_posts
    from batch.finetune.data import held_out_indices

    posts = list(sample_posts())
    held = set(held_out_indices([p["gold_sentiment"] for p in posts], 0.2, seed=0))
    return [{"post_id": p["post_id"], "text": p["text"], "label": p["gold_sentiment"], "reference_en": p["reference_en"],
             "split": "test" if i in held else "train"} for i, p in enumerate(posts)]  # fmt: skip


def write_spec(path: Path, spec: dict) -> Path:
    return write_job(path, spec)


@pytest.fixture(scope="module")
def store(s3, models, tmp_path_factory):
    """A bucket with the labelled posts (4 Parquet files) and the untrained classifier."""
    from batch.demo.models import build_classifier

    bucket = s3.bucket("finetune")
    write_corpus(s3.fs, "finetune/labelled", labelled_rows(), files=4)
    classifier = build_classifier(tmp_path_factory.mktemp("base") / "tiny-classifier", LABELS)
    return {"bucket": bucket, "data": f"{bucket}/labelled/", "classifier": upload_folder(s3.fs, classifier, "finetune/base/tiny-classifier")}  # fmt: skip


def read_card(s3, uri: str) -> dict:
    with s3.fs.open_input_stream(uri.removeprefix("s3://").rstrip("/") + "/finetune.json") as stream:
        return json.loads(stream.read())


@pytest.fixture(scope="module")
def classifier_finetune(store, s3, tmp_path_factory):
    spec = write_spec(tmp_path_factory.mktemp("spec") / "classifier.yaml", {
        "name": "test-classifier", "task": "sentiment", "method": "classifier", "base_model": store["classifier"],
        "labels": LABELS, "data": {"uris": [store["data"]], "split_column": "split"},
        "training": {"epochs": 6, "learning_rate": 0.001, "batch_size": 16, "max_length": 128, "seed": 0},
        "scaling": {"workers": 2}, "output": f"{store['bucket']}/models/classifier",
    })  # fmt: skip
    out = cli_ok(run_cli("finetune", str(spec), timeout=1500))
    return {"uri": f"{store['bucket']}/models/classifier", "stdout": out, "card": read_card(s3, f"{store['bucket']}/models/classifier")}  # fmt: skip


@pytest.fixture(scope="module")
def translation_finetune(store, s3, models, tmp_path_factory):
    spec = write_spec(tmp_path_factory.mktemp("spec") / "translation.yaml", {
        "name": "test-mt-en", "task": "translation", "method": "lora", "base_model": str(models["chat"]),
        "target_language": "en",
        "data": {"uris": [store["data"]], "source_column": "text", "target_column": "reference_en", "split_column": "split"},
        "lora": {"rank": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {"epochs": 1, "learning_rate": 0.001, "batch_size": 16, "max_length": 160},
        "eval": {"max_rows": 8, "max_new_tokens": 16},
        "scaling": {"workers": 2}, "output": f"{store['bucket']}/models/mt-en",
    })  # fmt: skip
    cli_ok(run_cli("finetune", str(spec), timeout=1500))
    return {"uri": f"{store['bucket']}/models/mt-en", "card": read_card(s3, f"{store['bucket']}/models/mt-en")}


@pytest.mark.timeout(1800)
def test_classifier_finetune_beats_the_untrained_model_on_held_out_posts(classifier_finetune):
    card = classifier_finetune["card"]
    base, tuned = card["metrics"]["base"]["macro_f1"], card["metrics"]["finetune"]["macro_f1"]
    # Seeded: measured base 0.27-0.30 (chance is 0.33 for three labels), fine-tune 0.6-0.7.
    assert tuned >= base + 0.2, (base, tuned)
    assert card["data"]["rows"] == {"train": 263, "held_out": 65, "labels": {
        "train": {"negative": 94, "neutral": 80, "positive": 89}, "held_out": {"negative": 23, "neutral": 20, "positive": 22}}}  # fmt: skip
    assert [epoch["epoch"] for epoch in card["training"]["epochs"]] == list(range(1, 7))
    assert all(epoch["workers"] == 2 for epoch in card["training"]["epochs"])
    assert card["training"]["epochs"][-1]["loss"] < card["training"]["epochs"][0]["loss"]
    assert set(card["metrics"]["finetune"]["per_class"]) == set(LABELS)
    assert "SUCCEEDED" in classifier_finetune["stdout"] and "fine-tune" in classifier_finetune["stdout"]


@pytest.mark.timeout(1800)
def test_both_finetunes_are_served_by_the_job_unchanged(classifier_finetune, translation_finetune, store, s3, tmp_path):
    from batch import evaluate
    from batch.evaluate_command import read_columns

    assert {"chrf", "bleu"} <= set(translation_finetune["card"]["metrics"]["finetune"])
    assert translation_finetune["card"]["serve_as"]["tasks.translation.adapter"] == translation_finetune["uri"]
    held_out = [row for row in labelled_rows() if row["split"] == "test"]
    write_corpus(s3.fs, "finetune/held-out", held_out, files=2)
    output = f"{store['bucket']}/tagged/"
    job = write_job(tmp_path / "job.yaml", {
        "name": "serve-finetunes", "input": {"uris": [f"{store['bucket']}/held-out/"], "id_column": "post_id"},
        "output": {"uri": output}, "engine": {"replicas": 1, "max_model_len": 1024},  # CJK posts: ~3 tokens a character
        "tasks": {
            "sentiment": {"model": classifier_finetune["uri"], "mode": "classify", "labels": LABELS},
            "translation": {"model": translation_finetune["card"]["base_model"]["uri"], "target_languages": ["en"],
                            "adapters": {"en": translation_finetune["uri"]}, "max_output_tokens": 16},
        },
    })  # fmt: skip
    cli_ok(run_cli("run", str(job), timeout=1500))
    table = read_columns(output, ["post_id", "sentiment", "label", "translation_en", "translation_model", "error"])
    assert table.num_rows == len(held_out)
    assert table.column("error").null_count == table.num_rows
    assert set(table.column("sentiment").to_pylist()) <= set(LABELS)
    assert all(translation_finetune["uri"] in model for model in table.column("translation_model").to_pylist())
    # Training and serving agree: the job's held-out score is the card's (vLLM vs torch float32).
    served = evaluate.score_sentiment(table.column("sentiment").to_pylist(), table.column("label").to_pylist(), LABELS)
    assert served["macro_f1"] == pytest.approx(classifier_finetune["card"]["metrics"]["finetune"]["macro_f1"], abs=0.05)


@pytest.mark.timeout(1800)
def test_a_crash_after_the_first_epoch_resumes_from_its_checkpoint(models, tmp_path):
    """A chat model's sentiment LoRA (labels as the answer); rank 0 is killed right after the
    first epoch's checkpoint; the rerun trains epoch 2 only."""
    data = tmp_path / "labelled"
    write_corpus(None, str(data), labelled_rows()[:96], files=1)
    output = tmp_path / "sentiment-lora"
    spec = write_spec(tmp_path / "lora.yaml", {
        "name": "test-lora", "task": "sentiment", "method": "lora", "base_model": str(models["chat"]), "labels": LABELS,
        "data": {"uris": [str(data)], "held_out_fraction": 0.25, "seed": 0},
        "training": {"epochs": 2, "learning_rate": 0.001, "batch_size": 16, "max_length": 192},
        "scaling": {"workers": 2}, "output": str(output),
    })  # fmt: skip
    crashed = run_cli("finetune", str(spec), env={"BATCH_FAULT": "finetune.after_epoch@1"}, timeout=1500)
    assert crashed.returncode == 1, crashed.stderr[-3000:]
    assert not (output / "finetune.json").exists()
    checkpoints = list(Path(f"{output}.checkpoints").rglob("epoch-001/progress.json"))
    assert len(checkpoints) == 1 and not list(Path(f"{output}.checkpoints").rglob("epoch-002"))

    out = cli_ok(run_cli("finetune", str(spec), timeout=1500))
    assert "resuming after epoch 1" in out
    card = json.loads((output / "finetune.json").read_text())
    assert card["training"]["resumed_after_epoch"] == 1
    assert [epoch["epoch"] for epoch in card["training"]["epochs"]] == [1, 2]
    assert (output / "adapter_model.safetensors").exists() and (output / "chat_template.jinja").exists()
    assert json.loads((output / "adapter_config.json").read_text())["r"] == 8


# --- a bad spec fails before any worker starts, naming the field ----------------------------


@pytest.fixture
def small_data(tmp_path) -> str:
    rows = [{"text": f"post {i}", "label": LABELS[i % 3]} for i in range(12)] + [{"text": "rare", "label": "mixed"}]
    pq.write_table(__import__("pyarrow").Table.from_pylist(rows), tmp_path / "posts.parquet")
    return str(tmp_path)


def _spec(models, data: str, tmp_path, **changes) -> dict:
    spec = {"name": "bad", "task": "sentiment", "method": "classifier", "base_model": str(models["chat"]),
            "labels": [*LABELS, "mixed"], "data": {"uris": [data]}, "output": str(tmp_path / "out")}  # fmt: skip
    for key, value in changes.items():
        node = spec
        *parents, last = key.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return spec


@pytest.mark.parametrize(
    "changes, field, words",
    [
        ({"data__label_column": "sentiment"}, "data.label_column", "no column 'sentiment'"),
        ({"data__text_column": "body"}, "data.text_column", "no column 'body'"),
        ({"labels": LABELS}, "data.label_column", "['mixed'] in the data are not in labels"),
        ({"labels": [*LABELS, "mixed", "sarcastic"]}, "labels", "['sarcastic'] never occur"),
        ({}, "data.label_column", "['mixed'] have one example"),
        ({"lora": {"rank": 12}}, "lora.rank", "not a rank vLLM serves"),
        ({"lora": {"target_modules": ["embed_tokens"]}}, "lora.target_modules", "cannot be served"),
        ({"epochs": 3}, "epochs", "unknown key; allowed here: name, task, method"),
        ({"task": "translation", "method": "lora"}, "target_language", "required for translation"),
        ({"base_model": "/nowhere/tiny-model"}, "base_model", "no config.json"),
    ],
)
def test_a_bad_spec_fails_before_any_worker_starts_naming_the_field(models, small_data, tmp_path, changes, field, words):
    import ray

    from batch.config import ConfigError
    from batch.finetune.run import run_finetune
    from batch.finetune.spec import validate_spec

    with pytest.raises(ConfigError) as caught:
        run_finetune(validate_spec(_spec(models, small_data, tmp_path, **changes)), echo=lambda line: None)
    assert field in str(caught.value) and words in str(caught.value)
    assert not ray.is_initialized()


def test_a_bad_spec_is_one_line_from_the_command(models, small_data, tmp_path):
    spec = write_spec(tmp_path / "bad.yaml", _spec(models, small_data, tmp_path, data__label_column="sentiment"))
    result = run_cli("finetune", str(spec), "--set", "training.epochs=2", timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("FAILED:") and "data.label_column: no column 'sentiment'" in result.stderr


def test_the_training_prompt_is_the_prompt_the_job_renders(models):
    """Training and serving cannot drift: the prompt tokens trained on are the engine's
    rendering of the task's own request, and the answer is the label and end of sequence."""
    from transformers import AutoTokenizer

    from batch.finetune.data import encode, serving_task
    from batch.finetune.spec import validate_spec

    spec = validate_spec({"name": "p", "task": "sentiment", "method": "lora", "base_model": str(models["chat"]),
                          "data": {"uris": ["unused"]}, "output": "unused"})  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(models["chat"])
    task = serving_task(spec)
    example = encode(tokenizer, task, spec, {"text": "Loved the show!", "label": "positive"})
    (request,) = task.prepare("Loved the show!").requests
    rendered = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in request.messages],
                                             tokenize=False, add_generation_prompt=True)  # fmt: skip
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer("positive", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert example["input_ids"] == prompt_ids + answer_ids
    assert example["labels"] == [-100] * len(prompt_ids) + answer_ids
