"""The result cache's store (batch/cache.py): lookups by key, compaction, retention, forget
and stats, on a local folder and on a real S3 endpoint (moto's server)."""

from __future__ import annotations

from datetime import date, timedelta

import pyarrow as pa
import pytest

from batch import cache
from batch.cache import ResultCache, RowCache, Store, text_key
from batch.config import StorageConfig
from batch.io.storage import Location
from batch.tasks.base import Completion, Generate

COLUMNS = [pa.field("sentiment", pa.string()), pa.field("scores", pa.list_(pa.float32()))]
IDENTITY = "task0123456789abcdef0123"
ENGINE = "engine0123456789abcdef01"
NOW = date(2026, 11, 30)


def values(i: int) -> dict:
    return {"sentiment": f"label{i % 3}", "scores": [0.5, float(i)]}


def request(text: str, part: int = 0) -> Generate:
    return Generate(messages=(("user", f"translate: {text} / part {part}"),), max_tokens=16)


def answer(text: str, part: int = 0) -> Completion:
    return Completion(text=f"translated {text} {part}", finish_reason="stop", prompt_tokens=5, output_tokens=3)


def fill(root: Location, texts: list[str], actors: int = 3) -> None:
    """Each text cached at both levels as a run would: several actors, one flush each per
    batch, each request logged with the text it came from."""
    for actor in range(actors):
        rows = RowCache(root, IDENTITY, COLUMNS)
        answers = ResultCache(root, ENGINE, {})
        rows.load(), answers.load()
        mine = texts[actor::actors]
        for start in range(0, len(mine), 4):  # batches of four
            for text in mine[start : start + 4]:
                rows.add(text, values(texts.index(text)))
                for part in (0, 1):
                    answers.add(request(text, part), answer(text, part), [text_key(text)])
            rows.flush()
            answers.flush()


def read_back(root: Location, texts: list[str]) -> tuple[dict, dict]:
    rows = RowCache(root, IDENTITY, COLUMNS)
    answers = ResultCache(root, ENGINE, {})
    rows.load(), answers.load()
    rows.prefetch(texts)
    requests = [request(text, part) for text in texts for part in (0, 1)]
    answers.prefetch(requests)
    return {t: rows.get(t) for t in texts}, {r: answers.get(r) for r in requests}


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return Location(str(tmp_path / "_cache"), StorageConfig())
    s3 = request.getfixturevalue("s3")  # one bucket, a prefix per test
    return Location(f"{s3.bucket('cache')}/{tmp_path.name}/_cache", StorageConfig(endpoint_url=s3.endpoint))


def test_lookup_returns_what_was_written_and_nothing_else(root):
    texts = [f"post number {i}" for i in range(20)]
    fill(root, texts)
    rows, answers = read_back(root, texts + ["never seen"])
    assert all(rows[t] == values(i) for i, t in enumerate(texts))
    assert rows["never seen"] is None
    assert answers[request("post number 7", 1)] == answer("post number 7", 1)
    assert answers[request("never seen", 0)] is None


def test_compaction_keeps_results_and_identity_and_bounds_files(root):
    texts = [f"post number {i}" for i in range(40)]
    fill(root, texts)
    before = {(level, identity): store.folder.list_files() for level, identity, store in cache.stores(root)}
    done = [cache.compact(store, None, grace=timedelta(0)) for _, _, store in cache.stores(root)]
    after = {(level, identity) for level, identity, _ in cache.stores(root)}
    assert after == set(before) == {("rows", IDENTITY), ("answers", ENGINE)}
    assert all(c.files_after < c.files_before for c in done)
    assert [c.entries for c in done] == [40, 80]  # rows, answers (two per text)
    # folded again with nothing new: the file count stays where it is
    again = [cache.compact(store, None, grace=timedelta(0)) for _, _, store in cache.stores(root)]
    assert [c.files_after for c in again] == [c.files_after for c in done]
    rows, answers = read_back(root, texts)
    assert all(rows[t] == values(i) for i, t in enumerate(texts))
    assert all(answers[request(t, p)] == answer(t, p) for t in texts for p in (0, 1))
    # the compacted entries are indexed: lookups go through the B-tree
    entries = cache.stores(root)[0][2].dataset("entries")
    assert [index.name for index in entries.describe_indices()] == ["key_idx"]


