"""The demo loop: fine-tune on the sample corpus's gold sentiment, tag the held-out split
with the job serving the base model and then the fine-tune, score both.

    labelled   every sample post with its gold label and a seeded, stratified split column
    held-out   the test split alone, the job's input
    finetune   jobs/finetune_sentiment.yaml (the tiny classifier) or, with a hub model,
               jobs/finetune_sentiment_lora.yaml (a LoRA answering with the label)
    run        jobs/demo.yaml twice: out/demo/base, out/demo/finetune
    eval       the project's scoring of both outputs against the gold labels
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from batch.demo.corpus import sample_posts
from batch.finetune.data import held_out_indices

HELD_OUT_FRACTION = 0.2
SEED = 0


@dataclass(frozen=True)
class DemoPlan:
    workdir: Path
    output: Path
    job_file: Path
    model: str | None  # a hub id or folder of a chat model; None: the tiny classifier
    workers: int


def write_splits(workdir: Path) -> tuple[Path, Path]:
    """The labelled set (with `split`) and the held-out posts alone, as Parquet."""
    posts = list(sample_posts())
    held = set(held_out_indices([p["gold_sentiment"] for p in posts], HELD_OUT_FRACTION, SEED))
    rows = [{**post, "split": "test" if i in held else "train"} for i, post in enumerate(posts)]
    labelled, held_out = workdir / "labelled", workdir / "held-out"
    for folder in (labelled, held_out):
        folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), labelled / "posts.parquet")
    pq.write_table(pa.Table.from_pylist([p for p, r in zip(posts, rows) if r["split"] == "test"]), held_out / "posts.parquet")
    return labelled, held_out


def finetune_spec(plan: DemoPlan, base: str, labelled: Path):
    from batch.finetune.spec import load_spec

    lora = plan.model is not None
    spec_file = Path("jobs/finetune_sentiment_lora.yaml" if lora else "jobs/finetune_sentiment.yaml")
    output = plan.workdir / "finetuned" / ("sentiment-lora" if lora else "sentiment-classifier")
    return load_spec(spec_file, [f"base_model={base}", f'data.uris=["{labelled}"]', f"output={output}",
                                 f"scaling.workers={plan.workers}"])  # fmt: skip


def job_overrides(plan: DemoPlan, spec, served: str) -> list[str]:
    """The job lines that serve the base (`served` = base) or the fine-tune (= its output)."""
    if spec.method == "classifier":
        return [f"tasks.sentiment.model={served}", "tasks.sentiment.mode=classify"]
    lines = [f"tasks.sentiment.model={spec.base_model}", "tasks.sentiment.mode=generate"]
    return lines + ([f"tasks.sentiment.adapter={served}"] if served != spec.base_model else [])


def run_demo(plan: DemoPlan, echo: Callable[[str], None]) -> dict[str, dict]:
    from batch.config import load_job
    from batch.demo.models import build_demo_models
    from batch.finetune.run import run_finetune
    from batch.pipeline import run

    models = build_demo_models(plan.workdir / "models")
    labelled, held_out = write_splits(plan.workdir)
    base = plan.model or str(models["classifier"])
    spec = finetune_spec(plan, base, labelled)
    echo(f"1/3 fine-tune ({spec.method}) on the training split of the sample corpus's gold sentiment")
    card = run_finetune(spec, echo=echo)
    reports = {}
    for step, (name, served) in enumerate((("base", base), ("finetune", spec.output)), start=2):
        echo(f"{step}/3 tag the held-out split with the job serving the {name.replace('finetune', 'fine-tune')}: {served}")
        out = plan.output / name
        job = load_job(plan.job_file, [*job_overrides(plan, spec, served), f'input.uris=["{held_out}"]', f"output.uri={out}"])
        summary = run(job, overwrite=True, echo=echo)
        echo(f"  {summary.status}: {out}")
        reports[name] = score_output(out)
    return {"card": card, **reports}


def score_output(out: Path) -> dict:
    from batch import evaluate
    from batch.evaluate_command import read_columns

    table = read_columns(str(out), ["sentiment", "gold_sentiment"])
    return evaluate.score_sentiment(table.column("sentiment").to_pylist(), table.column("gold_sentiment").to_pylist(),
                                    ["negative", "neutral", "positive"])  # fmt: skip
