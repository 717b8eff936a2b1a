"""Cache at scale: the same warm run against result caches of different sizes, one invocation.
Prints a table; record it in BENCHMARKS.md with the command that made it.

    python benchmarks/cache_scale.py                                   # 40k rows; caches of 40k, 1M, 10M
    python benchmarks/cache_scale.py --rows 2000 --sizes 2000,100000   # smoke
    python benchmarks/cache_scale.py --lookups-only                    # the lookup alone, per cache size

1. A cold run over `--rows` posts (translation, as benchmarks/throughput.py) fills a cache
   of about that many entries per level, compacted at its publish.
2. For each larger size, a copy of that cache gets synthetic entries (random keys, values
   copied from real ones, each with its write logged as a use) up to the size, then
   `cache compact`: what that many nights of other texts would have left.
3. 10% of the corpus's texts change; then the warm run goes once against each cache.

Per warm run: wall time, peak resident memory of each Ray actor (the largest of each kind)
and of the whole process tree, bytes the actors read (rchar: page cache included), and the
cache's files.

`--lookups-only` skips the warm runs: per cache size, a fresh process opens the row cache as
a prepare actor does and times `--lookups` lookups of 1,000 keys (half stored keys, half
absent), with its resident memory before and after (the lookup's own cost, without the
engine's noise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import REPO, change_share, job_file, make_texts, run_measured, write_corpus  # noqa: E402

SYNTH_CHUNK = 1_000_000


class ActorMemory:
    """Peak RSS per process of a process tree, named by its title (Ray sets `ray::<actor>`),
    and the tree's total; read bytes per process at its last sample."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak: dict[int, int] = defaultdict(int)
        self.names: dict[int, str] = {}
        self.read: dict[int, int] = {}
        self.total = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    # a Ray worker takes its actor's title once it becomes that actor
                    self.names[proc.pid] = " ".join(proc.cmdline())[:80] or proc.name()
                    self.peak[proc.pid] = max(self.peak[proc.pid], rss)
                    self.read[proc.pid] = proc.io_counters().read_chars
                    total += rss
                except psutil.Error:
                    pass
            self.total = max(self.total, total)
            time.sleep(0.25)

    def stop(self) -> dict:
        self._stop.set()
        self.thread.join()
        actors: dict[str, dict] = {}
        for pid, name in self.names.items():
            kind = next((k for k in ("PrepareStage", "InferenceStage", "ParseStage") if k in name), None)
            if kind is None:
                continue
            entry = actors.setdefault(kind, {"peak_mib": 0.0, "read_mib": 0.0, "processes": 0})
            entry["peak_mib"] = max(entry["peak_mib"], self.peak[pid] / 2**20)
            entry["read_mib"] += self.read.get(pid, 0) / 2**20
            entry["processes"] += 1
        return {"actors": actors, "tree_peak_gib": self.total / 2**30}


def run_job(job: Path, output: Path, cache: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "batch", "run", str(job), "--overwrite", "--output", str(output), "--set", f"cache.uri={cache}"]
    _, wall, measured = run_measured(cmd, env, ActorMemory)
    summary = json.loads((output / "_summary.json").read_text())
    return {"wall": wall, **measured, "requests_inferred": summary.get("requests_inferred"),
            "cached_rows": summary.get("cached_rows"), "rows": summary.get("rows_out")}  # fmt: skip


def cache_facts(cache: Path) -> dict:
    from batch import cache as result_cache
    from batch.config import StorageConfig
    from batch.io.storage import Location

    tables = result_cache.stats(Location(str(cache), StorageConfig()), days=1)
    return {f"{t['level']}": {"entries": t["entries"], "files": t["files"], "mib": t["bytes"] / 2**20} for t in tables}


def compact(cache: Path) -> None:
    """Every table of `cache` as `cache compact` leaves it, old versions removed."""
    from batch import cache as result_cache
    from batch.config import StorageConfig
    from batch.io.storage import Location

    for _, _, store in result_cache.stores(Location(str(cache), StorageConfig())):
        result_cache.compact(store, None, grace=timedelta(0))


