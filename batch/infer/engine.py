"""The one module that imports vLLM.

`EngineSpec` says which model to serve and how (plain data, picklable, built on the driver);
`Engine` wraps one `vllm.LLM` and answers the task vocabulary (`Generate`, `Classify`) in
input order. One entry point per model kind, as vLLM itself has: `generate` for chat
models (with constrained choice and LoRA per request), `classify` for pooling models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Literal

from batch.config import EngineConfig
from batch.tasks.base import Classification, Classify, Completion, Failure, Generate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSpec:
    """Everything that decides what an engine computes and how it is placed."""

    model: str  # resolved local directory (or hub id where a hub is reachable)
    runner: Literal["generate", "classify"]
    device: Literal["cpu", "cuda"]
    adapters: tuple[tuple[str, str], ...] = ()  # (name, local directory)
    dtype: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    enable_prefix_caching: bool = True
    seed: int = 0
    max_lora_rank: int = 64
    trust_remote_code: bool = False
    extra: dict = field(default_factory=dict, hash=False, compare=False)


def resolve_engine_settings(config: EngineConfig, device: Literal["cpu", "cuda"]) -> dict:
    """Per-device defaults for fields the job left unset.

    CPU (vLLM's CPU build; measured on the build machines, see shared/PLATFORM-NOTES.md):
    float32 (bfloat16 dies with SIGILL on CPUs without AVX512-BF16), eager mode, 30% of RAM
    for the KV cache (vLLM's default 0.92 refuses to start next to Ray), short contexts.
    CUDA: vLLM's own defaults (bf16/fp16 by model, CUDA graphs, 90% of GPU memory), which
    is what published vLLM throughput figures use.
    """
    if device == "cpu":
        defaults = dict(dtype="float32", enforce_eager=True, gpu_memory_utilization=0.3, max_model_len=1024)
    else:
        defaults = dict(dtype="auto", enforce_eager=False, gpu_memory_utilization=0.9, max_model_len=None)
    chosen = {key: getattr(config, key) for key in defaults if getattr(config, key) is not None}
    return {**defaults, **chosen}


class Engine:
    """One vLLM engine. Built once per actor (weights load once), used for every batch."""

    def __init__(self, spec: EngineSpec):
        from vllm import LLM

        self.spec = spec
        kwargs = dict(
            model=spec.model,
            runner="pooling" if spec.runner == "classify" else "generate",
            dtype=spec.dtype,
            max_model_len=spec.max_model_len,
            tensor_parallel_size=spec.tensor_parallel_size,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            enforce_eager=spec.enforce_eager,
            enable_prefix_caching=spec.enable_prefix_caching,
            seed=spec.seed,
            trust_remote_code=spec.trust_remote_code,
            **spec.extra,
        )
        if spec.max_num_seqs:
            kwargs["max_num_seqs"] = spec.max_num_seqs
        if spec.adapters:
            kwargs.update(enable_lora=True, max_lora_rank=spec.max_lora_rank, max_loras=len(spec.adapters))
        log.info("starting vLLM engine for %s (%s on %s)", spec.model, spec.runner, spec.device)
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self._lora = self._lora_requests(spec.adapters)
        self.labels = self._classifier_labels() if spec.runner == "classify" else ()

    # --- generation -----------------------------------------------------------------

    def render(self, request: Generate) -> str:
        messages = [{"role": role, "content": content} for role, content in request.messages]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: list[Generate]) -> list[Completion | Failure]:
        """Answer in input order. A request that cannot run (prompt longer than the model
        allows, unknown adapter) gets a Failure; the others still run."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        results: list[Completion | Failure | None] = [None] * len(requests)
        prompts, params, loras, slots = [], [], [], []
        for i, request in enumerate(requests):
            prompt = self.render(request)
            prompt_tokens = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
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
            prompts.append(prompt)
            loras.append(self._lora.get(request.adapter) if request.adapter else None)
            slots.append(i)
        if prompts:
            outputs = self.llm.generate(prompts, params, lora_request=loras if self._lora else None, use_tqdm=False)
            for slot, output in zip(slots, outputs):
                completion = output.outputs[0]
                results[slot] = Completion(
                    text=completion.text,
                    finish_reason=completion.finish_reason or "stop",
                    prompt_tokens=len(output.prompt_token_ids or ()),
                    output_tokens=len(completion.token_ids),
                )
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
            outputs = self.llm.classify(texts, use_tqdm=False)
            for slot, n_tokens, output in zip(slots, lengths, outputs):
                probs = tuple(float(p) for p in output.outputs.probs)
                results[slot] = Classification(probabilities=probs, labels=self.labels, prompt_tokens=n_tokens)
        return results  # type: ignore[return-value]

    @staticmethod
    def is_fatal(exc: BaseException) -> bool:
        """A dead engine cannot answer anything more: the actor must die and be restarted."""
        from vllm.v1.engine.exceptions import EngineDeadError

        return isinstance(exc, EngineDeadError)

    # --- setup helpers --------------------------------------------------------------

    def _lora_requests(self, adapters: tuple[tuple[str, str], ...]) -> dict:
        from vllm.lora.request import LoRARequest

        return {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(adapters)}

    def _classifier_labels(self) -> tuple[str, ...]:
        id2label = self.llm.llm_engine.model_config.hf_config.id2label
        return tuple(id2label[i] for i in sorted(id2label))
