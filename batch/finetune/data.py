"""Labelled data for a fine-tune: read, checked, split, fingerprinted, then turned into
token ids exactly as the job will prompt.

Everything up to the split runs on the driver, before any worker starts, so a wrong column
or a label set that does not fit fails in seconds naming the field. Token ids are made on
the workers (they hold the tokenizer), from the task module's own prompt code and the
model's chat template: the prompt a model is trained on is the prompt it is served.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch.config import ConfigError
from batch.finetune.spec import FinetuneSpec
from batch.io.storage import Location, expand_input


@dataclass
class Splits:
    """Rows by split, as plain dicts keyed by role (`text`/`label` or `source`/`target`)."""

    train: list[dict[str, str]]
    held_out: list[dict[str, str]]
    fingerprint: str
    counts: dict[str, Any] = field(default_factory=dict)


def load_splits(spec: FinetuneSpec) -> Splits:
    rows, splits = _read(spec)
    _check_labels(spec, rows)
    train, held_out = _split(spec, rows, splits)
    if not train or not held_out:
        empty = "train" if not train else "held-out"
        raise ConfigError(f"data.split_column: the {empty} split is empty ({spec.data.train_value!r} / {spec.data.held_out_value!r})")  # fmt: skip
    return Splits(train, held_out, _fingerprint(spec, train, held_out), _counts(spec, train, held_out))


# --- reading ----------------------------------------------------------------------------


def _read(spec: FinetuneSpec) -> tuple[list[dict[str, str]], list[str] | None]:
    roles = spec.columns()
    wanted = list(roles.values()) + ([spec.data.split_column] if spec.data.split_column else [])
    tables = []
    for uri in spec.data.uris:
        files = expand_input(uri, spec.storage)
        if not files:
            raise ConfigError(f"data.uris: {uri}: no Parquet files found")
        for path, _ in files:
            tables.append(_read_file(spec, path, wanted))
    table = pa.concat_tables(tables, promote_options="permissive")
    columns = {role: table.column(name).to_pylist() for role, name in roles.items()}
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    splits = table.column(spec.data.split_column).to_pylist() if spec.data.split_column else None
    # A row without text or label teaches nothing: left out (the card counts rows per split).
    kept = [i for i, row in enumerate(rows) if all(isinstance(v, str) and v.strip() for v in row.values())]
    return [rows[i] for i in kept], ([splits[i] for i in kept] if splits is not None else None)


def _read_file(spec: FinetuneSpec, path: str, wanted: list[str]) -> pa.Table:
    location = Location(path, spec.storage)
    schema = pq.read_schema(location.path, filesystem=location.fs)
    for name in wanted:
        if name not in schema.names:
            raise ConfigError(f"data.{_field_of(spec, name)}: no column {name!r} in {path}; it has: {', '.join(schema.names)}")  # fmt: skip
    return pq.read_table(location.path, columns=wanted, filesystem=location.fs)


def _field_of(spec: FinetuneSpec, column: str) -> str:
    for field_name in ("text_column", "label_column", "source_column", "target_column", "split_column"):
        if getattr(spec.data, field_name) == column:
            return field_name
    return "uris"


# --- checks -----------------------------------------------------------------------------


def _check_labels(spec: FinetuneSpec, rows: list[dict[str, str]]) -> None:
    if not rows:
        raise ConfigError(f"data.uris: no row with non-empty {' and '.join(spec.columns().values())}")
    if spec.task != "sentiment":
        return
    counts = Counter(row["label"] for row in rows)
    if extra := sorted(set(counts) - set(spec.labels)):
        raise ConfigError(f"data.label_column: labels {extra} in the data are not in labels {spec.labels}; add them to labels or drop those rows")  # fmt: skip
    if missing := [label for label in spec.labels if label not in counts]:
        raise ConfigError(f"labels: {missing} never occur in data.label_column {spec.data.label_column!r}; remove them from labels or add examples")  # fmt: skip
    if rare := sorted(label for label, n in counts.items() if n < 2):
        raise ConfigError(f"data.label_column: labels {rare} have one example; each label needs at least two (one to train on, one held out)")  # fmt: skip


# --- split, fingerprint, counts -------------------------------------------------------


def _split(spec: FinetuneSpec, rows, splits) -> tuple[list, list]:
    if splits is not None:
        known = {spec.data.train_value, spec.data.held_out_value}
        if unknown := sorted({str(s) for s in splits} - known):
            raise ConfigError(f"data.split_column: values {unknown[:5]} are neither train_value {spec.data.train_value!r} nor held_out_value {spec.data.held_out_value!r}")  # fmt: skip
        return ([r for r, s in zip(rows, splits) if s == spec.data.train_value],
                [r for r, s in zip(rows, splits) if s == spec.data.held_out_value])  # fmt: skip
    held = set(held_out_indices([row.get("label") for row in rows], spec.data.held_out_fraction, spec.data.seed))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def held_out_indices(labels: list[str | None], fraction: float, seed: int) -> list[int]:
    """A seeded held-out set, stratified by label (every label keeps at least one example on
    each side), so a small set's held-out split still has every class."""
    by_label: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    rng = random.Random(seed)
    held = []
    for label in sorted(by_label, key=str):
        members = by_label[label]
        rng.shuffle(members)
        n = min(len(members) - 1, max(1, round(len(members) * fraction)))
        held += members[:n]
    return sorted(held)


