"""Label tasks: each row gets labels from a fixed label set, under the job's name for the
task (`sentiment`, `topic`, `emotion`, ...). A job runs any number of them; each is a named
entry of `tasks:` with `kind: label` (batch/tasks/__init__.py), its own instruction, labels,
column prefix, label map and confidence rule. Label tasks that name the same model share
one engine (batch/pipeline.py groups tasks by model).

Single-label (the default): one label per row.
- generate: a chat model chooses among the labels only, so the answer is always exactly one
  valid label, whatever the text says (prompt injections included). With `probabilities`
  on (the default) every label is scored as the whole answer (one prefill each, no
  decoding) and the most likely one wins: exact per-label probabilities. With it off, vLLM's
  structured outputs (`choice` = the labels) decode the label: cheaper, no probabilities.
- classify: a sequence-classification model (vLLM pooling runner) gives one probability
  per label of its own `id2label`, mapped onto the job's labels by `label_map`.
A `min_confidence` sends rows whose best probability is lower to `low_confidence_label`,
keeping the raw probabilities in `<column>_probs`.

Multi-label (`multi: true`): every label is judged on its own, and the row gets the list of
labels whose probability is at least `threshold` (in label order, possibly empty).
- generate: per label, one request asks the `question` about that label after the post, and
  "yes" and "no" are scored as the whole answer: the label's probability is
  P(yes) / (P(yes) + P(no)), exact and independent of the other labels. The post comes
  first, so the requests of one row share their prefix (vLLM's prefix cache). With
  `probabilities: false` the answer is decoded as one of yes/no instead (no probabilities).
- classify: a classifier trained for multi-label classification (its config.json says
  `problem_type: multi_label_classification`), for which vLLM returns a sigmoid per label.

A text longer than the model's context (counted in the model's own tokens, with the prompt
around it) is handled by `long_text`:
- chunk (default): split at paragraph, sentence, clause or word boundaries
  (batch/text/segment.py) into chunks that each fit; the row's probabilities are the mean of
  the chunks' weighted by their token counts, so the label (their argmax, or those over the
  threshold) still agrees with them. Without probabilities the label is the token-weighted
  vote (multi-label: the token-weighted share of "yes" against the threshold).
- truncate: only the head (or head and tail, `truncate_keep: head_and_tail`) within the budget.
- error: the row fails, naming its length.
`<column>_long_text` records what was done: null (the text fit), `chunk` or `truncate`.

Columns, with prefix P = `column` (default: the task's name):
`P` (string; multi-label: list<string>), `P_probs` map<string, float64>, `P_confidence`
float64 (null for multi-label), `P_long_text` string; and `<name>_model` like every task.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from batch.tasks.base import (
    Classification,
    Classify,
    Completion,
    Failure,
    Generate,
    Plan,
    Request,
    Result,
    RowError,
    Score,
    Scores,
    Skip,
    Task,
    TaskConfig,
)
from batch.text import segment

YES, NO = "yes", "no"
QUESTION = 'Does the label "{label}" apply to this post? Answer yes or no.'


@dataclass(frozen=True)
class _State:
    long_text: str | None = None  # None: the text fit whole; "chunk" or "truncate"
    weights: tuple[int, ...] = ()  # per chunk: its token count


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


class LabelConfig(TaskConfig):
    kind: Literal["label"] = "label"
    instruction: str = Field(
        description="the system prompt; `{labels}` is replaced by the labels, comma-separated"
    )
    labels: list[str] = Field(min_length=2)
    column: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="output column prefix; default: the task's name"
    )
    mode: Literal["generate", "classify"] = "generate"
    label_map: dict[str, str] = Field(
        default_factory=dict, description="classifier label -> job label, where the names differ"
    )
    probabilities: bool = Field(default=True, description="generate mode: score every label (probabilities)")
    min_confidence: float | None = Field(default=None, gt=0, lt=1)
    low_confidence_label: str | None = None
    multi: bool = Field(default=False, description="several labels per row: an independent probability per label")
    threshold: float | None = Field(
        default=None, gt=0, lt=1, description="multi-label: labels with at least this probability are kept (default 0.5)"
    )
    question: str = Field(
        default=QUESTION, description="multi-label, generate mode: asked per label after the post; `{label}` is the label"
    )
    long_text: Literal["chunk", "truncate", "error"] = Field(
        default="chunk", description="a text longer than the model's context: mean over chunks, head only, or fail"
    )
    truncate_keep: Literal["head", "head_and_tail"] = Field(
        default="head", description="long_text: truncate keeps the head, or half the budget each of head and tail"
    )

    @model_validator(mode="after")
    def _label_references(self) -> "LabelConfig":
        if unknown := sorted(set(self.label_map.values()) - set(self.labels)):
            raise ValueError(f"label_map maps onto {unknown}, which are not in labels {self.labels}")
        if (self.min_confidence is None) != (self.low_confidence_label is None):
            raise ValueError("set min_confidence and low_confidence_label together")
        if self.low_confidence_label is not None and self.low_confidence_label not in self.labels:
            raise ValueError(f"low_confidence_label {self.low_confidence_label!r} is not in labels {self.labels}")
        if self.multi and self.min_confidence is not None:
            raise ValueError("min_confidence is for single-label tasks; a multi-label task keeps labels over its threshold")
        if not self.multi and self.threshold is not None:
            raise ValueError("threshold is for multi-label tasks (multi: true); a single-label task uses min_confidence")
        if unknown := sorted(_placeholders(self.instruction) - {"labels"}):
            raise ValueError(f"instruction: unknown placeholder {{{unknown[0]}}}; the only one is {{labels}}")
        if unknown := sorted(_placeholders(self.question) - {"label"}):
            raise ValueError(f"question: unknown placeholder {{{unknown[0]}}}; the only one is {{label}}")
        return self

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels) or any(not label.strip() for label in labels):
            raise ValueError("labels must be distinct, non-empty strings")
        return labels

    @property
    def cutoff(self) -> float:
        return 0.5 if self.threshold is None else self.threshold


class LabelTask(Task):
    kind = "label"
    name = "label"
    Config = LabelConfig

    config: LabelConfig

    @property
    def column(self) -> str:
        return self.config.column or self.name

    def engine_runner(self) -> Literal["generate", "classify"]:
        return self.config.mode

    def columns(self) -> list[pa.Field]:
        label_type = pa.list_(pa.string()) if self.config.multi else pa.string()
        return [
            pa.field(self.column, label_type),
            pa.field(f"{self.column}_probs", pa.map_(pa.string(), pa.float64())),
            pa.field(f"{self.column}_confidence", pa.float64()),
            pa.field(f"{self.column}_long_text", pa.string()),
        ]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "column": self.column,
                "labels": list(self.config.labels), "multi": self.config.multi}  # fmt: skip

    def scores_continuations(self) -> bool:
        return self.config.mode == "generate" and self.config.probabilities

    def check_model_labels(self, id2label: dict[str, str]) -> list[str]:
        unmapped = [label for label in id2label.values() if self.config.label_map.get(label, label) not in self.config.labels]
        if not unmapped:
            return []
        return [
            f"tasks.{self.name}: the classifier's labels {sorted(unmapped)} are not among labels {self.config.labels}; "
            f"map them with tasks.{self.name}.label_map (e.g. {{{unmapped[0]}: {self.config.labels[0]}}})"
        ]

    def check_model_config(self, model_config: dict[str, Any]) -> list[str]:
        problems = super().check_model_config(model_config)
        if self.config.multi and model_config.get("problem_type") != "multi_label_classification":
            problems.append(
                f"tasks.{self.name}: multi: true in classify mode needs a multi-label classifier (config.json "
                f"problem_type: multi_label_classification, so vLLM gives a sigmoid per label); this one has "
                f"{model_config.get('problem_type')!r}, whose probabilities compete"
            )
        return problems

    # --- prepare ---------------------------------------------------------------------------

    def prepare(self, text: str) -> Plan | Skip:
        if not text.strip():
            return Skip("empty text")
        if self.tokens is None or (not self.tokens.exceeds(text, self.tokens.max_model_len) and self._fits(text)):
            return Plan(self._requests(text), _State())
        if self.config.long_text == "error":
            raise RowError(
                f"text of {self.tokens.count(text)} tokens does not fit max_model_len {self.tokens.max_model_len}; "
                f"set tasks.{self.name}.long_text to chunk or truncate"
            )
        if self.config.long_text == "truncate":
            return Plan(self._requests(self._truncated(text)), _State("truncate"))
        chunks = self._chunks(text)
        requests = [request for chunk in chunks for request in self._requests(chunk)]
        return Plan(requests, _State("chunk", tuple(map(self.tokens.count, chunks))))

    def _requests(self, text: str) -> list[Request]:
        """A text's requests: one (single-label, or a classifier), or one per label (multi-label, generate)."""
        if self.config.mode == "classify":
            return [Classify(text)]  # a pooling model takes no adapter here
        if not self.config.multi:
            return [self._ask(self._messages(text), tuple(self.config.labels))]
        return [self._ask(self._messages(text, label), (YES, NO)) for label in self.config.labels]

    def _ask(self, messages: tuple[tuple[str, str], ...], answers: tuple[str, ...]) -> Request:
        if self.config.probabilities:
            return Score(messages=messages, continuations=answers, adapter=self.adapter_name)
        return Generate(messages=messages, max_tokens=8, choices=answers, adapter=self.adapter_name)

    def _messages(self, text: str, label: str | None = None) -> tuple[tuple[str, str], ...]:
        system = self.config.instruction.format(labels=", ".join(self.config.labels))
        post = f"<post>\n{text}\n</post>"
        if label is not None:
            post += "\n\n" + self.config.question.format(label=label)
        return (("system", system), ("user", post))

    def _answers(self) -> tuple[str, ...]:
        return (YES, NO) if self.config.multi else tuple(self.config.labels)

    def _prompts(self, text: str) -> int:
        """Tokens of the longest prompt this text is sent in."""
        if not self.config.multi:
            return self.tokens.prompt(self._messages(text))
        return max(self.tokens.prompt(self._messages(text, label)) for label in self.config.labels)

    # --- long texts: what fits, in the model's own tokens --------------------------------

    def _fits(self, text: str) -> bool:
        """As the engine checks it (batch/infer/engine.py): a classifier's tokens, a scored
        prompt plus its longest answer and end-of-sequence, a generated answer's 8 tokens."""
        counter = self.tokens
        if self.config.mode == "classify":
            return counter.with_special_tokens(text) <= counter.max_model_len
        prompt = self._prompts(text)
        if self.config.probabilities:
            longest = max(counter.count(answer) for answer in self._answers()) + 1
            return prompt + longest < counter.max_model_len
        return prompt + 8 <= counter.max_model_len

    def _text_budget(self) -> int:
        """Text tokens that fit beside the prompt (a start: `_fits` has the last word)."""
        counter = self.tokens
        if self.config.mode == "classify":
            overhead = counter.with_special_tokens("")
        else:
            overhead = self._prompts("")
        reserve = 0 if self.config.mode == "classify" else max(map(counter.count, self._answers())) + 9
        budget = counter.max_model_len - overhead - reserve
        if budget < 1:
            raise RowError(f"the prompt alone ({overhead} tokens) does not fit max_model_len {counter.max_model_len}")
        return budget

    def _chunks(self, text: str) -> tuple[str, ...]:
        counter, limit = self.tokens, self._text_budget()

        def resplit(piece: str, budget: int) -> segment.Pieces:
            return segment.split_by(piece, counter.count, budget, counter.head)

        return segment.fit(resplit(text, limit), self._fits, resplit, limit).pieces

    def _truncated(self, text: str) -> str:
        """The head (and tail) of the text within the budget, shrunk until it fits."""
        budget = self._text_budget()
        while True:
            # cut on grapheme-cluster boundaries: a Thai vowel mark never loses its consonant
            if self.config.truncate_keep == "head":
                kept = text[: segment.grapheme_floor(text, self.tokens.head(text, budget))]
            else:
                head = segment.grapheme_floor(text, self.tokens.head(text, budget // 2))
                tail = segment.grapheme_ceil(text, self.tokens.tail(text, budget - budget // 2 - 2))
                kept = text[:head] + "\n…\n" + text[max(head, tail):]
            if self._fits(kept) or budget <= 1:
                return kept
            budget = budget * 9 // 10

    # --- parse ----------------------------------------------------------------------------

    def parse(self, text: str, plan: Plan, results: list[Result]) -> dict[str, Any]:
        state: _State = plan.state if isinstance(plan.state, _State) else _State()
        for result in results:
            if isinstance(result, Failure):
                where = f"chunk {results.index(result) + 1}/{len(results)}: " if len(results) > 1 else ""
                raise RowError(where + result.reason)
        # one result per chunk, or (multi-label, generate) one per chunk and label
        per_chunk = len(self.config.labels) if self.config.multi and self.config.mode == "generate" else 1
        chunks = [results[i : i + per_chunk] for i in range(0, len(results), per_chunk)]
        weights = state.weights or (1,) * len(chunks)
        total = sum(weights)
        long_text = {f"{self.column}_long_text": state.long_text}
        if isinstance(results[0], (Classification, Scores)):
            probs = [self._probabilities(chunk) for chunk in chunks]
            mean = {label: sum(w * p[label] for w, p in zip(weights, probs)) / total for label in self.config.labels}
            return {**self._labelled(mean), **long_text}
        answers = [self._answered(chunk) for chunk in chunks]
        if self.config.multi:  # the token-weighted share of "yes", against the threshold
            share = {label: sum(w for w, yes in zip(weights, answers) if label in yes) / total for label in self.config.labels}
            chosen: Any = [label for label in self.config.labels if share[label] >= self.config.cutoff]
        else:
            votes = dict.fromkeys(self.config.labels, 0)
            for weight, (label,) in zip(weights, answers):
                votes[label] += weight
            chosen = max(votes, key=votes.get)
        return {self.column: chosen, f"{self.column}_probs": None, f"{self.column}_confidence": None, **long_text}

    def _answered(self, chunk: list[Result]) -> list[str]:
        """Decoded answers of one chunk: its label, or (multi-label) the labels answered yes."""
        texts = []
        for result in chunk:
            assert isinstance(result, Completion)
            texts.append(result.text.strip())
        allowed = self._answers()
        if bad := [t for t in texts if t not in allowed]:
            raise RowError(f"model answered {bad[0]!r}, not one of {list(allowed)}")
        if self.config.multi:
            return [label for label, answer in zip(self.config.labels, texts) if answer == YES]
        return texts

    def _probabilities(self, chunk: list[Result]) -> dict[str, float]:
        """One chunk's probability per job label."""
        if isinstance(chunk[0], Classification):
            return self._job_probabilities(chunk[0])
        if self.config.multi:  # per label: P(yes) against P(no)
            return {label: _softmax(result.logprobs)[0] for label, result in zip(self.config.labels, chunk)}
        return dict(zip(self.config.labels, _softmax(chunk[0].logprobs)))

    def _labelled(self, probs: dict[str, float]) -> dict[str, Any]:
        if self.config.multi:
            chosen = [label for label in self.config.labels if probs[label] >= self.config.cutoff]
            return {self.column: chosen, f"{self.column}_probs": probs, f"{self.column}_confidence": None}
        label = max(probs, key=probs.get)
        confidence = probs[label]
        if self.config.min_confidence is not None and confidence < self.config.min_confidence:
            label = self.config.low_confidence_label
        return {self.column: label, f"{self.column}_probs": probs, f"{self.column}_confidence": confidence}

    def _job_probabilities(self, result: Classification) -> dict[str, float]:
        """A classifier's probabilities on the job's labels: several model labels mapped onto
        one add up (single-label, they compete) or the likeliest counts (multi-label)."""
        probs = dict.fromkeys(self.config.labels, 0.0)
        for model_label, p in zip(result.labels, result.probabilities):
            job_label = self.config.label_map.get(model_label, model_label)
            if job_label not in probs:
                raise RowError(f"classifier label {model_label!r} maps to no job label; set tasks.{self.name}.label_map")
            probs[job_label] = max(probs[job_label], float(p)) if self.config.multi else probs[job_label] + float(p)
        return probs


def _softmax(logprobs: tuple[float, ...]) -> list[float]:
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    return [w / sum(weights) for w in weights]
