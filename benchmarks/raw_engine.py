"""The raw engine side of every benchmark: vLLM's `LLM.generate` in one process over exactly
the requests the job sends, with the job's engine settings. One script for
benchmarks/throughput.py and benchmarks/long_documents.py.

    python benchmarks/raw_engine.py JOB.yaml [--engine-process job-settings|vllm-default]
        imports, engine, then the prompts built by the task's own code (language
        identification, and the pieces the job's prepare stage cuts with the model's
        tokenizer), then one generate call over all of them
    python benchmarks/raw_engine.py JOB.yaml --write-prompts FILE
        only build the prompts (no vLLM) and write them to FILE
    python benchmarks/raw_engine.py JOB.yaml --prompts FILE
        imports, engine, generate over prompts built beforehand: the raw engine without
        the task's language identification
    --count-tokens: also count the prompt tokens that are instruction and template, and
        those that are the texts (the long-document benchmark reports both)
    --in-ray-actor: imports, engine and generate in one Ray actor on a fresh local cluster
        started with the job's own Ray settings (`batch.pipeline.connect_ray`)
    --distinct: generate each distinct prompt once (what the job's deduplication sends)

With --prompts, --in-ray-actor and --distinct it is the floor of any job built on Ray here:
Ray's start, one actor, the engine and the distinct requests, with no language
identification, no prepare or parse stage and no writes.

The job's input is read as one Parquet file or folder. The last line of the output is
`RESULT {json}`: seconds from this process's start (interpreter included) to each step
(`imported`, `engine_ready`, `prompts_ready`, `generated`), and the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_prompts(job, count_tokens: bool = False) -> dict:
    """Every request the job's translation task sends for the input's rows, duplicates
    included, rendered with the model's chat template; with `count_tokens`, also how many
    prompt tokens are the instruction and template and how many the texts."""
    import pyarrow.parquet as pq

    from batch.infer.engine import resolve_engine_settings
    from batch.tasks.translation import TranslationTask
    from batch.text.tokens import load_counter

    texts = pq.read_table(job.input.uris[0]).column(job.input.text_column).to_pylist()
    config = job.tasks.translation
    counter = load_counter(config.model, resolve_engine_settings(job.engine, "cpu")["max_model_len"])
    task = TranslationTask(config)
    task.bind_tokens(counter)  # as the job's prepare stage does: the same pieces
    prompts, max_tokens, instruction, text_tokens = [], [], 0, 0
    for text in texts:
        for request in getattr(task.prepare(text), "requests", []):
            messages = [{"role": role, "content": content} for role, content in request.messages]
            prompts.append(counter.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            max_tokens.append(request.max_tokens)
            if not count_tokens:
                continue
            whole, piece = counter.prompt(request.messages), counter.count(request.messages[-1][1])
            instruction, text_tokens = instruction + whole - piece, text_tokens + piece
    return {"rows": len(texts), "prompts": prompts, "max_tokens": max_tokens,
            "instruction_tokens": instruction, "text_tokens": text_tokens}  # fmt: skip


class Actor:
    """The engine in a Ray actor (--in-ray-actor)."""

    def generate(self, *run):
        return generate(*run)


def generate(job, engine_process: str, count_tokens: bool, distinct: bool, built: dict | None, born: float) -> dict:
    """Imports, engine, prompts (built here unless given), one generate call: seconds from
    `born` to each step, and the counts."""
    from batch.infer.engine import resolve_engine_settings

    marks: dict[str, float] = {}
    settings = resolve_engine_settings(job.engine, "cpu")  # the same engine settings the job uses
    kv_cache_gib = settings.pop("kv_cache_gib")
    in_process = settings.pop("in_process") and engine_process == "job-settings"
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    from vllm import LLM, SamplingParams

    marks["imported"] = time.time() - born
    llm = LLM(model=job.tasks.translation.model, seed=0, kv_cache_memory_bytes=int(kv_cache_gib * 2**30), **settings)
    marks["engine_ready"] = time.time() - born
    built = built or build_prompts(job, count_tokens)
    requests = list(zip(built["prompts"], built["max_tokens"]))
    if distinct:
        requests = list(dict.fromkeys(requests))
    params = [SamplingParams(max_tokens=n, temperature=0.0, min_tokens=1) for _, n in requests]
    marks["prompts_ready"] = time.time() - born
    outputs = llm.generate([prompt for prompt, _ in requests], params, use_tqdm=False)
    marks["generated"] = time.time() - born
    return {
        **marks, "rows": built["rows"], "requests": len(requests),
        "instruction_tokens": built["instruction_tokens"], "text_tokens": built["text_tokens"],
        "output_tokens": sum(len(output.outputs[0].token_ids) for output in outputs),
    }  # fmt: skip


def main() -> None:
    import psutil

    born = psutil.Process().create_time()
    parser = argparse.ArgumentParser()
    parser.add_argument("job", type=Path)
    parser.add_argument("--engine-process", choices=["job-settings", "vllm-default"], default="job-settings")
    parser.add_argument("--prompts", type=Path, help="prompts built beforehand (--write-prompts)")
    parser.add_argument("--write-prompts", type=Path, help="only build the prompts and write them here")
    parser.add_argument("--count-tokens", action="store_true", help="count instruction and text prompt tokens")
    parser.add_argument("--in-ray-actor", action="store_true", help="the engine in a Ray actor on a fresh local cluster")
    parser.add_argument("--distinct", action="store_true", help="generate each distinct prompt once")
    args = parser.parse_args()
    from batch.config import load_job

    job = load_job(args.job)
    if args.write_prompts:
        args.write_prompts.write_text(json.dumps(build_prompts(job, args.count_tokens)))
        return
    built = json.loads(args.prompts.read_text()) if args.prompts else None
    run = (job, args.engine_process, args.count_tokens, args.distinct, built, born)
    if not args.in_ray_actor:
        result = generate(*run)
    else:
        import ray

        from batch.pipeline import connect_ray, stop_ray

        connect_ray("local")
        marks = {"ray_connected": time.time() - born}
        # All the node's CPUs: Ray sets the actor's OMP_NUM_THREADS from them, and the engine
        # gets as many threads as in a process of its own (one thread generated 25% slower).
        actor = ray.remote(num_cpus=os.cpu_count())(Actor).remote()
        result = {**marks, **ray.get(actor.generate.remote(*run))}
        stop_ray()
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":  # vLLM spawns processes: the entry point must be guarded
    sys.path.insert(0, str(REPO))
    main()
