"""Throughput benchmark: the full job against the raw engine, same prompts, same machine,
one invocation. Prints a table; record it in BENCHMARKS.md with the command that made it.

    python benchmarks/throughput.py                    # everything, 4,000 rows x 32 output tokens
    python benchmarks/throughput.py --rows 60 --scenarios raw,job,warm,memory --memory-rows 200,400   # smoke

Scenarios (each a fresh process, so every figure includes its own start-up):
  raw          vLLM's LLM.generate in one process over exactly the requests the job sends,
               with the job's engine settings (on CPU: engine core in the same process),
               prompts built in that process by the task's code (language identification)
  raw-prebuilt the same over prompts built beforehand by another process: imports, engine
               and generate only (the raw engine without language identification)
  raw-vllm-default   the same as raw with vLLM's default of an engine-core process of its own
  job          python -m batch run: read Parquet, infer on Ray Data, write Parquet (cold cache)
  warm         the job again after 10% of the texts changed: the result cache answers the rest
  raw-dups, raw-dups-prebuilt   the raw engine over a corpus where 40% of rows repeat an
               earlier text (vLLM's prefix cache makes a repeated prompt cheap)
  job-dups     the job over that corpus (duplicates are inferred once)
  floor, floor-dups   the least any job built on Ray does here: the raw engine in one Ray
               actor on a fresh local cluster started with the job's Ray settings, over
               prompts built beforehand, each distinct prompt generated once; no language
               identification, no prepare or parse stage, no writes
  memory       sentiment tagging (classifier) of 20k and 200k rows: peak memory of the whole process tree

The job runs with BATCH_TRACE set (batch/progress.py); the start-up table gives, in seconds
from each process's start, when the raw engine had imported vLLM and built its engine, and
when each step of the job happened up to its first written row.

The raw engine is benchmarks/raw_engine.py, shared with benchmarks/long_documents.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
RAW_ENGINE = REPO / "benchmarks" / "raw_engine.py"
TARGET = "fr"


def make_texts(rows: int, duplicate_share: float, seed: int = 0) -> list[str]:
    """Realistic-length posts built from the sample corpus; `duplicate_share` of the rows
    repeat an earlier row's text exactly (reposts, boilerplate)."""
    from batch.demo.corpus import sample_posts

    rng = random.Random(seed)
    base = [post["text"] for post in sample_posts() if post["text"].strip()]
    texts: list[str] = []
    for i in range(rows):
        if texts and rng.random() < duplicate_share:
            texts.append(rng.choice(texts))
        else:
            # a distinct text per row; a plain-word suffix (not a #hashtag, which translation
            # would mask into a placeholder and so make rows identical again)
            texts.append(f"{rng.choice(base)[:200]} (report {i})")
    return texts


def write_corpus(texts: list[str], folder: Path, files: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"r{i:07d}" for i in range(len(texts))]
    for f in range(files):
        table = pa.table({"id": ids[f::files], "text": texts[f::files]})
        pq.write_table(table, folder / f"part-{f:03d}.parquet", row_group_size=4096)


def job_file(path: Path, corpus: Path, output: Path, model: Path, tokens: int, batch_size: int,
             languages: list[str] | None = None) -> Path:
    job = {
        "name": "bench",
        "input": {"uris": [str(corpus)], "id_column": "id", "text_column": "text"},
        "output": {"uri": str(output)},
        "engine": {"max_model_len": 1024, **({"batch_size": batch_size} if batch_size else {})},
        "tasks": {
            "translation": {
                "model": str(model), "target_languages": [TARGET],
                # a fixed budget of `tokens` per row, so raw and job generate the same amount
                "max_output_tokens": tokens, "output_tokens_per_char": 1000.0,
                **({"language_detection": {"languages": languages}} if languages else {}),
            }
        },
    }  # fmt: skip
    path.write_text(yaml.safe_dump(job))
    return path