def grow(cache: Path, size: int, seed: int) -> None:
    """Add synthetic entries to every table of `cache` until it holds `size`, then compact."""
    import lance

    from batch import cache as result_cache
    from batch.config import StorageConfig
    from batch.io.storage import Location

    rng = np.random.default_rng(seed)
    root = Location(str(cache), StorageConfig())
    for level, _, store in result_cache.stores(root):
        entries = store.dataset("entries")
        have = entries.count_rows()
        sample = entries.head(min(have, 2000)).drop_columns(["key"])
        day = result_cache.today() - timedelta(days=1)
        for start in range(have, size, SYNTH_CHUNK):
            n = min(SYNTH_CHUNK, size - start)
            keys = pa.FixedSizeBinaryArray.from_buffers(result_cache.KEY, n, [None, pa.py_buffer(rng.bytes(32 * n))])
            values = sample.take(pa.array(np.arange(n) % sample.num_rows))
            sources = keys if level == "rows" else pa.FixedSizeBinaryArray.from_buffers(result_cache.KEY, n, [None, pa.py_buffer(rng.bytes(32 * n))])
            used = pa.table({"key": keys, "source": sources, "day": pa.array([day] * n, pa.date32()), "hit": pa.array([False] * n)},
                            schema=result_cache.USED_SCHEMA)  # fmt: skip
            store.append("used", used)
            store.append("entries", pa.table({"key": keys, **{name: values.column(name) for name in values.column_names}}))
        result_cache.index_keys(lance.dataset(store.uri("entries")))  # one index segment, as after many nights
        result_cache.compact(store, None, grace=timedelta(0))


LOOKUP_KEYS = 1_000


