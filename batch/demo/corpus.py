"""The sample corpus shipped with the package: a few hundred posts written for this project
in several languages and scripts, with gold sentiment labels, a gold topic and English
references. Eight posts carry planted (fake) personal data for the privacy tests.

`gold_topic` is one of TOPICS, derived from the English reference by `topic_of` (the first
rule whose keywords match): a fixed, checkable rule, so a topic model is scored against
something a reader can reproduce, not against hand labels."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


# (topic, keywords in the English reference), first match wins; no match: "other"
TOPIC_RULES = (
    ("delivery", r"deliver|courier|takeout|\border (arrived|was)|parcel|package|shipping|swiftbox|locker|pickup"),
    ("service", r"support|hotline|refund|service|on hold|feedback|booking (reference|number)|apologi|inconvenience"
                r"|outage|network|restore|\bcancel|rebook|check-in|boarding|suitcase|luggage|flight|airport|agent"
                r"|answer|claim|is down|line back"),
    ("price", r"\bprices?\b|\bcosts?\b|expensive|cheap|how much|rubles|euros?\b|€|\$\d|\bpay|paid|charged|discount"
              r"|free earbuds|\bbill"),
    ("product", r"pixelo|camera|\bapp\b|update|coffee|latte|chai|espresso|flat white|menu|battery|screen|phone|review"
                r"|feature"),
    ("event", r"concert|tickets?\b|match|nova8|nordhavn|\bshow\b|livestream|festival|goal|equali[sz]er|fans|lineup"
              r"|stadium|tour"),
)  # fmt: skip
TOPICS = (*(topic for topic, _ in TOPIC_RULES), "other")


def topic_of(reference_en: str) -> str:
    text = reference_en.lower()
    return next((topic for topic, keywords in TOPIC_RULES if re.search(keywords, text)), "other")


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