class PeakMemory:
    """Peak resident memory of a process and all its descendants (Ray workers, engines)."""

    def __init__(self, pid: int):
        self.root, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self):
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                total = 0
                for proc in procs:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.5)

    def stop(self) -> float:
        self._stop.set()
        self.thread.join()
        return self.peak / 2**30


def run_measured(cmd: list[str], env: dict, sampler=None) -> tuple[str, float, Any]:
    """stdout, wall seconds, and what the memory sampler measured (default: the whole
    process tree's peak GiB; benchmarks/cache_scale.py passes its per-actor sampler)."""
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    memory = (sampler or PeakMemory)(proc.pid)
    out, err = proc.communicate()
    wall = time.time() - started
    peak = memory.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
    return out, wall, peak


def write_prompts(job: Path, env: dict) -> Path:
    """The job's prompts, built by a process of their own (language identification included)."""
    prompts = job.with_suffix(".prompts.json")
    run_measured([sys.executable, str(RAW_ENGINE), str(job), "--write-prompts", str(prompts)], env)
    return prompts


def bench_raw(job: Path, env: dict, engine_process: str = "job-settings", prompts: Path | None = None,
              floor: bool = False) -> dict:
    """benchmarks/raw_engine.py in a fresh process. `prompts`: built beforehand
    (`write_prompts`), so the measured process only imports vLLM, starts the engine and
    generates. `floor`: in a Ray actor, each distinct prompt once."""
    prebuilt = prompts is not None
    cmd = [sys.executable, str(RAW_ENGINE), str(job), "--engine-process", engine_process]
    if floor:
        cmd += ["--in-ray-actor", "--distinct"]
    if prebuilt:
        cmd += ["--prompts", str(prompts)]
    out, wall, peak = run_measured(cmd, env)
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    startup = {"imports": result["imported"], "engine": result["engine_ready"] - result["imported"]}
    if floor:  # Ray's start, then the actor's process and imports
        startup = {"ray": result["ray_connected"], **startup, "imports": result["imported"] - result["ray_connected"]}
    if not prebuilt:
        startup["prompts"] = result["prompts_ready"] - result["engine_ready"]
    return {"wall": wall, "startup": result["prompts_ready"], "steady": result["generated"] - result["prompts_ready"],
            "rows": result["rows"], "output_tokens": result["output_tokens"], "peak_gib": peak,
            "requests_sent": result["requests"], "startup_breakdown": startup}  # fmt: skip


def bench_job(job: Path, output: Path, env: dict) -> dict:
    trace = job.with_suffix(".trace.jsonl")
    trace.unlink(missing_ok=True)
    out, wall, peak = run_measured([sys.executable, "-m", "batch", "run", str(job), "--overwrite"],
                                   {**env, "BATCH_TRACE": str(trace)})  # fmt: skip
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["rows_out"] == summary["rows_in"] and summary["rows_failed"] == 0, summary
    timeline = job_timeline(trace)
    startup = timeline.get("first row", 0.0)
    first_batch = next((e for e in _events(trace) if e["event"] == "infer.batch_in"), {})
    return {"wall": wall, "startup": startup, "steady": wall - startup, "rows": summary["rows_out"],
            "output_tokens": summary.get("output_tokens", 0), "peak_gib": peak,
            "requests_inferred": summary.get("requests_inferred"), "cache_hits": summary.get("cache_hits"),
            "cached_rows": summary.get("cached_rows"), "timeline": timeline,
            "first_engine_batch_rows": first_batch.get("rows")}  # fmt: skip