def lookups(cache: Path, count: int, seed: int = 7) -> dict:
    """Time `count` row-cache lookups of LOOKUP_KEYS keys (half present) in a fresh process."""
    import subprocess

    from batch import cache as result_cache
    from batch.config import StorageConfig
    from batch.io.storage import Location

    store = next(s for level, _, s in result_cache.stores(Location(str(cache), StorageConfig())) if level == "rows")
    entries = store.dataset("entries")
    rng = np.random.default_rng(seed)
    stored = entries.take(np.sort(rng.choice(entries.count_rows(), count * LOOKUP_KEYS // 2, replace=False)), columns=["key"])
    stored = pc.take(stored.column("key"), pa.array(rng.permutation(stored.num_rows))).combine_chunks()
    absent = pa.FixedSizeBinaryArray.from_buffers(result_cache.KEY, len(stored), [None, pa.py_buffer(rng.bytes(32 * len(stored)))])
    keys = Path(tempfile.mkdtemp(prefix="lookups-")) / "keys.bin"
    keys.write_bytes(b"".join(s.as_py() + a.as_py() for s, a in zip(stored, absent)))  # interleaved: each lookup half hits
    out = subprocess.run([sys.executable, __file__, "--lookup-child", str(keys), "--lookup-store", store.folder.path],
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, capture_output=True, text=True)  # fmt: skip
    shutil.rmtree(keys.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def lookup_child(keys_file: Path, folder: str) -> None:
    from batch import cache as result_cache
    from batch.config import StorageConfig
    from batch.io.storage import Location

    raw = keys_file.read_bytes()
    keys = [raw[i : i + 32] for i in range(0, len(raw), 32)]
    store = result_cache.Store(Location(folder, StorageConfig()))
    columns = [name for name in store.entries().schema.names if name != "key"]
    process = psutil.Process()
    rss_open = process.memory_info().rss
    seconds, hits = [], 0
    for start in range(0, len(keys), LOOKUP_KEYS):
        started = time.perf_counter()
        hits += len(store.lookup(keys[start : start + LOOKUP_KEYS], columns))
        seconds.append(time.perf_counter() - started)
    print(json.dumps({"lookups": len(seconds), "hits": hits, "keys": len(keys), "first_s": seconds[0],
                      "median_s": float(np.median(seconds)), "mean_s": float(np.mean(seconds)),
                      "rss_open_mib": rss_open / 2**20, "rss_growth_mib": (process.memory_info().rss - rss_open) / 2**20}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--sizes", default="40000,1000000,10000000", help="cache entries per level; the first is the cold run's")
    parser.add_argument("--changed-share", type=float, default=0.1)
    parser.add_argument("--workdir", type=Path, default=None, help="reuse: the cold run and grown caches are kept here")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--lookups-only", action="store_true", help="time the row cache's lookups alone, no warm runs")
    parser.add_argument("--lookups", type=int, default=30, help="lookups of 1,000 keys per cache size (--lookups-only)")
    parser.add_argument("--lookup-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--lookup-store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lookup_child:
        return lookup_child(args.lookup_child, args.lookup_store)

    from batch.demo.models import build_causal_lm

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cache-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    if not (model / "config.json").exists():
        build_causal_lm(model)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    corpus, cold_cache = work / "corpus", work / "cache-cold"
    job = job_file(work / "job.yaml", corpus, work / "out-cold", model, args.tokens, None)
    if not (cold_cache / "rows").exists():
        write_corpus(make_texts(args.rows, 0.0), corpus)
        cold = run_job(job, work / "out-cold", cold_cache, env)
        print(f"cold: {json.dumps(cold)}", file=sys.stderr)
        change_share(corpus, args.changed_share)  # the next night's corpus, the same for every size

    results: dict[str, dict] = {}
    for i, size in enumerate(int(s) for s in args.sizes.split(",")):
        cache = work / f"cache-{size}"
        if not cache.exists():
            started = time.time()
            shutil.copytree(cold_cache, cache)
            if i > 0:
                grow(cache, size, seed=size)
            else:  # as `cache compact` leaves it (a reused cold run's may have an older index layout)
                compact(cache)
            print(f"cache of {size}: built in {time.time() - started:.0f}s", file=sys.stderr)
        before = cache_facts(cache)
        if args.lookups_only:
            results[str(size)] = {**lookups(cache, args.lookups), "cache": before, "load_before": os.getloadavg()[0]}
            print(f"{size}: {json.dumps(results[str(size)])}", file=sys.stderr)
            continue
        pristine = work / f"cache-{size}-warm"  # the warm run writes into its cache: run on a copy
        shutil.rmtree(pristine, ignore_errors=True)
        shutil.copytree(cache, pristine)
        load = os.getloadavg()[0]
        result = run_job(job, work / f"out-{size}", pristine, env)
        results[str(size)] = {**result, "cache": before, "load_before": load}
        print(f"{size}: {json.dumps(results[str(size)])}", file=sys.stderr)
        shutil.rmtree(pristine, ignore_errors=True)

    (print_lookups if args.lookups_only else print_table)(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_table(results: dict[str, dict]) -> None:
    base = next(iter(results.values()))
    kinds = ("PrepareStage", "InferenceStage", "ParseStage")
    print(f"\n{'cache entries':>14} {'files':>6} {'MiB':>7} {'wall s':>7} {'x base':>7} "
          + " ".join(f"{k[:-5] + ' MiB':>14}" for k in kinds) + f" {'x base':>7} {'read MiB':>9} {'tree GiB':>9} {'load':>5}")  # fmt: skip
    for size, r in results.items():
        files = sum(level["files"] for level in r["cache"].values())
        mib = sum(level["mib"] for level in r["cache"].values())
        peaks = [r["actors"].get(k, {}).get("peak_mib", 0.0) for k in kinds]
        ratio = max(p / b for p, b in zip(peaks, [base["actors"].get(k, {}).get("peak_mib", 1.0) for k in kinds]) if b)
        read = sum(a["read_mib"] for a in r["actors"].values())
        print(f"{int(size):>14,} {files:>6} {mib:>7.0f} {r['wall']:>7.1f} {r['wall'] / base['wall']:>7.2f} "
              + " ".join(f"{p:>14.0f}" for p in peaks)
              + f" {ratio:>7.2f} {read:>9.0f} {r['tree_peak_gib']:>9.2f} {r['load_before']:>5.1f}")  # fmt: skip
    print("x base: wall time, and the largest ratio of an actor kind's peak memory, against the first cache")


def print_lookups(results: dict[str, dict]) -> None:
    print(f"\n{'cache entries':>14} {'lookups':>8} {'hits':>6} {'first s':>8} {'median s':>9} {'RSS open MiB':>13} {'RSS growth MiB':>15} {'load':>5}")
    for size, r in results.items():
        print(f"{int(size):>14,} {r['lookups']:>8} {r['hits']:>6} {r['first_s']:>8.3f} {r['median_s']:>9.3f} "
              f"{r['rss_open_mib']:>13.0f} {r['rss_growth_mib']:>15.0f} {r['load_before']:>5.1f}")  # fmt: skip
    print(f"each lookup: {LOOKUP_KEYS:,} keys of the row cache, half of them stored")


if __name__ == "__main__":
    main()
