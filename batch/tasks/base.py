"""What a task is: a config, the columns it adds, how a row becomes requests, how results
become column values. Tasks never touch vLLM, Ray or storage; they are plain functions of
one row, which is what makes them easy to test and to add.

Flow of one row through a task:
    prepare(text) -> Plan(requests, state)  |  Skip(reason)     (CPU, no model)
    engine answers every request (the stage deduplicates identical ones)
    parse(text, plan, results) -> {column: value}  or raise RowError
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field


class TaskConfig(BaseModel):
    """Fields every task has: the model that serves it and an optional LoRA adapter."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str = Field(description="local directory, s3:// prefix, or hub id of the (base) model")
    adapter: str | None = Field(default=None, description="LoRA adapter directory (local or s3://) on top of model")
    prompt_version: str = Field(default="1", description="bump when editing the prompt; part of the result cache key")
    trust_remote_code: bool = Field(default=False, description="run the model repository's own Python code")


# --- requests and results: the only vocabulary shared by tasks and the engine ---------


@dataclass(frozen=True)
class Generate:
    """A chat-formatted generation request. Frozen so identical requests hash alike and
    are inferred once."""

    messages: tuple[tuple[str, str], ...]  # (role, content), rendered by the model's chat template
    max_tokens: int
    choices: tuple[str, ...] | None = None  # constrained decoding: the output is exactly one of these
    adapter: str | None = None  # name of a LoRA adapter known to the engine


@dataclass(frozen=True)
class Classify:
    """A sequence-classification request for a pooling (classifier) model."""

    text: str


@dataclass(frozen=True)
class Score:
    """How likely each continuation is as the whole answer to a chat prompt: exact
    per-label log-probabilities for a generative classifier."""

    messages: tuple[tuple[str, str], ...]
    continuations: tuple[str, ...]
    adapter: str | None = None


Request = Generate | Classify | Score


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" or "length" (hit max_tokens)
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Classification:
    probabilities: tuple[float, ...]  # aligned with the engine's labels
    labels: tuple[str, ...]
    prompt_tokens: int


@dataclass(frozen=True)
class Scores:
    logprobs: tuple[float, ...]  # aligned with the request's continuations
    prompt_tokens: int


@dataclass(frozen=True)
class Failure:
    """A request the engine could not answer (e.g. the prompt is longer than the model allows)."""

    reason: str


Result = Completion | Classification | Scores | Failure


@dataclass
class Plan:
    """What a row needs from the engine, and what parse will need to rebuild the answer."""

    requests: list[Request]
    state: Any = None


@dataclass
class Skip:
    """A row that needs no inference; `values` are the columns it still gets (may be empty)."""

    reason: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Cached:
    """A row whose columns for this task come whole from the result cache (batch/cache.py)."""

    values: dict[str, Any]


class RowError(Exception):
    """A row-level failure: recorded in the row's `error` column; the batch goes on."""


class Task:
    """Base class of a task kind. A subclass sets `kind`, `Config` (whose `kind` field
    names it), `runner`, and implements `columns`, `prepare` and `parse`. An instance is
    one named task of a job (`name`: its key under `tasks:`; default: the class's)."""

    kind: ClassVar[str]
    name: str
    Config: ClassVar[type[TaskConfig]]
    runner: ClassVar[Literal["generate", "classify"]] = "generate"

    def __init__(self, config: TaskConfig, name: str | None = None):
        self.config = config
        self.name = name or type(self).name
        # The serving model's tokenizer and context (batch/text/tokens.py), bound by the
        # prepare stage; None where no tokenizer is loaded (parse, unit tests): a task then
        # budgets by characters, or sends the text whole.
        self.tokens: Any = None

    def bind_tokens(self, counter: Any) -> None:
        """Budget requests in the serving model's tokens from now on."""
        self.tokens = counter

    def columns(self) -> list[pa.Field]:
        raise NotImplementedError

    def prepare(self, text: str) -> Plan | Skip:
        raise NotImplementedError

    def parse(self, text: str, plan: Plan, results: list[Result]) -> dict[str, Any]:
        raise NotImplementedError

    # --- shared helpers -------------------------------------------------------------

    def adapters(self) -> dict[str, str]:
        """LoRA adapters this task needs from its engine: engine-wide name -> URI."""
        return {self.name: self.config.adapter} if self.config.adapter else {}

    @property
    def adapter_name(self) -> str | None:
        """The adapter name to put on this task's requests (None: the base model)."""
        return self.name if self.config.adapter else None

    def warm_up(self, stage: Literal["prepare", "parse"], texts: Sequence[str] = ()) -> None:
        """Load what `stage` needs (a language detector: seconds) before its first batch:
        prepare loads it while the engine starts, parse in a background thread. `texts`:
        the run's first texts, so that what loads is what the first batch will use."""

    def check_model_labels(self, id2label: dict[str, str]) -> list[str]:
        """Problems with a classifier's own labels for this task (classify runner only)."""
        return []

    def check_model_config(self, model_config: dict[str, Any]) -> list[str]:
        """Problems with a classifier's config.json for this task (classify runner only)."""
        return self.check_model_labels(model_config.get("id2label") or {})

    def describe(self) -> dict[str, Any]:
        """What the task is, for the run summary (`tasks`) and the report."""
        return {"name": self.name, "kind": self.kind}

    def engine_runner(self) -> Literal["generate", "classify"]:
        return self.runner

    def scores_continuations(self) -> bool:
        """Whether this task sends `Score` requests (prompt log-probabilities)."""
        return False

    def model_column(self) -> str:
        return f"{self.name}_model"
