"""The one module that imports vLLM.

`EngineSpec` says which model to serve and how (plain data, picklable, built on the driver);
`Engine` wraps one `vllm.LLM` and answers the task vocabulary (`Generate`, `Classify`) in
input order. One entry point per model kind, as vLLM itself has: `generate` for chat
models (with constrained choice and LoRA per request), `classify` for pooling models.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from batch.config import EngineConfig, StorageConfig
from batch.faults import fault_raise
from batch.infer import models
from batch.progress import trace
from batch.tasks.base import Classification, Classify, Completion, Failure, Generate, Score, Scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSpec:
    """Everything that decides what an engine computes and how it is placed."""

    model: str  # local directory, s3:// prefix or hub id; resolved on the actor's node
    runner: Literal["generate", "classify"]
    device: Literal["cpu", "cuda"]
    storage: StorageConfig = StorageConfig()
    adapters: tuple[tuple[str, str], ...] = ()  # (name, local directory or s3:// prefix)
    dtype: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    enable_prefix_caching: bool = True
    seed: int = 0
    kv_cache_gib: float | None = None
    in_process: bool = False
    trust_remote_code: bool = False
    # Content identities of the model and adapters, resolved once on the driver
    # (batch/identity.py); a spec built without them (a test, a notebook) identifies them here.
    weights: tuple[models.Weights, ...] = ()
    extra: dict = field(default_factory=dict, hash=False, compare=False)


def resolve_engine_settings(config: EngineConfig, device: Literal["cpu", "cuda"]) -> dict:
    """Per-device defaults for fields the job left unset.

    CPU (vLLM's CPU build; measured on the build machines, see shared/PLATFORM-NOTES.md):
    float32 (bfloat16 dies with SIGILL on CPUs without AVX512-BF16), eager mode, 30% of RAM
    for the KV cache (vLLM's default 0.92 refuses to start next to Ray), short contexts.
    CUDA: vLLM's own defaults (bf16/fp16 by model, CUDA graphs, 90% of GPU memory), which
    is what published vLLM throughput figures use. One engine per GPU unless the model does
    not fit: a 7-8B model in bf16 (~15 GB of weights) fits a 24 GB L4/A10G with room for
    KV cache; 70B needs tensor_parallel_size 4 on 80 GB cards. The batch handed to an actor
    (`batch_size_for`) is a multiple of vLLM's max_num_seqs (256 by default): the engine
    drains each call's tail at falling occupancy, so requests in flight must stay well
    above max_num_seqs for most of the call (vLLM's own offline benchmarks submit
    thousands of prompts per call).
    """
    if device == "cpu":
        # 1 GiB of KV cache is thousands of short requests' worth; vLLM's CPU default takes
        # a share of all RAM per engine, which several engines on one node cannot afford.
        # In process: vLLM's engine core otherwise runs in a process of its own that
        # re-imports vLLM and torch (13 s here) and competes with the actor for the same
        # cores; in the actor, the engine started in 3 s instead of 29 s and generated 20%
        # faster (BENCHMARKS.md). On GPUs the separate process overlaps scheduling on the
        # CPU with the GPU's work, which is how vLLM's published figures run. In process,
        # vLLM's CPU kernel registration reads an attribute of every module-level object of
        # the process: a process that imported Flask (whose proxies raise outside a request)
        # must set in_process: false. Ray actors import no Flask.
        defaults = dict(
            dtype="float32", enforce_eager=True, gpu_memory_utilization=0.3, max_model_len=1024, kv_cache_gib=1.0,
            in_process=True,
        )  # fmt: skip
    else:
        defaults = dict(
            dtype="auto", enforce_eager=False, gpu_memory_utilization=0.9, max_model_len=None, kv_cache_gib=None,
            in_process=False,
        )  # fmt: skip
    chosen = {key: getattr(config, key) for key in defaults if getattr(config, key, None) is not None}
    return {**defaults, **chosen}


def batch_size_for(config: EngineConfig, device: Literal["cpu", "cuda"]) -> int:
    """1024 rows per slice (one engine call) on both devices. Measured on the CPU build (BENCHMARKS.md): 256
    left the engine idle between calls (job/raw 0.77), 1024 reached 0.87. On GPUs it keeps
    requests in flight at 4x vLLM's default max_num_seqs (256)."""
    return config.batch_size or 1024


REQUEST_LOG = "BATCH_REQUEST_LOG"  # env: a file to append one JSON line per request sent to the engine


def log_requests(kind: str, max_model_len: int, entries: list[tuple[str, int, int]]) -> None:
    """Opt-in audit of exactly what the engine was asked: per request sent, the rendered
    prompt (a classifier's text), its tokens and max_tokens, so a test or an operator can
    check that every request fit the context and that no personal datum reached a model.
    Lines are appended in one write per call, so the actors of a run can share the file."""
    path = os.environ.get(REQUEST_LOG)
    if not path or not entries:
        return
    lines = "".join(
        json.dumps({"kind": kind, "prompt": text, "prompt_tokens": p, "max_tokens": m, "max_model_len": max_model_len},
                   ensure_ascii=False) + "\n"
        for text, p, m in entries
    )  # fmt: skip
    with open(path, "a", encoding="utf-8") as log_file:
        log_file.write(lines)


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM accepts for max_lora_rank


class Engine:
    """One vLLM engine. Built once per actor (weights load once), used for every batch."""

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        # Resolve on this node: an s3:// model is fetched once per node into a local cache.
        known = {weights.uri: weights for weights in spec.weights}
        model = known.get(spec.model) or models.identify(spec.model, spec.storage)
        adapters = {name: known.get(uri) or models.identify(uri, spec.storage) for name, uri in spec.adapters}
        self.model_path = models.resolve(model, spec.storage)
        adapter_paths = {name: models.resolve(weights, spec.storage) for name, weights in adapters.items()}
        self.model_fingerprint = model.short
        self.adapter_fingerprints = {name: weights.short for name, weights in adapters.items()}
        kwargs = dict(
            model=self.model_path,
            runner="pooling" if spec.runner == "classify" else "generate",
            dtype=spec.dtype,
            max_model_len=spec.max_model_len,
            tensor_parallel_size=spec.tensor_parallel_size,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            enforce_eager=spec.enforce_eager,
            enable_prefix_caching=spec.enable_prefix_caching,
            seed=spec.seed,
            trust_remote_code=spec.trust_remote_code,
            # Weights load from safetensors only: a pickled .bin checkpoint can run code.
            load_format="safetensors",
            **spec.extra,
        )
        if spec.kv_cache_gib:
            kwargs["kv_cache_memory_bytes"] = int(spec.kv_cache_gib * 2**30)
        if spec.max_num_seqs:
            kwargs["max_num_seqs"] = spec.max_num_seqs
        if adapter_paths:
            rank = max(models.lora_rank(path) for path in adapter_paths.values())
            kwargs.update(
                enable_lora=True,
                max_lora_rank=next(r for r in LORA_RANKS if r >= rank),
                max_loras=len(adapter_paths),  # all adapters resident: one pass serves them all
            )
        self._kwargs = kwargs
        self._lora = self._lora_requests(tuple(adapter_paths.items()))
        self.labels = self._classifier_labels() if spec.runner == "classify" else ()

    # The engine starts on first use, not with the actor: a batch whose answers all come
    # from the result cache (a warm nightly rerun) never pays the engine's start-up.
    @cached_property
    def llm(self):
        # vLLM reads this when the engine is built; one engine per actor process, so the
        # process-wide variable is this engine's own setting.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if self.spec.in_process else "1"
        trace("engine.import")
        from vllm import LLM

        trace("engine.build")
        log.info(
            "starting vLLM engine for %s (%s on %s, engine core %s)", self.spec.model, self.spec.runner,
            self.spec.device, "in this process" if self.spec.in_process else "in its own process",
        )  # fmt: skip
        llm = LLM(**self._kwargs)
        trace("engine.built")
        return llm

    @property
    def started(self) -> bool:
        return "llm" in self.__dict__

    def close(self) -> None:
        """Stop the engine's processes now (otherwise they stop when this process exits)."""
        if self.started:
            self.llm.llm_engine.engine_core.shutdown()
            del self.__dict__["llm"]

    @cached_property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    @cached_property
    def max_model_len(self) -> int:
        return self.llm.llm_engine.model_config.max_model_len

    # --- generation -----------------------------------------------------------------

    def render(self, request: Generate | Score) -> str:
        messages = [{"role": role, "content": content} for role, content in request.messages]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: list[Generate]) -> list[Completion | Failure]:
        """Answer in input order. A request that cannot run (prompt longer than the model
        allows, unknown adapter) gets a Failure; the others still run."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        results: list[Completion | Failure | None] = [None] * len(requests)
        prompts, params, loras, slots, sent = [], [], [], [], []
        rendered = [self.render(request) for request in requests]
        for i, request in enumerate(requests):
            # Tokenize once here (to check the length) and hand vLLM the ids, not the text.
            prompt_ids = self.tokenizer(rendered[i], add_special_tokens=False)["input_ids"]
            prompt_tokens = len(prompt_ids)
            room = self.max_model_len - prompt_tokens
            if room < 1:
                results[i] = Failure(f"prompt of {prompt_tokens} tokens does not fit max_model_len {self.max_model_len}")
                continue
            if request.adapter is not None and request.adapter not in self._lora:
                results[i] = Failure(f"unknown adapter {request.adapter!r}")
                continue
            structured = StructuredOutputsParams(choice=list(request.choices)) if request.choices else None
            params.append(
                SamplingParams(
                    max_tokens=min(request.max_tokens, room),
                    temperature=0.0,
                    min_tokens=0 if request.choices else 1,
                    structured_outputs=structured,
                )
            )
            prompts.append(TokensPrompt(prompt_token_ids=prompt_ids))
            sent.append((rendered[i], prompt_tokens, request.max_tokens))  # as asked, before clamping to the room left
            loras.append(self._lora.get(request.adapter) if request.adapter else None)
            slots.append(i)
        if prompts:
            log_requests("generate", self.max_model_len, sent)
            outputs = self._call(self.llm.generate, prompts, params, lora_request=loras if self._lora else None)
            for slot, output in zip(slots, outputs):
                completion = output.outputs[0]
                results[slot] = Completion(
                    text=completion.text,
                    finish_reason=completion.finish_reason or "stop",
                    prompt_tokens=len(output.prompt_token_ids or ()),
                    output_tokens=len(completion.token_ids),
                )
        return results  # type: ignore[return-value]

    # --- scoring ----------------------------------------------------------------------

    def score(self, requests: list[Score]) -> list[Scores | Failure]:
        """Log-probability of each continuation (followed by end-of-sequence, so it is the
        whole answer) after the rendered prompt: one prefill per continuation, no decoding."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        results: list[Scores | Failure | None] = [None] * len(requests)
        prompts, loras, spans = [], [], []
        rendered = [self.render(request) for request in requests]
        for i, request in enumerate(requests):
            if request.adapter is not None and request.adapter not in self._lora:
                results[i] = Failure(f"unknown adapter {request.adapter!r}")
                continue
            prompt_ids = self.tokenizer(rendered[i], add_special_tokens=False)["input_ids"]
            continuations = [self.tokenizer(c, add_special_tokens=False)["input_ids"] + eos for c in request.continuations]
            longest = len(prompt_ids) + max(len(c) for c in continuations)
            if longest >= self.max_model_len:
                results[i] = Failure(f"prompt of {len(prompt_ids)} tokens does not fit max_model_len {self.max_model_len}")
                continue
            for continuation in continuations:
                prompts.append(TokensPrompt(prompt_token_ids=prompt_ids + continuation))
                loras.append(self._lora.get(request.adapter) if request.adapter else None)
                spans.append((i, len(continuation), len(prompt_ids)))
        if prompts:
            params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
            log_requests("score", self.max_model_len,
                         [(rendered[i], len(p["prompt_token_ids"]), 1) for (i, _, _), p in zip(spans, prompts)])
            outputs = self._call(self.llm.generate, prompts, params, lora_request=loras if self._lora else None)
            scored: dict[int, list[float]] = {}
            lengths: dict[int, int] = {}
            for (i, n, prompt_len), output in zip(spans, outputs):
                ids = output.prompt_token_ids[-n:]
                steps = output.prompt_logprobs[-n:]
                scored.setdefault(i, []).append(sum(step[token].logprob for step, token in zip(steps, ids)))
                lengths[i] = prompt_len
            for i, logprobs in scored.items():
                results[i] = Scores(logprobs=tuple(logprobs), prompt_tokens=lengths[i])
        return results  # type: ignore[return-value]

    # --- classification -------------------------------------------------------------

    def classify(self, requests: list[Classify]) -> list[Classification | Failure]:
        results: list[Classification | Failure | None] = [None] * len(requests)
        texts, slots, lengths = [], [], []
        for i, request in enumerate(requests):
            n_tokens = len(self.tokenizer(request.text)["input_ids"])
            if n_tokens > self.max_model_len:
                results[i] = Failure(f"text of {n_tokens} tokens does not fit max_model_len {self.max_model_len}")
                continue
            texts.append(request.text)
            slots.append(i)
            lengths.append(n_tokens)
        if texts:
            log_requests("classify", self.max_model_len, [(text, n, 0) for text, n in zip(texts, lengths)])
            outputs = self._call(self.llm.classify, texts)
            for slot, n_tokens, output in zip(slots, lengths, outputs):
                probs = tuple(float(p) for p in output.outputs.probs)
                results[slot] = Classification(probabilities=probs, labels=self.labels, prompt_tokens=n_tokens)
        return results  # type: ignore[return-value]

    # --- failures -------------------------------------------------------------------

    @staticmethod
    def _call(method, *args, **kwargs):
        """Every call into vLLM's engine; crash tests inject engine faults here."""
        from vllm.v1.engine.exceptions import EngineDeadError

        fault_raise("engine.dead", EngineDeadError())
        fault_raise("engine.call_error", RuntimeError("CUDA out of memory (injected by BATCH_FAULT)"))
        return method(*args, use_tqdm=False, **kwargs)

    @staticmethod
    def is_fatal(exc: BaseException) -> bool:
        """A dead engine cannot answer anything more: the actor must die and be restarted."""
        from vllm.v1.engine.exceptions import EngineDeadError

        return isinstance(exc, EngineDeadError)

    @staticmethod
    def is_request_error(exc: BaseException) -> bool:
        """vLLM rejected a request for what it asks (prompt too long, token id out of
        vocabulary, bad sampling parameters): vLLM raises its client errors
        (`VLLMValidationError` and kin) or a plain ValueError for those. Anything else
        (out of memory, a timeout, a dead engine) is the engine's fault, not the row's."""
        from vllm.exceptions import VLLMClientError

        return isinstance(exc, (VLLMClientError, ValueError)) and not Engine.is_fatal(exc)

    # --- setup helpers --------------------------------------------------------------

    def _lora_requests(self, adapters: tuple[tuple[str, str], ...]) -> dict:
        from vllm.lora.request import LoRARequest

        return {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(adapters)}

    def _classifier_labels(self) -> tuple[str, ...]:
        config = models.read_config(self.model_path, self.spec.storage)  # from disk: no engine needed
        id2label = config["id2label"] if config else self.llm.llm_engine.model_config.hf_config.id2label
        return tuple(id2label[key] for key in sorted(id2label, key=int))