# The job's trace (batch/progress.py): the first time each event happened, in seconds from
# the driver process's start (interpreter and imports included, as for the raw engine).
TIMELINE = (
    ("cli started", "driver.cli_start"),
    ("ray start begun", "driver.ray_start"),
    ("planned", "driver.planned"),
    ("ray connected", "driver.ray_connected"),
    ("stream begun", "driver.stream"),
    ("engine actor process", "infer.init:process_started"),
    ("prepare actor process", "prepare.init:process_started"),
    ("engine actor constructing", "infer.init"),
    ("prepare actor constructing", "prepare.init"),
    ("parse actor constructing", "parse.init"),
    ("vLLM import begun", "engine.import"),
    ("vLLM imported", "engine.build"),
    ("engine built", "engine.built"),
    ("engine actor ready", "infer.ready"),
    ("prepare's language detector loaded", "prepare.tasks_built"),
    ("prepare ready", "prepare.ready"),
    ("parse ready", "parse.ready"),
    ("first prepared block", "prepare.batch_out"),
    ("first engine batch in", "infer.batch_in"),
    ("first engine batch out", "infer.batch_out"),
    ("first parsed+written block", "parse.batch_out"),
    ("first row", "driver.first_row"),
    ("first file committed", "driver.file_committed"),
    ("published", "driver.published"),
)


def _events(trace: Path) -> list[dict]:
    return [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() else []


def job_timeline(trace: Path) -> dict[str, float]:
    events = _events(trace)
    origin = next((e["t"] for e in events if e["event"] == "driver.process_start"), None)
    if origin is None:
        return {}
    timeline = {}
    for label, key in TIMELINE:
        event, _, field = key.partition(":")
        times = [e.get(field) if field else e["t"] for e in events if e["event"] == event]
        if times := [t for t in times if t is not None]:
            timeline[label] = round(min(times) - origin, 2)
    return timeline


def change_share(corpus: Path, share: float, seed: int = 1) -> None:
    """Rewrite `share` of the rows' texts in place: the next night's mostly unchanged corpus."""
    rng = random.Random(seed)
    for path in sorted(corpus.glob("*.parquet")):
        table = pq.read_table(path)
        texts = [t if rng.random() >= share else f"{t} (edited {i})" for i, t in enumerate(table.column("text").to_pylist())]
        pq.write_table(table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts)), path)


