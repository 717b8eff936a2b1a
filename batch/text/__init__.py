"""Text utilities for the tasks: plain functions of strings, no engine, no storage.

- `spans`: protected spans (URLs, e-mails, @mentions, #hashtags, emoji, inline code,
  glossary terms) replaced by placeholders before prompting and restored after.
- `segment`: splitting long text into pieces that fit a budget, and joining them back.
- `tokens`: what a prompt costs in the serving model's own tokens (its tokenizer, no engine).
- `locales`: BCP-47 targets (pt-BR, zh-Hant): canonical form, column suffix, base language, name.
- `langid`: offline language identification (lingua, models shipped in the wheel).
- `checks`: guardrail measures on a translation (length ratio, copy of the source).
"""
