"""Search pages that are right when matches cluster: a word present only in the last ingested file.

Regression tests for the issue's defects, through Datasette's ASGI client on a real database
(tests/conftest.py: clustered_db): windows that overlapped and repeated the same first rows, pages
that repeated or ran short, a domain chart that counted rows many times, totals that ignored the
domain or the accents, a pager that dropped _size, JSON without next links, a histogram from the
first matches by id with its empty bins closed up.
"""
from __future__ import annotations

import re
import urllib.parse

import pytest

from spellbook.database.connect import connect
from tests.conftest import CLUSTER_DOMAINS, CLUSTER_ROWS, CLUSTER_WORD, EARLY_ROWS, spellbook_datasette, write_v2

pytestmark = pytest.mark.pages


@pytest.fixture(scope="module")
def ds(clustered_db):
    return spellbook_datasette(clustered_db)


async def get(ds, path, status=200):
    response = await ds.client.get(path)
    assert response.status_code == status, (path, response.status_code, response.text[:400])
    return response


def tile_ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<a class="sb-frame" href="/[^/"]+/training_images/(\d+)"', page)]


async def test_a_clustered_word_fills_its_first_page(ds):
    page = (await get(ds, f"/-/search?q={CLUSTER_WORD}")).text
    ids = tile_ids(page)
    assert len(ids) == 100 and len(set(ids)) == 100  # not 50 tiles, not repeats
    assert all(i > EARLY_ROWS for i in ids)


async def test_clustered_pages_never_repeat_and_never_run_short(ds):
    seen = []
    for page in range(1, 11):
        data = (await get(ds, f"/-/search.json?q={CLUSTER_WORD}&_size=500&page={page}")).json()
        assert len(data["rows"]) == 500, page
        seen.extend(row["id"] for row in data["rows"])
    assert len(seen) == len(set(seen)) == 5_000
    # Spread: the pages cover the cluster from its start to its end, not its first 5,000 rows.
    assert min(seen) < EARLY_ROWS + 5_000 and max(seen) > EARLY_ROWS + CLUSTER_ROWS - 5_000


async def test_pager_and_json_keep_every_parameter(ds):
    page = (await get(ds, f"/-/search?q={CLUSTER_WORD}&_size=7&domain=beta-pics.net")).text
    link = re.search(r'<p class="sb-pager"><a href="([^"]+)"', page).group(1)
    args = urllib.parse.parse_qs(urllib.parse.urlsplit(link.replace("&amp;", "&")).query)
    assert args["_size"] == ["7"] and args["page"] == ["2"] and args["domain"] == ["beta-pics.net"]
    data = (await get(ds, f"/-/search.json?q={CLUSTER_WORD}&_size=7")).json()
    assert data["next"].startswith("/-/search.json?") and "_size=7" in data["next"] and "page=2" in data["next"]
    following = (await get(ds, data["next"])).json()
    assert not {r["id"] for r in data["rows"]} & {r["id"] for r in following["rows"]}
    last = (await get(ds, "/-/search.json?q=%22landscape+painting%22+hills+number+7&_size=50")).json()
    assert last["next"] is None  # a result that fits one page offers no next one


async def test_domain_chart_counts_each_row_once(ds):
    data = (await get(ds, f"/-/domains.json?q={CLUSTER_WORD}")).json()
    assert data["estimated"] is True
    counts = {d["domain"]: d["count"] for d in data["domains"]}
    assert sum(counts.values()) + data["other"] == data["total"]
    for domain, expected in CLUSTER_DOMAINS.items():  # the file is sorted by domain: a first-rows sample is all alpha-photos.org
        assert abs(counts[domain] - expected) / expected < 0.15, counts


async def test_totals_respect_the_domain(ds):
    for domain, expected in CLUSTER_DOMAINS.items():
        data = (await get(ds, f"/-/search.json?q={CLUSTER_WORD}&domain={domain}")).json()
        assert abs(data["total"] - expected) / expected < 0.15, (domain, data["total"])
        assert {row["domain"] for row in data["rows"]} == {domain} and len(data["rows"]) == 100
    unknown = (await get(ds, f"/-/search.json?q={CLUSTER_WORD}&domain=nowhere.example")).json()
    assert unknown["total"] == 0 and unknown["rows"] == []


async def test_totals_fold_accents_and_never_exceed_the_rows(ds):
    accented = (await get(ds, "/-/search.json?q=pok%C3%A9mon")).json()  # stored folded, as "pokemon"
    assert abs(accented["total"] - CLUSTER_ROWS) / CLUSTER_ROWS < 0.01 and accented["next"]
    prefix = (await get(ds, "/-/search.json?q=quok*")).json()  # "quokka" and "quokkas" in every row
    assert CLUSTER_ROWS * 0.9 <= prefix["total"] <= EARLY_ROWS + CLUSTER_ROWS