def sentiment_job(path: Path, corpus: Path, output: Path, model: Path) -> Path:
    """Sentiment tagging with a classifier head (the pooling runner): what tags millions
    of posts; the cache is off so every row goes through every stage."""
    job = {
        "name": "bench-memory",
        "input": {"uris": [str(corpus)], "id_column": "id", "text_column": "text"},
        "output": {"uri": str(output)},
        "cache": {"enabled": False},
        "engine": {"max_model_len": 1024},
        "tasks": {"sentiment": {"model": str(model), "mode": "classify"}},
    }
    path.write_text(yaml.safe_dump(job))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=None, help="engine.batch_size; default: the job's")
    parser.add_argument("--duplicate-share", type=float, default=0.4)
    parser.add_argument("--changed-share", type=float, default=0.1)
    parser.add_argument("--memory-rows", default="20000,200000", help="corpus sizes for the streaming-memory check")
    parser.add_argument(
        "--scenarios", default="raw,raw-prebuilt,floor,job,warm,raw-dups,raw-dups-prebuilt,floor-dups,job-dups,memory"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the scenario list this many times in turn (not warm or memory); each figure is "
                             "the run with the median wall time, and every wall time is kept")  # fmt: skip
    parser.add_argument("--detect-languages", default=None,
                        help="the translation task's language_detection.languages for every scenario, raw ones included: "
                             "a comma list, or 'corpus' for the sample corpus's own; default: the job's (all 75)")  # fmt: skip
    args = parser.parse_args()
    languages = None
    if args.detect_languages == "corpus":
        from batch.demo.corpus import sample_posts

        languages = sorted({post["lang"] for post in sample_posts()})
    elif args.detect_languages:
        languages = args.detect_languages.split(",")

    from batch.demo.models import build_causal_lm, build_classifier

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-"))
    model = work / "model"
    if not (model / "config.json").exists():
        build_causal_lm(model)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    results: dict[str, dict] = {}
    scenarios = args.scenarios.split(",")
    if args.repeat > 1 and {"warm", "memory"} & set(scenarios):
        parser.error("--repeat: warm and memory run once (warm needs the cold job's cache)")
    runs: dict[str, list[dict]] = {}
    # per corpus (its duplicate share), once per invocation: the raw engine's one-file copy,
    # and the prompts built beforehand that every prebuilt and floor scenario shares
    wholes: set[float] = set()
    prompts: dict[float, Path] = {}
    for scenario in scenarios * args.repeat:  # in turn, so that a noisy minute hits every scenario alike
        load = os.getloadavg()[0]  # the machine is shared: say how busy it was
        if scenario == "memory":
            for rows in (int(n) for n in args.memory_rows.split(",")):
                corpus = work / f"memory-{rows}"
                if not corpus.exists():
                    write_corpus(make_texts(rows, 0.0, seed=rows), corpus, files=max(8, rows // 10_000))
                output = work / f"out-memory-{rows}"
                classifier = work / "classifier"
                if not (classifier / "config.json").exists():
                    build_classifier(classifier, ["negative", "neutral", "positive"])
                job = sentiment_job(work / f"memory-{rows}.yaml", corpus, output, classifier)
                _, wall, peak = run_measured([sys.executable, "-m", "batch", "run", str(job), "--overwrite"], env)
                result = {"wall": wall, "startup": 0.0, "steady": wall, "rows": rows, "output_tokens": 0, "peak_gib": peak}
                runs[f"memory-{rows}"] = [result]
                print(f"memory-{rows}: {json.dumps(result)}", file=sys.stderr)
            continue
        dups = args.duplicate_share if "dups" in scenario else 0.0
        corpus = work / f"corpus-{dups}"
        if not corpus.exists():
            write_corpus(make_texts(args.rows, dups), corpus)
        name = "job" if scenario == "warm" else scenario  # warm reruns the job's own output and cache
        output = work / f"out-{name}"
        job = job_file(work / f"{name}.yaml", corpus, output, model, args.tokens, args.batch_size, languages)
        if scenario == "warm":
            change_share(corpus, args.changed_share)
            wholes.discard(dups)  # a raw scenario after this one reads the changed corpus
            prompts.pop(dups, None)
            result = bench_job(job, output, env)
        elif scenario.startswith(("raw", "floor")):
            whole = work / f"whole-{dups}.parquet"  # the raw engine reads the corpus as one file
            if dups not in wholes:
                pq.write_table(pq.read_table(corpus), whole)
                wholes.add(dups)
            job = job_file(work / f"{scenario}.yaml", whole, output, model, args.tokens, args.batch_size, languages)
            engine_process = "vllm-default" if scenario == "raw-vllm-default" else "job-settings"
            floor = scenario.startswith("floor")
            prebuilt = floor or scenario.endswith("prebuilt")
            if prebuilt and dups not in prompts:
                prompts[dups] = write_prompts(job, env)
            result = bench_raw(job, env, engine_process, prompts=prompts[dups] if prebuilt else None, floor=floor)
        else:
            shutil.rmtree(output, ignore_errors=True)  # a cold run: no result cache of an earlier round
            result = bench_job(job, output, env)
        result["load_before"] = round(load, 1)
        runs.setdefault(scenario, []).append(result)
        print(f"{scenario}: {json.dumps(result)}", file=sys.stderr)
    for scenario, done in runs.items():  # in the order they ran
        median = sorted(done, key=lambda run: run["wall"])[(len(done) - 1) // 2]
        results[scenario] = {**median, "walls": [round(run["wall"], 1) for run in done]}

    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))


def print_table(results: dict[str, dict], args) -> None:
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
          f"python {platform.python_version()}; rows={args.rows} tokens={args.tokens} batch_size={args.batch_size}; "
          f"language_detection.languages={args.detect_languages or 'all'}")  # fmt: skip
    header = (f"{'scenario':<14} {'rows':>7} {'wall s':>8} {'start s':>8} {'steady s':>9} {'rows/s':>8} "
              f"{'out tok/s':>10} {'peak GiB':>9} {'inferred':>9} {'load':>5}")  # fmt: skip
    print(header)
    print("-" * len(header))  # load: the machine's 1-minute load average as the scenario began
    for name, r in results.items():
        print(f"{name:<14} {r['rows']:>7} {r['wall']:>8.1f} {r['startup']:>8.1f} {r['steady']:>9.1f} "
              f"{r['rows'] / r['wall']:>8.1f} {r['output_tokens'] / r['wall']:>10.1f} {r['peak_gib']:>9.2f} "
              f"{r.get('requests_inferred', '-')!s:>9} {r.get('load_before', '-')!s:>5}")  # fmt: skip
    if any(len(r.get("walls", ())) > 1 for r in results.values()):
        print("wall s of every run (the table shows the median run): "
              + "; ".join(f"{name} {r['walls']}" for name, r in results.items() if "walls" in r))  # fmt: skip
    pairs = (("job", "raw"), ("job", "raw-prebuilt"), ("job-dups", "raw-dups"), ("job-dups", "raw-dups-prebuilt"),
             ("floor", "raw-prebuilt"), ("floor-dups", "raw-dups-prebuilt"), ("job", "floor"), ("job-dups", "floor-dups"))
    for job, raw in pairs:
        if job in results and raw in results:
            ratio = (results[job]["rows"] / results[job]["wall"]) / (results[raw]["rows"] / results[raw]["wall"])
            print(f"ratio {job}/{raw} (rows/s, start-up included): {ratio:.2f}")
    if "warm" in results and "job" in results:
        print(f"warm rerun after {args.changed_share:.0%} changed / cold run (wall): "
              f"{results['warm']['wall'] / results['job']['wall']:.2f}")  # fmt: skip
    print_startup(results)
    sizes = sorted((int(k.split("-")[1]), v) for k, v in results.items() if k.startswith("memory-"))
    if len(sizes) >= 2:
        (small, a), (large, b) = sizes[0], sizes[-1]
        print(f"peak memory {large} rows / {small} rows: {b['peak_gib'] / a['peak_gib']:.2f} "
              f"({a['peak_gib']:.2f} -> {b['peak_gib']:.2f} GiB, process tree)")  # fmt: skip