def _fingerprint(spec: FinetuneSpec, train, held_out) -> str:
    digest = hashlib.sha256()
    for name, rows in (("train", train), ("held_out", held_out)):
        digest.update(name.encode())
        for row in rows:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def _counts(spec: FinetuneSpec, train, held_out) -> dict[str, Any]:
    counts: dict[str, Any] = {"train": len(train), "held_out": len(held_out)}
    if spec.task == "sentiment":
        counts["labels"] = {
            name: {label: sum(1 for r in rows if r["label"] == label) for label in spec.labels}
            for name, rows in (("train", train), ("held_out", held_out))
        }
    return counts


# --- prompts: the task module's own code and the model's chat template -----------------


def serving_task(spec: FinetuneSpec):
    """The task object the job will build for this fine-tune: its `prepare` makes the prompt."""
    from batch.tasks.sentiment import SentimentConfig, SentimentTask
    from batch.tasks.translation import TranslationConfig, TranslationTask

    if spec.task == "sentiment":
        mode = "classify" if spec.method == "classifier" else "generate"
        return SentimentTask(SentimentConfig(model=spec.base_model, mode=mode, labels=spec.labels))
    return TranslationTask(TranslationConfig(model=spec.base_model, target_languages=[spec.target_language]))


def prompt_messages(task, spec: FinetuneSpec, row: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The chat messages the job sends for this row (sentiment: the label-scoring prompt;
    translation: the request for one piece, here the whole source)."""
    if spec.task == "sentiment":
        (request,) = task.prepare(row["text"]).requests
        return request.messages
    return task.messages(spec.target_language, row["source"])


def encode(tokenizer, task, spec: FinetuneSpec, row: dict[str, str]) -> dict[str, Any]:
    """One example as token ids. A classifier sees the text as the pooling runner does; a
    chat model sees the rendered prompt (labels: -100, no loss) then the answer and the end
    of sequence, the tokens the job scores (sentiment) or generates (translation)."""
    limit = spec.training.max_length
    if spec.method == "classifier":
        ids = tokenizer(row["text"])["input_ids"][:limit]
        return {"input_ids": ids, "label": spec.labels.index(row["label"])}
    messages = [{"role": role, "content": content} for role, content in prompt_messages(task, spec, row)]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer = row["label"] if spec.task == "sentiment" else row["target"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + eos
    prompt_ids = prompt_ids[-max(1, limit - len(answer_ids)) :]  # keep the answer; cut the prompt's head
    ids = (prompt_ids + answer_ids)[:limit]
    labels = ([-100] * len(prompt_ids) + answer_ids)[:limit]
    return {"input_ids": ids, "labels": labels}