def test_lookup_finds_exactly_the_stored_keys_across_files_index_pages_and_deletes(tmp_path):
    """One lookup mixes hits and misses, whatever holds the keys: several files, index
    segments of many pages, rows not yet indexed, rows forgotten, an index of an older
    layout that compaction rebuilds."""
    root = Location(str(tmp_path / "_cache"), StorageConfig())
    texts = [f"post number {i}" for i in range(6 * cache.INDEX_PAGE_ROWS)]
    stored: dict[bytes, dict] = {}

    def write(chunk: list[str]) -> None:
        rows = RowCache(root, IDENTITY, COLUMNS)
        for text in chunk:
            rows.add(text, values(texts.index(text)))
        rows.flush()
        stored.update({text_key(t): values(texts.index(t)) for t in chunk})

    def check(extra_misses: list[bytes] = ()) -> None:
        keys = list(stored) + [text_key(f"never written {i}") for i in range(300)] + list(extra_misses)
        keys = [keys[i] for i in sorted(range(len(keys)), key=lambda i: keys[i][::-1])]  # not in key order
        found = Store(root.join("rows", IDENTITY)).lookup(keys, [f.name for f in COLUMNS])
        assert found == stored

    store = Store(root.join("rows", IDENTITY))
    for start in range(0, len(texts) // 2, len(texts) // 6):  # three files
        write(texts[start : start + len(texts) // 6])
    store.dataset("entries").create_scalar_index("key", "BTREE", name="key_idx")  # Lance's default pages
    assert cache._page_rows(store.dataset("entries")) > 2 * cache.INDEX_PAGE_ROWS
    check()
    cache.compact(store, None, grace=timedelta(0))  # rebuilt with small pages
    assert cache._page_rows(store.dataset("entries")) <= cache.INDEX_PAGE_ROWS
    check()
    write(texts[len(texts) // 2 : 3 * len(texts) // 4])
    cache.compact(store, None, grace=timedelta(0))  # a second index segment, with the same pages
    assert len(store.dataset("entries").stats.index_stats("key_idx")["segments"]) == 2
    assert cache._page_rows(store.dataset("entries")) <= cache.INDEX_PAGE_ROWS
    write(texts[3 * len(texts) // 4 :])  # not indexed yet
    check()
    forgotten = [text_key(t) for t in texts[:: cache.INDEX_PAGE_ROWS // 4]]
    assert cache.forget(root, forgotten)["rows"] == len(forgotten)
    for key in forgotten:
        del stored[key]
    check(forgotten)
    cache.compact(store, None, grace=timedelta(0))
    check(forgotten)


def test_retention_drops_only_entries_unused_for_longer(root):
    old, recent, reused = ["old post a", "old post b"], ["new post"], ["old but read last night"]
    rows = RowCache(root, IDENTITY, COLUMNS)
    for day, texts in ((NOW - timedelta(days=40), old + reused), (NOW - timedelta(days=1), recent)):
        keys = [text_key(t) for t in texts]
        rows.store.log_use(keys, keys, hit=False, day=day)
        rows.store.append("entries", pa.table({"key": keys, **{f.name: [values(0)[f.name]] * len(keys) for f in COLUMNS}},
                                              schema=rows.schema))  # fmt: skip
    # a hit on the reused text yesterday keeps it
    rows.store.log_use([text_key(reused[0])], [text_key(reused[0])], hit=True, day=NOW - timedelta(days=1))
    done = cache.compact(rows.store, retention_days=30, grace=timedelta(0), now=NOW)
    assert done.dropped == 2 and done.entries == 2
    found, _ = read_back(root, old + recent + reused)
    assert [found[t] is not None for t in old + recent + reused] == [False, False, True, True]


def test_forget_removes_a_text_from_every_level(root):
    texts = [f"post number {i}" for i in range(10)]
    fill(root, texts, actors=2)
    shared = request("boilerplate")  # asked by two texts: forgetting either removes it
    answers = ResultCache(root, ENGINE, {})
    answers.add(shared, answer("boilerplate"), [text_key(texts[3]), text_key(texts[4])])
    answers.flush()
    # a later run that hit an answer for a text logs that text as its source too
    later = ResultCache(root, ENGINE, {})
    later.load()
    later.prefetch([request(texts[5], 0)], {request(texts[5], 0): {text_key(texts[3])}})

    removed = cache.forget(root, [text_key(texts[3])])
    assert removed == {"rows": 1, "answers": 4}  # its row; its two answers, the shared one, the one it reused
    rows, found = read_back(root, texts)
    assert rows[texts[3]] is None and found[request(texts[3], 0)] is None and found[request(texts[3], 1)] is None
    assert found[request(texts[5], 0)] is None
    assert all(rows[t] is not None for t in texts if t != texts[3])
    assert found[request(texts[5], 1)] is not None and found[request(texts[4], 0)] is not None
    # nothing names the text any more, and a compaction keeps it gone
    for _, _, store in cache.stores(root):
        used = store.dataset("used").to_table()
        assert text_key(texts[3]) not in used.column("source").to_pylist()
        cache.compact(store, None, grace=timedelta(0))
    rows, found = read_back(root, [texts[3]])
    assert rows[texts[3]] is None and found[request(texts[3], 0)] is None


def test_stats_count_entries_files_and_hit_rate(tmp_path):
    root = Location(str(tmp_path / "_cache"), StorageConfig())
    texts = [f"post number {i}" for i in range(8)]
    fill(root, texts, actors=1)
    read_back(root, texts[:6] + ["new one", "other new"])  # 6 hits of 8 in the row cache
    report = {(s["level"], s["identity"]): s for s in cache.stats(root)}
    rows = report[("rows", IDENTITY)]
    assert rows["entries"] == 8 and rows["files"] > 0 and rows["bytes"] > 0
    (day,) = rows["days"].values()
    assert day == {"hits": 6, "added": 8, "hit_rate": 6 / 14}


def test_actors_appending_at_once_all_land(tmp_path):
    """Concurrent writers (actors of one run, or two nights overlapping) never lose an entry."""
    from concurrent.futures import ThreadPoolExecutor

    root = Location(str(tmp_path / "_cache"), StorageConfig())
    texts = [f"post {i}" for i in range(64)]

    def actor(i: int) -> None:
        rows = RowCache(root, IDENTITY, COLUMNS)
        for text in texts[i::8]:
            rows.add(text, values(texts.index(text)))
            rows.flush()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(actor, range(8)))
    found, _ = read_back(root, texts)
    assert all(found[t] == values(i) for i, t in enumerate(texts))
    assert Store(root.join("rows", IDENTITY)).count() == 64


def test_job_warm_after_compaction_and_forget(models, tmp_path):
    """The whole job through its command line: a cold run publishes and compacts its cache;
    `cache compact` and `cache stats` work on it; a warm run after compaction infers nothing
    and equals the cold one; after `cache forget --id`, only that post is redone."""
    import json

    import pyarrow.parquet as pq

    from conftest import cli_ok, run_cli, write_corpus, write_job

    rows = [{"post_id": f"p{i}", "text": f"Post number {i}: the weather is {'good' if i % 2 else 'bad'} today."} for i in range(24)]
    write_corpus(None, str(tmp_path / "in"), rows, files=2)
    job = write_job(tmp_path / "job.yaml", {
        "name": "cache", "input": {"uris": [str(tmp_path / "in")], "id_column": "post_id"},
        "output": {"uri": str(tmp_path / "out")}, "engine": {"batch_size": 8, "max_model_len": 1024},
        "tasks": {"sentiment": {"model": str(models["chat"]), "labels": ["negative", "neutral", "positive"]},
                  "translation": {"model": str(models["chat"]), "target_languages": ["fr"], "max_output_tokens": 8}},
    })  # fmt: skip
    out = cli_ok(run_cli("run", str(job)))
    assert "cache: compacted 3 tables" in out  # two row caches, one engine's answers
    cold = pq.read_table(tmp_path / "out")

    compacted = cli_ok(run_cli("cache", "compact", str(job), "--grace-hours", "0"))
    assert compacted.count("files") == 3
    stats = json.loads(cli_ok(run_cli("cache", "stats", str(job), "--json")))
    assert sorted(s["level"] for s in stats) == ["answers", "rows", "rows"]
    assert all(s["entries"] == 24 for s in stats if s["level"] == "rows")
    files_after_compaction = sum(s["files"] for s in stats)

    cli_ok(run_cli("run", str(job), "--overwrite"))
    warm = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert warm["requests_inferred"] == 0 and warm["cached_rows"] == 2 * len(rows)
    key = lambda table: sorted(table.drop_columns(["run_id"]).to_pylist(), key=lambda r: r["post_id"])  # noqa: E731
    assert key(pq.read_table(tmp_path / "out")) == key(cold)
    # the publish folded the warm run's use logs; replaced files wait out the grace period
    cli_ok(run_cli("cache", "compact", str(job), "--grace-hours", "0"))
    stats = json.loads(cli_ok(run_cli("cache", "stats", str(job), "--json")))
    assert sum(s["files"] for s in stats) == files_after_compaction  # bounded: one more night adds none
    (today,) = next(s for s in stats if s["level"] == "rows")["days"].values()
    assert today["hits"] == 24 and today["added"] == 24  # the warm run hit what the cold one added

    forgot = cli_ok(run_cli("cache", "forget", str(job), "--id", "p7"))
    assert "2 row-cache entries" in forgot and "0 answers" not in forgot
    cli_ok(run_cli("run", str(job), "--overwrite"))
    again = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert again["cached_rows"] == 2 * (len(rows) - 1) and again["requests_inferred"] > 0
    assert key(pq.read_table(tmp_path / "out")) == key(cold)


def test_other_columns_under_the_same_identity_are_not_used(tmp_path):
    root = Location(str(tmp_path / "_cache"), StorageConfig())
    fill(root, ["a post"], actors=1)
    other = RowCache(root, IDENTITY, [pa.field("sentiment", pa.int32())])
    other.add("another post", {"sentiment": 1})
    other.flush()  # checked on first use: nothing written, nothing raised
    assert other.get("a post") is None
    assert Store(root.join("rows", IDENTITY)).count() == 1
