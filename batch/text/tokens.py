"""Counting what a request costs in the serving model's own tokens, without an engine.

The prepare stage loads the model's tokenizer (its `tokenizer.json` through transformers,
from the same folder vLLM loads) and hands each task a `TokenCounter`. It counts a prompt exactly the
way the engine does (batch/infer/engine.py): the chat template rendered to text, then
tokenized without special tokens. So a piece the counter says fits is a piece the engine
accepts, in every script: the demo tokenizer spends about three tokens on a Chinese
character and one or less on a Latin one, which no character budget can follow.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

Messages = Sequence[tuple[str, str]]


class TokenCounter:
    """A tokenizer and the context it must fit (the engine's resolved max_model_len)."""

    def __init__(self, tokenizer, max_model_len: int):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        # a piece is counted when split, when its prompt is checked and for its output
        # budget: remember the last few thousand (pieces, not documents, so a few MB)
        self.count: Callable[[str], int] = lru_cache(maxsize=4096)(self._count)

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def exceeds(self, text: str, n: int) -> bool:
        """count(text) > n, without tokenizing all of a long text when a prefix already
        says so (BPE on a long run with no spaces, Thai or Chinese, is slow)."""
        prefix = 4 * n
        if len(text) > prefix and self.count(text[:prefix]) > n:
            return True
        return self.count(text) > n

    def with_special_tokens(self, text: str) -> int:
        """What a classifier (pooling runner) sees: the text with BOS/EOS/CLS as the tokenizer adds them."""
        return len(self.tokenizer(text)["input_ids"])

    def prompt(self, messages: Messages) -> int:
        """Tokens of the rendered chat prompt, as the engine counts them."""
        chat = [{"role": role, "content": content} for role, content in messages]
        rendered = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return self.count(rendered)

    def head(self, text: str, n: int) -> int:
        """Character offset where the first `n` tokens of `text` end."""
        if n <= 0:
            return 0
        size = 4 * n  # tokenize a growing prefix, not all of a 100,000-character text
        while True:
            offsets = self._offsets(text[:size])
            if len(offsets) > n:
                return offsets[n - 1][1]
            if size >= len(text):
                return len(text)
            size *= 2

    def tail(self, text: str, n: int) -> int:
        """Character offset where the last `n` tokens of `text` begin."""
        if n <= 0:
            return len(text)
        size = 4 * n
        while True:
            start = max(0, len(text) - size)
            offsets = self._offsets(text[start:])
            if len(offsets) > n:
                return start + offsets[len(offsets) - n][0]
            if start == 0:
                return 0
            size *= 2

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        return self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]


def largest_fitting(room: int, cost_of: Callable[[int], int]) -> int:
    """The largest t in [0, room] with t + cost_of(t) <= room (cost_of non-decreasing), or -1."""
    lo, hi = -1, room
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if mid + cost_of(mid) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo


def load_counter(model_path: str, max_model_len: int | None, trust_remote_code: bool = False) -> TokenCounter:
    """The tokenizer of a local model folder (resolved from s3:// by the caller). With no
    max_model_len set, the model's own context length from its config.json."""
    tokenizer = _tokenizer(model_path, trust_remote_code)
    if max_model_len is None:
        max_model_len = _context_length(model_path, trust_remote_code) or tokenizer.model_max_length
    return TokenCounter(tokenizer, int(max_model_len))


def _tokenizer(model_path: str, trust_remote_code: bool):
    """A folder with a `tokenizer.json` is loaded as a fast tokenizer directly: the same
    file and chat template AutoTokenizer would load, without AutoTokenizer's import of torch
    (4-5 s of CPU in the prepare actor, while the engine beside it starts). Other folders
    (sentencepiece only, or the repository's own code) go through AutoTokenizer."""
    if not trust_remote_code and (Path(model_path) / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(model_path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)


def _context_length(model_path: str, trust_remote_code: bool) -> int | None:
    """max_position_embeddings from config.json (or its text_config), read as JSON; the
    repository's own code, or a config without it, through AutoConfig."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    for section in (config, config.get("text_config") or {}):
        if isinstance(section, dict) and isinstance(section.get("max_position_embeddings"), int):
            return section["max_position_embeddings"]
    if not config or trust_remote_code:
        from transformers import AutoConfig

        return getattr(AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code), "max_position_embeddings", None)
    return None
