"""The Ray Train side: one TorchTrainer run, DDP over `scaling.workers` ranks (gloo on CPU,
NCCL on GPUs), a checkpoint per epoch, resume from the newest one.

    driver   spec and data checked (batch/finetune/data.py), newest checkpoint found
    workers  each resolves the base model on its node, tokenizes its rows with the job's own
             prompt code, trains on its shard of every epoch; rank 0 scores the held-out
             split before training (the base) and after the last epoch (the fine-tune),
             writes a checkpoint per epoch and, at the end, the folder the job serves
    driver   copies that folder to the output and writes finetune.json (batch/finetune/card.py)

A checkpoint holds the trainable weights, the optimizer, the epoch and the loss history. It
is written under `<checkpoints>/<identity>/`, where the identity covers the base weights, the
data and every setting that shapes the result, so a rerun of the same spec resumes and an
edited spec starts over. The loop finds the newest checkpoint itself (rather than relying on
Ray's run snapshot), because a worker that dies right after its checkpoint is uploaded may
die before the controller records it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from batch.faults import fault_point
from batch.finetune.data import Splits, encode, serving_task
from batch.finetune.spec import FinetuneSpec
from batch.infer import models
from batch.io.storage import Location, filesystem_for
from batch.progress import verbose

PROGRESS = "progress.json"  # in every checkpoint: epoch, loss history, base metrics
STATE = "state.pt"  # trainable weights and optimizer
MODEL = "model"  # in the last checkpoint: the folder the job serves


def identity(spec: FinetuneSpec, splits: Splits, base: models.Weights) -> str:
    """What makes two runs the same training: checkpoints are filed under it."""
    shaping = spec.model_dump(mode="json", include={"task", "method", "labels", "target_language", "lora", "training"})
    shaping["adapter"] = spec.adapter.model_dump() if spec.adapter else None
    shaping["base"] = base.content
    shaping["data"] = splits.fingerprint
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def newest_checkpoint(spec: FinetuneSpec, run_identity: str) -> tuple[str | None, dict]:
    """(URI, progress) of the checkpoint with the highest epoch under this identity."""
    root = Location(f"{spec.checkpoint_uri.rstrip('/')}/{run_identity}", spec.storage)
    best: tuple[str | None, dict] = (None, {"epoch": 0})
    for info in root.list_files():
        if not info.path.endswith(f"/{PROGRESS}"):
            continue
        progress = Location(root.uri_of(info.path), spec.storage).read_json()
        if progress.get("epoch", 0) > best[1]["epoch"]:
            best = (root.uri_of(info.path).rsplit("/", 1)[0], progress)
    return best


def fit(spec: FinetuneSpec, splits: Splits, base: models.Weights, run_identity: str, resume: str | None,
        echo: Callable[[str], None]):  # fmt: skip
    """Run the TorchTrainer; returns the URI of the last checkpoint."""
    import ray.train
    from ray.train.torch import TorchTrainer

    root = f"{spec.checkpoint_uri.rstrip('/')}/{run_identity}"
    location = Location(root, spec.storage)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "train": splits.train,
                           "held_out": splits.held_out, "resume": resume, "verbose": verbose(), "base": base},  # fmt: skip
        scaling_config=_scaling(spec),
        run_config=ray.train.RunConfig(
            name=f"attempt-{time.strftime('%Y%m%dT%H%M%S')}",
            storage_path=location.path,
            storage_filesystem=location.fs if location.is_s3 else None,
            failure_config=ray.train.FailureConfig(max_failures=spec.scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    return location.uri_of(result.checkpoint.path)


def _scaling(spec: FinetuneSpec):
    from ray.train import ScalingConfig

    scaling = spec.scaling
    per_worker: dict[str, float] = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        per_worker["GPU"] = scaling.gpus_per_worker or 1
    return ScalingConfig(
        num_workers=scaling.workers, use_gpu=scaling.use_gpu, resources_per_worker=per_worker,
        accelerator_type=scaling.accelerator_type,
    )  # fmt: skip


# --- on every worker ----------------------------------------------------------------------


def train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import torch

    spec = FinetuneSpec.model_validate(config["spec"])
    if not config["verbose"]:  # Ray Train's per-report lines; ours say epoch, loss and speed
        logging.getLogger("ray.train").setLevel(logging.WARNING)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
    torch.manual_seed(spec.training.seed)  # same initial head on every rank
    model, tokenizer = load_model(spec, config["base"])
    task = serving_task(spec)
    train = [encode(tokenizer, task, spec, row) for row in config["train"]]
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=spec.training.learning_rate,
        weight_decay=spec.training.weight_decay,
    )  # fmt: skip
    progress = _restore(spec, config["resume"], model, optimizer)
    if rank == 0 and progress["epoch"] > 0:
        print(f"finetune: resuming after epoch {progress['epoch']} from {config['resume']}", flush=True)
    if rank == 0 and progress.get("base_metrics") is None:
        from batch.finetune.score import score_held_out

        progress["base_metrics"] = score_held_out(spec, model, tokenizer, task, config["held_out"])
    trained = ray.train.torch.prepare_model(model)
    for epoch in range(progress["epoch"] + 1, spec.training.epochs + 1):
        started = time.time()
        loss, examples = _epoch(spec, trained, optimizer, train, epoch, rank, world, tokenizer.pad_token_id)
        seconds = time.time() - started
        progress["history"].append({"epoch": epoch, "loss": round(loss, 4), "examples": examples,
                                    "seconds": round(seconds, 2), "workers": world})  # fmt: skip
        progress["epoch"] = epoch
        if rank == 0:
            print(f"finetune: epoch {epoch}/{spec.training.epochs}: loss {loss:.4f}, {examples} examples "
                  f"in {seconds:.1f} s ({examples / max(seconds, 1e-9):.1f} examples/s, {world} workers)", flush=True)  # fmt: skip
        _report(spec, model, optimizer, tokenizer, task, progress, rank, config["held_out"])
        if rank == 0:
            fault_point("finetune.after_epoch")  # crash tests: the checkpoint of this epoch is stored


def load_model(spec: FinetuneSpec, base: models.Weights):
    """The model as training starts: base weights (a fresh classification head where the base
    has none, or other labels), with the LoRA the spec asks for."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    local = models.resolve(base, spec.storage)  # the driver's identified weights, fetched once per node
    tokenizer = AutoTokenizer.from_pretrained(local)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if spec.method == "classifier":
        model = AutoModelForSequenceClassification.from_pretrained(
            local, num_labels=len(spec.labels), id2label=dict(enumerate(spec.labels)),
            label2id={label: i for i, label in enumerate(spec.labels)}, ignore_mismatched_sizes=True,
        )  # fmt: skip
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(local)
    if spec.adapter is not None:
        from peft import LoraConfig, get_peft_model

        lora = spec.adapter
        model = get_peft_model(model, LoraConfig(
            r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
            task_type="SEQ_CLS" if spec.method == "classifier" else "CAUSAL_LM",
        ))  # fmt: skip
    return model, tokenizer


