"""Long-document translation: the job against the raw engine over the same pieces, same
machine, one invocation. Prints a table; record it in BENCHMARKS.md with the command.

    python benchmarks/long_documents.py                          # 2 documents x 5 scripts, 13,000 characters each
    python benchmarks/long_documents.py --docs 1 --chars 4000    # smoke

Documents come from batch/demo/documents.py (Chinese, Japanese, Arabic, Thai, Hindi). Both
scenarios are fresh processes, so each figure includes its own start-up:
  raw  vLLM's LLM.generate in one process over exactly the pieces the job sends (the task's
       own split, budgeted with the same tokenizer and max_model_len), the job's engine
       settings: benchmarks/raw_engine.py, shared with benchmarks/throughput.py
  job  python -m batch run: read, split in the model's tokens, infer, join, guardrails, write
It also counts how many prompt tokens are the instruction and chat template, and how many
are the documents' text.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
RAW_ENGINE = REPO / "benchmarks" / "raw_engine.py"  # the raw side, shared with throughput.py
MAX_MODEL_LEN = 1024

def write_inputs(folder: Path, docs: int, chars: int) -> int:
    from batch.demo.documents import SENTENCES, long_document

    texts = [long_document(lang, chars, seed=i) for lang in sorted(SENTENCES) for i in range(docs)]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts}), folder / "docs.parquet")
    return len(texts)


def job_file(path: Path, corpus: Path, output: Path, model: Path, tokens: int) -> Path:
    job = {
        "name": "bench-long",
        "input": {"uris": [str(corpus / "docs.parquet")], "id_column": "id", "text_column": "text"},
        "output": {"uri": str(output)},
        "engine": {"max_model_len": MAX_MODEL_LEN},
        "cache": {"enabled": False},
        "tasks": {"translation": {
            "model": str(model), "target_languages": ["en"], "max_output_tokens": tokens,
            "language_detection": {"languages": ["ar", "en", "hi", "ja", "th", "zh"]},
        }},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(job))
    return path


def run(cmd: list[str], env: dict) -> tuple[str, float]:
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2, help="documents per script")
    parser.add_argument("--chars", type=int, default=13_000, help="characters per document")
    parser.add_argument("--tokens", type=int, default=32, help="max_output_tokens per piece")
    args = parser.parse_args()
    from batch.demo.models import build_demo_models

    with tempfile.TemporaryDirectory(prefix="bench-long-") as tmp:
        tmp_path = Path(tmp)
        model = build_demo_models(tmp_path / "models")["chat"]
        n_docs = write_inputs(tmp_path / "in", args.docs, args.chars)
        job = job_file(tmp_path / "job.yaml", tmp_path / "in", tmp_path / "out", model, args.tokens)
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        out, raw_wall = run([sys.executable, str(RAW_ENGINE), str(job), "--count-tokens"], env)
        raw = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        _, job_wall = run([sys.executable, "-m", "batch", "run", str(job)], env)
        summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    rows = [
        ("raw engine", raw_wall, raw["requests"], raw["output_tokens"]),
        ("job", job_wall, summary["requests_inferred"], summary["output_tokens"]),
    ]
    print(f"{n_docs} documents ({args.docs} per script x 5 scripts, {args.chars:,} characters each), "
          f"max_model_len {MAX_MODEL_LEN}, max_output_tokens {args.tokens}; job rows failed: {summary['rows_failed']}")
    print(f"{'scenario':<12}{'wall s':>9}{'requests':>10}{'docs/s':>9}{'out tok/s':>11}")
    for name, wall, requests, output_tokens in rows:
        print(f"{name:<12}{wall:>9.1f}{requests:>10}{n_docs / wall:>9.3f}{output_tokens / wall:>11.1f}")
    print(f"job/raw (documents/s): {raw_wall / job_wall:.2f}; raw engine: vLLM imported {raw['imported']:.1f}s, "
          f"engine ready {raw['engine_ready']:.1f}s, pieces built {raw['prompts_ready']:.1f}s after its start")
    busy = ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in summary["stage_busy_seconds"].items())
    print(f"job: first row after {summary['seconds_to_first_row']}s; stage busy time: {busy}")
    total = raw["instruction_tokens"] + raw["text_tokens"]
    print(f"prompt tokens: {total:,} = instruction and template {raw['instruction_tokens']:,} "
          f"({raw['instruction_tokens'] / total:.0%}) + text {raw['text_tokens']:,}")


if __name__ == "__main__":
    main()
