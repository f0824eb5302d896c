"""spellbook.queries.search: query parsing, and the strategies for results too big to rank, on a real database
with the limits made small (monkeypatch) so that a few hundred rows exercise them."""
from __future__ import annotations

import pytest

from spellbook.queries import domains, search
from spellbook.database.connect import connect
from spellbook.ingest.load import ingest_training_files
from tests.conftest import write_v2


def test_fts_query_never_passes_syntax_through():
    assert search.fts_query("greg rutkowski") == '"greg" "rutkowski"'
    assert search.fts_query('"simon stålenhag" oil') == '"simon stålenhag" "oil"'
    assert search.fts_query("port*") == '"port"*'
    assert search.fts_query("NEAR(a b) OR c") == '"NEAR a" "b" "OR" "c"'  # operators are just words
    assert search.fts_query("mucha's") == '"mucha s"'
    assert search.fts_query("*") is None and search.fts_query("") is None


@pytest.fixture
def sorted_db(tmp_path):
    """600 captions with "cat", written in domain order (the worst case for a first-N sample)."""
    rows = []
    for i in range(600):
        domain = "alpha.com" if i < 300 else "beta.com"
        rows.append({"URL": f"https://img.{domain}/{i}.jpg", "TEXT": f"a cat number {i}" + (" tabby" if i % 100 == 0 else "")})
    db = tmp_path / "sorted.db"
    ingest_training_files(db, [write_v2(tmp_path / "sorted.parquet", rows)])
    return db


def test_small_results_are_ranked_and_exact(sorted_db):
    conn = connect(sorted_db)
    result = search.search_training(conn, "tabby")
    assert (result.total, result.total_exact, result.ranked) == (6, True, True)
    assert all("<mark>tabby</mark>" in row["text_html"] for row in result.rows)


def test_huge_results_are_spread_over_the_collection(sorted_db, monkeypatch):
    monkeypatch.setattr(search, "RANK_LIMIT", 50)
    monkeypatch.setattr(search, "COUNT_LIMIT", 100)
    conn = connect(sorted_db)
    result = search.search_training(conn, "cat", limit=20)
    assert result.ranked is False
    assert result.total == 600 and result.total_exact is False  # from fts5vocab, exact for one term
    domains = {row["domain"] for row in result.rows}
    assert domains == {"alpha.com", "beta.com"}  # a first-20 sample would be all alpha.com
    assert len(result.rows) == 20 and len({row["id"] for row in result.rows}) == 20


def test_domain_breakdown_estimate_from_spread_sample(sorted_db):
    conn = connect(sorted_db)
    exact = domains.domain_breakdown(conn, "cat")
    assert exact["estimated"] is False and exact["domains"] == [{"domain": "alpha.com", "count": 300}, {"domain": "beta.com", "count": 300}]
    estimate = domains.domain_breakdown(conn, "cat", sample=100)
    assert estimate["estimated"] is True and estimate["total"] == 600
    counts = {d["domain"]: d["count"] for d in estimate["domains"]}
    assert 240 <= counts["alpha.com"] <= 360 and 240 <= counts["beta.com"] <= 360


def test_highlight_folds_like_the_index_and_escapes():
    terms = search.match_terms(search.fts_query('"simon stalenhag" port*'))
    html = str(search.highlighted("<b>Simon</b> Stålenhag's PORTRAITS & more", terms))
    assert html == "&lt;b&gt;<mark>Simon</mark>&lt;/b&gt; <mark>Stålenhag</mark>&#39;s <mark>PORTRAITS</mark> &amp; more"
    assert str(search.highlighted("no match here", terms)) == "no match here"
    assert str(search.highlighted("<i>x</i>")) == "&lt;i&gt;x&lt;/i&gt;"


def test_small_results_come_shortest_text_first(sorted_db):
    conn = connect(sorted_db)
    result = search.search_training(conn, "tabby")
    lengths = [len(row["caption"]) for row in result.rows]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    page = search.search_training(conn, "tabby", limit=2, offset=2)
    assert [r["id"] for r in page.rows] == [r["id"] for r in result.rows[2:4]]


def test_highlight_cannot_be_forged_by_the_text():
    terms = search.match_terms(search.fts_query("cat"))
    forged = "a \x00\x01<script>x</script>\x00\x02 cat"
    html = str(search.highlighted(forged, terms))
    assert "<script>" not in html and html.count("<mark>") == 1 and "&lt;script&gt;" in html
    assert str(search.highlighted("Cat & dog's <cat>", terms)) == "<mark>Cat</mark> &amp; dog&#39;s &lt;<mark>cat</mark>&gt;"