def _epoch(spec, model, optimizer, examples, epoch, rank, world, pad_id) -> tuple[float, int]:
    """One pass: the same seeded order on every rank, rank r takes every world-th example.
    Shards are padded to equal length so every rank takes the same number of DDP steps."""
    import torch
    import torch.distributed as dist

    order = list(range(len(examples)))
    random.Random(spec.training.seed * 1000 + epoch).shuffle(order)
    per_rank = -(-len(order) // world)
    shard = (order * 2)[rank : rank + per_rank * world : world] if world > 1 else order
    model.train()
    total, steps = 0.0, 0
    for start in range(0, len(shard), spec.training.batch_size):
        batch = collate([examples[i] for i in shard[start : start + spec.training.batch_size]], pad_id)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        total, steps = total + loss.item(), steps + 1
    mean = torch.tensor([total / max(steps, 1)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(mean)
        mean /= world
    return float(mean.item()), len(shard) * world


def collate(examples: list[dict], pad_id: int) -> dict:
    """Right-padded tensors: a classifier pools the last non-pad token, a chat model's padded
    positions carry label -100."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : len(example["input_ids"])] = torch.tensor(example["input_ids"])
        mask[row, : len(example["input_ids"])] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if "label" in examples[0]:
        batch["labels"] = torch.tensor([e["label"] for e in examples])
    else:
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        for row, example in enumerate(examples):
            labels[row, : len(example["labels"])] = torch.tensor(example["labels"])
        batch["labels"] = labels
    return batch


def _restore(spec: FinetuneSpec, resume: str | None, model, optimizer) -> dict:
    import torch
    from ray.train import Checkpoint

    if resume is None:
        return {"epoch": 0, "history": [], "base_metrics": None}
    location = Location(resume, spec.storage)
    with Checkpoint(path=location.path, filesystem=filesystem_for(resume, spec.storage)).as_directory() as folder:
        state = torch.load(Path(folder) / STATE, map_location="cpu", weights_only=True)
        progress = json.loads((Path(folder) / PROGRESS).read_text())
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    return progress


def _report(spec, model, optimizer, tokenizer, task, progress, rank, held_out) -> None:
    """Every rank reports the epoch; rank 0 attaches the checkpoint (and, after the last
    epoch, the held-out score and the folder the job serves)."""
    import ray.train
    import torch

    metrics = {"epoch": progress["epoch"], "loss": progress["history"][-1]["loss"]}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"model": trainable, "optimizer": optimizer.state_dict()}, Path(folder) / STATE)
        if progress["epoch"] == spec.training.epochs:
            from batch.finetune.score import score_held_out

            progress["metrics"] = score_held_out(spec, model, tokenizer, task, held_out)
            save_servable(spec, model, tokenizer, Path(folder) / MODEL)
        (Path(folder) / PROGRESS).write_text(json.dumps(progress, indent=2))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=f"epoch-{progress['epoch']:03d}")  # fmt: skip


def save_servable(spec: FinetuneSpec, model, tokenizer, folder: Path) -> None:
    """What the job loads with no conversion: a peft adapter folder (`adapter:`), or a whole
    classifier folder (`mode: classify`) with LoRA merged into the body; safetensors, the
    tokenizer and its chat template beside the weights."""
    if spec.method == "classifier" and spec.adapter is not None:
        model = model.merge_and_unload()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