async def test_artist_histogram_is_a_labelled_spread_sample_with_its_empty_bins(ds):
    data = (await get(ds, "/-/artist/greg%20rutkowski.json")).json()
    histogram = data["training"]["aesthetic_histogram"]
    assert histogram["sampled"] is True and histogram["sample"] >= 20_000
    bins = [b["bin"] for b in histogram["bins"]]
    assert bins == [5.0 + 0.25 * i for i in range(10)]  # 5.0 .. 7.25, the empty ones between kept
    counts = {b["bin"]: b["count"] for b in histogram["bins"]}
    assert counts[5.5] == 0 and abs(counts[5.0] - counts[7.25]) / counts[5.0] < 0.1
    page = (await get(ds, "/-/artist/greg%20rutkowski")).text
    assert "estimated from" in page and page.count("sb-empty-bin") == 8


def test_domain_sample_counts_distinct_rows_when_the_cluster_is_last(tmp_path):
    """9,000 captions without the word, then 1,000 with it (500 from each of two domains, in
    domain order): overlapping windows all returned the cluster's first rows, so the sample was
    nearly all the first domain."""
    from spellbook.ingest.load import ingest_training_files
    from spellbook.queries.domains import domain_breakdown

    rows = [{"URL": f"https://www.filler{i % 7}.com/{i}.jpg", "TEXT": f"a quiet harbour {i}"} for i in range(9_000)]
    rows += [{"URL": f"https://{'first' if i < 500 else 'second'}-site.org/{i}.jpg", "TEXT": f"a wombat {i}"} for i in range(1_000)]
    db = tmp_path / "late.db"
    ingest_training_files(db, [write_v2(tmp_path / "late.parquet", rows)])
    breakdown = domain_breakdown(connect(db), "wombat", sample=200)
    counts = {d["domain"]: d["count"] for d in breakdown["domains"]}
    assert breakdown["estimated"] and breakdown["total"] == 1_000
    assert 400 <= counts["first-site.org"] <= 600 and 400 <= counts["second-site.org"] <= 600, counts


def broken_other_db(tmp_path):
    rows = [{"URL": f"https://big.example.com/{i}.jpg", "TEXT": f"tiger {i}"} for i in range(30)]
    rows += [{"URL": f"https://www.site{i}.net/x.jpg", "TEXT": f"tiger site {i}"} for i in range(200)]
    db = tmp_path / "other.db"
    from spellbook.ingest.load import ingest_training_files

    ingest_training_files(db, [write_v2(tmp_path / "other.parquet", rows)])
    return db


async def test_a_long_other_bar_is_drawn_broken_not_capped(tmp_path):
    ds = spellbook_datasette(broken_other_db(tmp_path))
    page = (await get(ds, "/-/domains?q=tiger&top=1")).text  # big.example.com 30, other 200
    other = re.search(r'<div class="sb-bar sb-other[^"]*"', page).group(0)
    assert "sb-broken-bar" in other and "sb-bar-break" in page
    top = (await get(ds, "/-/domains?q=tiger&top=300")).text  # every domain named: nothing broken
    assert "sb-broken-bar" not in top


def test_prompt_pages_do_not_repeat_when_prompts_cluster(tmp_path):
    """Prompt corpora are ingested one after another: page 2 of /-/prompts must not repeat page 1."""
    import asyncio

    import pyarrow as pa
    import pyarrow.parquet as pq

    from spellbook.ingest.load import ingest_prompt_files

    early = tmp_path / "early.parquet"
    late = tmp_path / "late.parquet"
    pq.write_table(pa.table({"prompt": [f"a castle on a hill {i}" for i in range(3_000)], "seed": pa.array(range(3_000), pa.uint32())}), early)
    pq.write_table(pa.table({"prompt": [f"a red wombat, concept art {i}" for i in range(9_000)], "seed": pa.array(range(9_000), pa.uint32())}), late)
    db = tmp_path / "prompts.db"
    ingest_prompt_files(db, [early, late], source_format="diffusiondb-parquet")
    ds = spellbook_datasette(db)

    async def pages():
        ids = []
        for page in (1, 2, 3):
            data = (await get(ds, f"/-/prompts.json?q=wombat&_size=60&page={page}")).json()
            assert len(data["rows"]) == 60
            ids.extend(row["id"] for row in data["rows"])
        return ids

    ids = asyncio.run(pages())
    assert len(set(ids)) == 180


def test_unknown_domain_reads_no_rows_and_domains_browse_by_index(clustered_db):
    from spellbook.queries.search import search_training

    conn = connect(clustered_db)
    statements = []
    conn.set_trace_callback(statements.append)
    result = search_training(conn, "", domain="nowhere.example")
    assert result.total == 0 and not any("training_images" in sql for sql in statements)
    plan = " ".join(str(row) for row in conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM training_images WHERE domain_id = 3 ORDER BY id LIMIT 100"
    ))
    assert "USING INDEX idx_training_images_domain" in plan or "USING COVERING INDEX idx_training_images_domain" in plan
    browsed = search_training(conn, "", domain="beta-pics.net", limit=10)
    assert browsed.total == CLUSTER_DOMAINS["beta-pics.net"] and len(browsed.rows) == 10
