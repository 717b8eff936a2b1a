"""The fine-tuning spec: typed, validated once, before Ray or any worker starts.

A spec is YAML, read like a job file (batch/config.py): `--set key.path=value` overrides,
`extra="forbid"` everywhere, and every error names the field. What it may ask for is what
the job can serve afterwards: LoRA ranks vLLM accepts, target modules vLLM loads, a
classifier with `id2label`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from batch.infer.models import is_hub_id
from batch.config import ConfigError, StorageConfig, Strict, apply_override, format_validation_error, read_yaml_mapping
from batch.infer.engine import LORA_RANKS
from batch.tasks.sentiment import DEFAULT_LABELS

# Modules vLLM's LoRA layers replace in Llama/Qwen/Mistral-style models: an adapter on
# anything else (embeddings, the LM head, a classifier's `score`) would not load there.
VLLM_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class DataSpec(Strict):
    uris: list[str] = Field(min_length=1, description="labelled Parquet: files, folders/prefixes or globs; local or s3://")
    text_column: str = "text"
    label_column: str = "label"
    source_column: str = "source"
    target_column: str = "target"
    split_column: str | None = Field(default=None, description="a column naming each row's split; default: a seeded held-out fraction")  # fmt: skip
    train_value: str = "train"
    held_out_value: str = "test"
    held_out_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0

    @field_validator("uris", mode="before")
    @classmethod
    def _one_uri_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class LoraSpec(Strict):
    rank: int = Field(default=8, description=f"one of the ranks vLLM serves: {', '.join(map(str, LORA_RANKS))}")
    alpha: int = Field(default=16, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default=["q_proj", "v_proj"], min_length=1)

    @field_validator("rank")
    @classmethod
    def _served_rank(cls, rank: int) -> int:
        if rank not in LORA_RANKS:
            raise ValueError(f"{rank} is not a rank vLLM serves; use one of {', '.join(map(str, LORA_RANKS))}")
        return rank

    @field_validator("target_modules")
    @classmethod
    def _served_modules(cls, modules: list[str]) -> list[str]:
        if unknown := [m for m in modules if m not in VLLM_LORA_MODULES]:
            raise ValueError(f"{unknown} cannot be served by vLLM's LoRA; use some of {', '.join(VLLM_LORA_MODULES)}")
        return modules


class TrainingSpec(Strict):
    epochs: int = Field(default=3, ge=1)
    learning_rate: float = Field(default=2e-4, gt=0)
    batch_size: int = Field(default=16, ge=1, description="examples per step on each worker")
    weight_decay: float = Field(default=0.0, ge=0)
    max_length: int = Field(default=256, ge=8, description="tokens per example (prompt and answer); longer ones are cut")
    seed: int = 0


class ScalingSpec(Strict):
    workers: int = Field(default=1, ge=1, description="Ray Train workers (DDP ranks)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1, gt=0)
    gpus_per_worker: float | None = Field(default=None, gt=0, description="default: 1 with use_gpu")
    accelerator_type: str | None = None
    max_failures: int = Field(default=0, ge=0, description="worker failures Ray Train retries within one run (each restart resumes from the last checkpoint)")  # fmt: skip


class EvalSpec(Strict):
    max_rows: int = Field(default=500, ge=1, description="held-out rows scored for the card (base and fine-tune)")
    max_new_tokens: int = Field(default=128, ge=1, description="translation: tokens generated per held-out row")


class FinetuneSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: Literal["sentiment", "translation"]
    method: Literal["lora", "classifier"]
    base_model: str = Field(description="local directory, s3:// prefix or hub id")
    data: DataSpec
    labels: list[str] = Field(default=list(DEFAULT_LABELS), min_length=2, description="sentiment: the label set, in id order")  # fmt: skip
    target_language: str | None = Field(default=None, description="translation: the language the targets are in (ISO 639-1)")  # fmt: skip
    lora: LoraSpec | None = Field(default=None, description="lora: the adapter; classifier: LoRA on the body (none: train every weight)")  # fmt: skip
    training: TrainingSpec = TrainingSpec()
    scaling: ScalingSpec = ScalingSpec()
    eval: EvalSpec = EvalSpec()
    output: str = Field(description="the folder the job serves (local or s3://)")
    checkpoints: str | None = Field(default=None, description="per-epoch checkpoints; default: <output>.checkpoints beside it")  # fmt: skip
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _method_fits_task(self) -> "FinetuneSpec":
        if self.task == "translation" and self.method != "lora":
            raise ValueError("method: translation is trained as lora (a chat model answering with the target text)")
        if self.task == "translation" and not self.target_language:
            raise ValueError("target_language: required for translation (the language of data.target_column)")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels: must be distinct")
        return self

    @property
    def adapter(self) -> LoraSpec | None:
        """The LoRA to train: always one for `lora`, optional on a classifier's body."""
        return self.lora or (LoraSpec() if self.method == "lora" else None)

    @property
    def checkpoint_uri(self) -> str:
        # Beside the output, not inside it: the served folder holds only what the job loads.
        return self.checkpoints or self.output.rstrip("/") + ".checkpoints"

    def columns(self) -> dict[str, str]:
        """Role -> column in the data (the split column not included)."""
        if self.task == "sentiment":
            return {"text": self.data.text_column, "label": self.data.label_column}
        return {"source": self.data.source_column, "target": self.data.target_column}


def load_spec(path: str | os.PathLike, overrides: list[str] = ()) -> FinetuneSpec:
    """Read, override, validate. Raises ConfigError with a message naming the field."""
    path = Path(path)
    raw = read_yaml_mapping(path, "fine-tuning spec", "a mapping of keys (name, task, method, base_model, data, output, ...)")
    for override in overrides:
        apply_override(raw, override)
    return validate_spec(raw, source=str(path))


def validate_spec(raw: dict[str, Any], source: str = "spec") -> FinetuneSpec:
    try:
        spec = FinetuneSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid fine-tuning spec:\n" + format_validation_error(exc, FinetuneSpec)) from None
    return _absolute_local_paths(spec)


def _absolute_local_paths(spec: FinetuneSpec) -> FinetuneSpec:
    """Local paths as the driver sees them: Ray Train workers do not run in the driver's
    working directory, so `.demo/models/x` would name nothing there."""

    def absolute(uri: str | None) -> str | None:
        if uri is None or uri.startswith("s3://") or (is_hub_id(uri) and not Path(uri).exists()):
            return uri
        return str(Path(uri).expanduser().absolute())

    return spec.model_copy(update={
        "base_model": absolute(spec.base_model), "output": absolute(spec.output), "checkpoints": absolute(spec.checkpoints),
        "data": spec.data.model_copy(update={"uris": [absolute(uri) for uri in spec.data.uris]}),
    })  # fmt: skip
