"""Held-out scores for the model card, computed on rank 0 with the model in training form,
predicting the way the job will: a classifier's argmax; a chat model's most likely label as
the whole answer (the job's label scoring); a greedy translation. Scored by the project's
own batch/evaluate.py, the same code `python -m batch eval` runs on a job's output."""

from __future__ import annotations

from typing import Any

from batch import evaluate
from batch.finetune.data import encode
from batch.finetune.spec import FinetuneSpec

BATCH = 16


def score_held_out(spec: FinetuneSpec, model, tokenizer, task, rows: list[dict[str, str]]) -> dict[str, Any]:
    import torch

    rows = rows[: spec.eval.max_rows]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if spec.task == "translation":
            hypotheses = [_translate(spec, model, tokenizer, task, row) for row in rows]
            report = evaluate.corpus_scores(hypotheses, [row["target"] for row in rows],
                                            evaluate.bleu_tokenizer(spec.target_language))  # fmt: skip
            report = {"task": "translation", "scored": len(rows), **report}
        else:
            predict = _classify if spec.method == "classifier" else _score_labels
            predictions = [label for start in range(0, len(rows), BATCH)
                           for label in predict(spec, model, tokenizer, task, rows[start : start + BATCH])]  # fmt: skip
            report = evaluate.score_sentiment(predictions, [row["label"] for row in rows], spec.labels)
    model.train(was_training)
    return report


def _classify(spec, model, tokenizer, task, rows) -> list[str]:
    from batch.finetune.train import collate

    examples = [encode(tokenizer, task, spec, row) for row in rows]
    batch = collate(examples, tokenizer.pad_token_id)
    batch.pop("labels")
    return [spec.labels[i] for i in model(**batch).logits.argmax(-1).tolist()]


def _score_labels(spec, model, tokenizer, task, rows) -> list[str]:
    """Every label scored as the whole answer (its tokens and the end of sequence): the sum
    of their log-probabilities, as the job's engine computes it."""
    import torch

    from batch.finetune.train import collate

    predictions = []
    for row in rows:
        examples = [encode(tokenizer, task, spec, {**row, "label": label}) for label in spec.labels]
        batch = collate(examples, tokenizer.pad_token_id)
        labels = batch.pop("labels")
        logprobs = torch.log_softmax(model(**batch).logits[:, :-1], dim=-1)
        targets = labels[:, 1:]
        picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        totals = (picked * (targets != -100)).sum(-1)
        predictions.append(spec.labels[int(totals.argmax())])
    return predictions


def _translate(spec, model, tokenizer, task, row) -> str:
    import torch

    prompt_ids = encode(tokenizer, task, spec, {**row, "target": ""})
    prompt = [i for i, label in zip(prompt_ids["input_ids"], prompt_ids["labels"]) if label == -100]
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=spec.eval.max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    return tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True).strip()
