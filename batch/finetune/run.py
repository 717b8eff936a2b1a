"""`python -m batch finetune SPEC.yaml`, in order: check everything that needs no worker,
train on Ray Train (resuming from the newest checkpoint of the same training), publish the
served folder and its card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from batch.config import ConfigError
from batch.finetune import card, data, train
from batch.finetune.spec import FinetuneSpec
from batch.infer import models


def check_base_model(spec: FinetuneSpec) -> None:
    """A local or s3:// base must be a model folder; a hub id is left to the workers."""
    try:
        config = models.read_config(spec.base_model, spec.storage)
    except (ConfigError, OSError):
        raise ConfigError(f"base_model: {spec.base_model}: no config.json (give a Hugging Face model folder, local or s3://, or a hub id)") from None  # fmt: skip
    if config is not None and spec.method == "lora" and "ForSequenceClassification" in str(config.get("architectures")):
        raise ConfigError(f"base_model: {spec.base_model} is a classifier; method lora needs a chat (causal LM) model")


def run_finetune(spec: FinetuneSpec, *, ray_address: str | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    check_base_model(spec)
    splits = data.load_splits(spec)
    # the base model's content identity, once, on the driver: the run's identity, the card and
    # every training worker use these exact weights (pinned S3 versions), never a re-listing
    base = models.identify(spec.base_model, spec.storage)
    run_identity = train.identity(spec, splits, base)
    echo(f"finetune {spec.name}: {spec.method} on {spec.base_model}, {splits.counts['train']} train / "
         f"{splits.counts['held_out']} held-out rows (data {splits.fingerprint}), {spec.scaling.workers} workers")  # fmt: skip
    resume, progress = train.newest_checkpoint(spec, run_identity)
    if resume:
        echo(f"resuming after epoch {progress['epoch']} from {resume}")
    if progress["epoch"] < spec.training.epochs:
        from batch.pipeline import connect_ray

        connect_ray(ray_address)
        resume = train.fit(spec, splits, base, run_identity, resume, echo)
    return _publish(spec, splits, base, run_identity, resume, progress["epoch"])


def _publish(spec: FinetuneSpec, splits, base, run_identity: str, last: str, resumed_after: int) -> dict[str, Any]:
    from ray.train import Checkpoint

    from batch.io.storage import Location, filesystem_for

    location = Location(last, spec.storage)
    with Checkpoint(path=location.path, filesystem=filesystem_for(last, spec.storage)).as_directory() as folder:
        progress = json.loads((Path(folder) / train.PROGRESS).read_text())
        model_card = card.build_card(spec, splits, base, run_identity, progress, resumed_after)
        card.publish(spec, Path(folder) / train.MODEL, model_card)
    return model_card
