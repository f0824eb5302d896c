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
    assert result.total == 600 and result.total_exact is True  # one word: its document count, exact
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


def test_one_word_totals_are_exact_without_a_walk(sorted_db, monkeypatch):
    """Regression: a single word's total came from a count walked up to COUNT_LIMIT and then from
    fts5vocab, labelled an estimate; a word's document count is its exact total."""
    monkeypatch.setattr(search, "RANK_LIMIT", 50)
    monkeypatch.setattr(search, "COUNT_LIMIT", 100)
    conn = connect(sorted_db)
    for q, expected in (("cat", 600), ("number", 600), ("a", 600)):
        result = search.search_training(conn, q, limit=10)
        assert (result.total, result.total_exact) == (expected, True), q
    # Several words stay an estimate beyond COUNT_LIMIT: their rows are not counted.
    both = search.search_training(conn, "cat number", limit=10)
    assert both.total_exact is False and both.total == 600


@pytest.fixture(scope="module")
def common_words_db(tmp_path_factory):
    """6,000 captions where "the" and "white" are everywhere but "the white" is rare: 120 of them,
    every 50th row (spread), and 300 more only in the last 300 rows (a cluster, as the last
    file ingested gives); "post"* stands for seven words."""
    tmp = tmp_path_factory.mktemp("common")
    words = ["post", "poster", "posters", "postcard", "postal", "posté", "postmodern"]
    rows = []
    for i in range(6_000):
        if i % 50 == 0 or i >= 5_700:
            text = f"the white cat {i} {words[i % 7]}"
        else:
            text = f"white paint on the wall {i} {words[i % 7] if i % 3 == 0 else 'brick'}"
        rows.append({"URL": f"https://img.site{i % 4}.com/{i}.jpg", "TEXT": text})
    db = tmp / "common.db"
    ingest_training_files(db, [write_v2(tmp / "common.parquet", rows[:5_700]), write_v2(tmp / "late.parquet", rows[5_700:])])
    return db


def _fts_ids(conn, match):
    return [i for (i,) in conn.execute("SELECT rowid FROM training_images_fts WHERE training_images_fts MATCH ? ORDER BY rowid", (match,))]


def _all_pages(conn, q, size):
    """Every page until the result says there is no more: the ids, and each page's result."""
    ids, results, offset = [], [], 0
    while True:
        result = search.search_training(conn, q, limit=size, offset=offset)
        results.append(result)
        ids.extend(row["id"] for row in result.rows)
        if len(result.rows) < size or offset + size >= result.total:
            return ids, results
        offset += size


def test_a_phrase_of_common_words_is_not_walked_whole(common_words_db, monkeypatch):
    """Regression: "the white" (both words in most rows, together in few) was found by walking the
    rarer word's whole doclist before the first page (25-55 ms at 12M rows). Above WALK_LIMIT rows
    for every word, the page comes from spread windows walked only as far as it needs, with an
    estimated total; every page is new and full while matches remain, and the last total is exact."""
    monkeypatch.setattr(search, "WALK_LIMIT", 1_000)
    conn = connect(common_words_db)
    truth = _fts_ids(conn, '"the white"')
    assert len(truth) == 414  # 114 spread + 300 clustered at the end
    first = search.search_training(conn, '"the white"', limit=30)
    assert first.ranked is False and first.total_exact is False
    assert len(first.rows) == 30 and 30 < first.total <= 6_000
    assert min(r["id"] for r in first.rows) < 1_000 and max(r["id"] for r in first.rows) > 4_800  # spread over all five windows, not the first 30
    ids, results = _all_pages(conn, '"the white"', 30)
    assert sorted(ids) == truth and len(set(ids)) == len(ids)  # every match once, in the pages' one order
    assert all(len(r.rows) == 30 for r in results[:-1])
    assert results[-1].total_exact and results[-1].total == 414
    # While more remain, the total always offers the next page.
    assert all(r.total > (k + 1) * 30 for k, r in enumerate(results[:-1]))
    # The same words unquoted (an AND of two common words) take the same path.
    assert search.search_training(conn, "white the", limit=30).ranked is False
    # Below the limit the result is walked, ranked and exact as before.
    monkeypatch.setattr(search, "WALK_LIMIT", 100_000)
    ranked = search.search_training(conn, '"the white"', limit=30)
    assert (ranked.ranked, ranked.total, ranked.total_exact) == (True, 414, True)


