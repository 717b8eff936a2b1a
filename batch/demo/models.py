"""Tiny random-weight models built on the spot, for the demo, the tests and the benchmark.

No hub is reachable from CI or from a laptop on a plane, so nothing here downloads: a
byte-level BPE tokenizer is trained on the sample corpus, and Llama-shaped models are saved
with random weights. Outputs are gibberish; shapes, chat templates, labels, adapters and
everything the job does around the model are real.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
DEMO_LABELS = ("negative", "neutral", "positive")
# Head size 64: the CPU attention kernel refuses 16 (see shared/PLATFORM-NOTES.md).
LLAMA_SHAPE = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, max_position_embeddings=4096,
)  # fmt: skip


def _training_lines() -> list[str]:
    from batch.demo.corpus import sample_posts

    lines = [post["text"] for post in sample_posts()]
    lines += [post["reference_en"] for post in sample_posts()]
    return lines + ["negative neutral positive", "Translate into French German Spanish English"]


def build_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_training_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def _llama_config(tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **LLAMA_SHAPE,
        **extra,
    )


def build_causal_lm(out_dir: str | Path, seed: int = 0) -> Path:
    """A random-weight LlamaForCausalLM with a chat template: stands in for a translation or
    sentiment fine-tune."""
    import torch
    from transformers import LlamaForCausalLM

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(out_dir)
    model = LlamaForCausalLM(_llama_config(tokenizer))
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_classifier(out_dir: str | Path, labels: list[str], seed: int = 0, multi_label: bool = False) -> Path:
    """A random-weight LlamaForSequenceClassification whose `id2label` is `labels`; with
    `multi_label`, trained-for-multi-label as config.json says it (vLLM: a sigmoid per label)."""
    import torch
    from transformers import LlamaForSequenceClassification

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(out_dir)
    config = _llama_config(
        tokenizer,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **({"problem_type": "multi_label_classification"} if multi_label else {}),
    )
    config.architectures = ["LlamaForSequenceClassification"]
    LlamaForSequenceClassification(config).save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_lora_adapter(base_dir: str | Path, out_dir: str | Path, seed: int = 1, rank: int = 8) -> Path:
    """A LoRA adapter (peft) for a model from `build_causal_lm`, with non-zero weights so it
    really changes the outputs (peft's default init leaves B = 0, a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    base = LlamaForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(out_dir)
    return out_dir


def build_demo_models(root: str | Path) -> dict[str, Path]:
    """Everything the demo needs, built once under `root` (skipped when present): the chat
    model, and the untrained classifier the demo fine-tunes (the same tokenizer and body
    shape, a random classification head)."""
    root = Path(root)
    built = {"chat": root / "tiny-chat", "classifier": root / "tiny-classifier"}
    stamp = root / "BUILT.json"
    if not stamp.exists() or set(json.loads(stamp.read_text())) != set(built):
        build_causal_lm(built["chat"])
        build_classifier(built["classifier"], list(DEMO_LABELS))
        stamp.write_text(json.dumps({name: str(path) for name, path in built.items()}))
    return built
