"""The sample corpus shipped with the package: a few hundred posts written for this project
in several languages and scripts, with gold sentiment labels and English references."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@lru_cache(maxsize=1)
def sample_posts() -> tuple[dict, ...]:
    text = files("batch").joinpath("data/sample_posts.jsonl").read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def write_sample_corpus(out_dir: str | Path, files_count: int = 4) -> list[Path]:
    """The sample posts as `files_count` Parquet files, the shape of a real daily drop."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    posts = list(sample_posts())
    paths = []
    for i in range(files_count):
        chunk = posts[i::files_count]
        path = out_dir / f"posts-{i:03d}.parquet"
        pq.write_table(pa.Table.from_pylist(chunk), path)
        paths.append(path)
    return paths