def test_the_estimated_total_of_a_spread_result_is_near_the_count(common_words_db, monkeypatch):
    monkeypatch.setattr(search, "WALK_LIMIT", 1_000)
    conn = connect(common_words_db)
    for q, match in (('"white paint"', '"white paint"'), ('"white cat"', '"white cat"')):
        truth = len(_fts_ids(conn, match))
        result = search.search_training(conn, q, limit=100)
        assert result.total_exact or abs(result.total - truth) <= 0.35 * truth, (q, result.total, truth)


def test_a_prefix_is_searched_as_the_words_it_stands_for(common_words_db, monkeypatch):
    """Regression: every window of a spread sample re-merged all the doclists of "post"* (FTS5 has
    no prefix index here), 7-12 ms a window at 12M rows. A prefix of few words is now their OR,
    which finds exactly the same rows, accents folded as the index folds them."""
    conn = connect(common_words_db)
    expanded = search.expand_prefixes(conn, search.TRAINING, search.fts_query("post* white"))
    assert expanded == '("post" OR "postal" OR "postcard" OR "poste" OR "poster" OR "posters" OR "postmodern") AND "white"'
    assert search.expand_prefixes(conn, search.TRAINING, search.fts_query("posté*")) == '("poste" OR "poster" OR "posters")'
    for q in ("post*", "poste*", "posté*", "post* white", "zzq*", '"white post"*', "white"):
        match = search.fts_query(q)
        assert _fts_ids(conn, search.expand_prefixes(conn, search.TRAINING, match)) == _fts_ids(conn, match), q
    assert search.expand_prefixes(conn, search.TRAINING, '"white post"*') == '"white post"*'  # a phrase's prefix stays
    monkeypatch.setattr(search, "PREFIX_TERMS", 3)  # more words than that: the prefix as it was
    assert search.expand_prefixes(conn, search.TRAINING, '"post"*') == '"post"*'
    # The pages of a prefix too big to rank: the same rows, each once.
    monkeypatch.setattr(search, "RANK_LIMIT", 100)
    monkeypatch.setattr(search, "PREFIX_TERMS", 64)
    ids, _ = _all_pages(conn, "post*", 250)
    assert sorted(ids) == _fts_ids(conn, '"post"*') and len(ids) == len(set(ids))


def test_the_hybrid_keyword_side_does_not_walk_common_words_whole(common_words_db, monkeypatch):
    """Regression: /-/similar's keyword ranking walked "the white" to its first RANK_LIMIT matches,
    which for common words together in few rows is the rarer word's whole doclist."""
    from spellbook.queries import similar

    conn = connect(common_words_db)
    truth = set(_fts_ids(conn, '"the white"'))

    def ranking(walk_limit, limit):
        monkeypatch.setattr(search, "WALK_LIMIT", walk_limit)
        steps = []
        conn.set_progress_handler(lambda: steps.append(1), 1)  # SQLite VM steps: every match fetched costs some
        try:
            return similar.keyword_ranking(conn, search.TRAINING, '"the white"', limit), len(steps)
        finally:
            conn.set_progress_handler(None, 1)

    walked, walked_steps = ranking(100_000, 500)  # below the limit: walked, every match
    assert set(walked) == truth
    ranked, steps = ranking(1_000, 30)
    assert len(ranked) == len(set(ranked)) == 30 and set(ranked) <= truth
    assert min(ranked) < 1_000 and max(ranked) > 4_800  # spread over the windows
    assert steps < walked_steps / 3, (steps, walked_steps)  # not every match fetched
