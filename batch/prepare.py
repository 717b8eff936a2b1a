"""The prepare stage: every task turns every row into the requests it needs (a Plan), a
Skip, a RowError, or its finished columns from the result cache (Cached), before any
engine sees the batch.

Personal data is masked here, before any task prepares the row (batch/text/privacy.py):
tasks see only the masked text, so no prompt carries it, and the row cache is keyed by it.
Id columns listed in `privacy.hash_columns` are replaced by their keyed hashes here too,
before anything downstream holds the row.

It runs in actors of its own (Ray Data `map_batches` with a class), not in the engine's:
preparing is CPU work (language identification, masking, segmentation; ~4 ms a row for
translation, and lingua holds the GIL), so in its own process it overlaps with the engine
generating the previous batch instead of leaving the engine idle. The plans travel to the
inference and parse stages pickled in one internal column (`schema.PLANS`).
"""

from __future__ import annotations

import pickle
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import pyarrow as pa

from batch import schema
from batch.cache import RowCache
from batch.config import StorageConfig
from batch.infer import models
from batch.io.storage import Location
from batch.progress import trace
from batch.tasks import build_task
from batch.tasks.base import Cached, Plan, RowError, Skip, Task, TaskConfig
from batch.text import privacy
from batch.text.tokens import TokenCounter, load_counter

RECENT_TEXTS = 50_000  # per actor: a text repeated across batches (reposts) is prepared once
# Only posts are remembered: a 40,000-character document's plans (its pieces for every
# target) weigh hundreds of kB, and 50,000 of them would not fit an actor's memory.
RECENT_MAX_CHARS = 4_000


@dataclass(frozen=True)
class TextStageSpec:
    """What the prepare and parse actors need: the tasks, and where their row cache is."""

    tasks: tuple[tuple[str, TaskConfig], ...]
    text_column: str
    cache_uri: str | None = None  # None: no result cache
    cache_identities: dict[str, str] = field(default_factory=dict, hash=False)  # task -> identity
    storage: StorageConfig = StorageConfig()
    # task -> its engine's resolved max_model_len (None: the model's own); a task listed here
    # budgets its requests with its model's tokenizer, loaded by the prepare stage
    max_model_lens: dict[str, int | None] = field(default_factory=dict, hash=False)
    # model URI -> its weights as the run's identity resolved them (batch/identity.py): the
    # tokenizer comes from exactly the weights the engine serves
    weights: dict[str, models.Weights] = field(default_factory=dict, hash=False)
    privacy: privacy.PrivacyConfig = privacy.PrivacyConfig()
    # the run's first texts (read by the driver): the actors warm their helpers on them
    warm_up_texts: tuple[str, ...] = field(default=(), hash=False)

    def build_tasks(self) -> list[Task]:
        return [build_task(name, config) for name, config in self.tasks]

    def bind_tokenizers(self, tasks: list[Task]) -> None:
        """Give each task its model's tokenizer and context length: one tokenizer per model
        folder, no engine (an s3:// model is fetched to the node's model cache, as the
        engine would)."""
        counters: dict[tuple[str, int | None], TokenCounter] = {}
        for task in tasks:
            if task.name not in self.max_model_lens:
                continue
            key = (task.config.model, self.max_model_lens[task.name])
            if key not in counters:
                path = models.resolve(self.weights[task.config.model], self.storage)
                counters[key] = load_counter(path, key[1], task.config.trust_remote_code)
            task.bind_tokens(counters[key])

    def row_caches(self, tasks: list[Task]) -> dict[str, RowCache]:
        if not self.cache_uri:
            return {}
        root = Location(self.cache_uri, self.storage)
        return {task.name: RowCache(root, self.cache_identities[task.name], task.columns()) for task in tasks}


class PrepareStage:
    """Callable class for `Dataset.map_batches`: built once per actor, called per batch."""

    def __init__(self, spec: TextStageSpec):
        self.spec = spec
        self.tasks = spec.build_tasks()
        for task in self.tasks:  # the language detector loads now, while the engine starts
            task.warm_up("prepare", spec.warm_up_texts)
        trace("prepare.tasks_built")
        spec.bind_tokenizers(self.tasks)
        trace("prepare.tokenizers_bound")
        self.caches = spec.row_caches(self.tasks)
        for cache in self.caches.values():
            cache.load()
        trace("prepare.caches_opened")
        self.masker = privacy.Masker(spec.privacy)
        # read in this process: the key never travels with the job (None: nothing to hash)
        self.hash_key = privacy.hash_key(spec.privacy) if spec.privacy.hash_columns else None
        # text -> (its pickled MaskedText or None, its pickled plans)
        self.recent: OrderedDict[str, tuple[bytes | None, bytes]] = OrderedDict()

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        if self.hash_key is not None:
            batch = privacy.hash_columns(batch, self.spec.privacy.hash_columns, self.hash_key)
        texts, text_errors = schema.text_values(batch, self.spec.text_column)
        # mask the texts not seen lately, then look them all up in the row caches at once
        masked = {text: self.masker.mask(text) for text, error in zip(texts, text_errors)
                  if error is None and text is not None and text not in self.recent}  # fmt: skip
        for cache in self.caches.values():
            cache.prefetch(m.text for m in masked.values())
        masks, blobs = [], []
        for text, error in zip(texts, text_errors):
            if error is not None or text is None:
                prepared = None, self._plans(text, error)
            elif (prepared := self.recent.get(text)) is not None:
                self.recent.move_to_end(text)
            else:
                prepared = self._prepare(masked[text])
                if len(text) <= RECENT_MAX_CHARS:
                    self.recent[text] = prepared
            masks.append(prepared[0])
            blobs.append(prepared[1])
        while len(self.recent) > RECENT_TEXTS:
            self.recent.popitem(last=False)
        batch = schema.set_column(batch, pa.field(schema.MASKED, pa.binary()), masks)
        batch = schema.set_column(batch, pa.field(schema.PLANS, pa.binary()), blobs)
        return schema.charge_busy_time(batch, schema.PREPARE_MS, started)

    def _prepare(self, masked: privacy.MaskedText) -> tuple[bytes | None, bytes]:
        """Masked first, then every task prepares the masked text (and the row cache is
        looked up by it): the one place no task can skip."""
        blob = pickle.dumps(masked, protocol=pickle.HIGHEST_PROTOCOL) if masked.values else None
        return blob, self._plans(masked.text, None)

    def _plans(self, text: str | None, error: str | None) -> bytes:
        plans = {}
        for task in self.tasks:
            cache = self.caches.get(task.name)
            values = cache.get(text) if cache is not None and error is None and text is not None else None
            plans[task.name] = Cached(values) if values is not None else prepare_row(task, text, error)
        return pickle.dumps(plans, protocol=pickle.HIGHEST_PROTOCOL)


def prepare_row(task: Task, text: str | None, text_error: str | None) -> Plan | Skip | RowError:
    if text_error is not None:
        return RowError(text_error)
    if text is None:
        return Skip("no text (null)")
    try:
        return task.prepare(text)
    except Exception as exc:  # noqa: BLE001 - any prepare failure is this row's error
        return RowError(describe(exc))


def describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, RowError) else f"{type(exc).__name__}: {exc}"