def print_startup(results: dict[str, dict]) -> None:
    """Where the seconds before the first row go, from each process's start."""
    raws = {name: r["startup_breakdown"] for name, r in results.items() if "startup_breakdown" in r}
    jobs = {name: r["timeline"] for name, r in results.items() if r.get("timeline")}
    if not raws and not jobs:
        return
    print("\nstart-up, seconds from process start:")
    for name, steps in raws.items():
        parts = ", ".join(f"{step} {seconds:.1f}" for step, seconds in steps.items())
        built = sum(seconds for step, seconds in steps.items() if step != "prompts")
        print(f"  {name:<18} {parts}; vLLM imported and engine built at {built:.1f}")
    for name, timeline in jobs.items():
        print(f"  {name}:")
        for label, seconds in timeline.items():
            print(f"    {seconds:>6.1f}  {label}")
        if rows := results[name].get("first_engine_batch_rows"):
            print(f"    (first engine batch: {rows} rows)")
    reference = next((raws[n] for n in ("raw-prebuilt", "raw", "raw-dups-prebuilt", "raw-dups") if n in raws), None)
    for name, timeline in jobs.items():
        if reference and "first row" in timeline:
            engine = reference["imports"] + reference["engine"]
            print(f"{name}: first row {timeline['first row']:.1f} s = raw engine's imports and start ({engine:.1f} s) "
                  f"+ {timeline['first row'] - engine:.1f} s (target: at most + 10 s)")  # fmt: skip


if __name__ == "__main__":
    main()
