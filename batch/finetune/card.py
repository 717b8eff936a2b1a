"""The model card (`finetune.json`) and the publish of the folder the job serves.

The card says what the weights are and how they were made: the base model and its content
identity, the data's fingerprint and row counts per split and label, the hyperparameters,
the loss per epoch, and the held-out scores of the base and of the fine-tune. It is written
last, so a folder with a card is complete.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from batch.finetune.data import Splits
from batch.finetune.spec import FinetuneSpec
from batch.io.storage import Location, retrying

CARD = "finetune.json"


def build_card(spec: FinetuneSpec, splits: Splits, base, run_identity: str, progress: dict, resumed_after: int) -> dict[str, Any]:
    """`base`: the base model's Weights, identified once on the driver (batch/infer/models.py)."""
    return {
        "name": spec.name,
        "task": spec.task,
        "method": spec.method,
        "serve_as": _serve_as(spec),
        "base_model": {"uri": spec.base_model, "identity": base.content},
        "labels": spec.labels if spec.task == "sentiment" else None,
        "target_language": spec.target_language,
        "data": {"uris": spec.data.uris, "fingerprint": splits.fingerprint, "rows": splits.counts,
                 "split": spec.data.split_column or f"held_out_fraction {spec.data.held_out_fraction} seed {spec.data.seed}"},  # fmt: skip
        "hyperparameters": {**spec.training.model_dump(), "lora": spec.adapter.model_dump() if spec.adapter else None},
        "scaling": spec.scaling.model_dump(),
        "training": {"identity": run_identity, "epochs": progress["history"], "resumed_after_epoch": resumed_after},
        "metrics": {"base": progress["base_metrics"], "finetune": progress["metrics"]},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _serve_as(spec: FinetuneSpec) -> dict[str, Any]:
    """The job-file lines that serve this folder."""
    if spec.method == "classifier":
        return {"tasks.sentiment.model": spec.output, "tasks.sentiment.mode": "classify", "tasks.sentiment.labels": spec.labels}
    task = f"tasks.{spec.task}"
    extra = {f"{task}.mode": "generate"} if spec.task == "sentiment" else {f"{task}.target_languages": [spec.target_language]}
    return {f"{task}.model": spec.base_model, f"{task}.adapter": spec.output, **extra}


def publish(spec: FinetuneSpec, model_folder: Path, card: dict[str, Any]) -> None:
    """Replace the output folder with the trained one; the card goes last."""
    output = Location(spec.output.rstrip("/"), spec.storage)
    output.delete_dir()
    for path in sorted(p for p in model_folder.rglob("*") if p.is_file()):
        target = output.join(*path.relative_to(model_folder).parts)

        def upload(path=path, target=target):
            if not target.is_s3:
                Path(target.path).parent.mkdir(parents=True, exist_ok=True)
            with target.fs.open_output_stream(target.path) as out:
                out.write(path.read_bytes())

        retrying(upload, spec.storage, target.uri)
    output.join(CARD).write_json(card)
