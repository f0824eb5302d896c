"""Caption and prompt search: the read-only queries behind the search pages and the benchmarks.

Real captions are full of words that match most rows ("art", "of"), and FTS5's bm25 costs a
microsecond per matching row plus a walk of every query term's whole doclist (for its document
frequency). So one walk collects up to RANK_LIMIT matches, and those are shown shortest text first
(there the matched words are most of the caption); highlighting is done for the shown rows only.
Bigger results come from windows spread evenly over the id range (FTS5 seeks to a rowid cheaply),
so a file sorted by domain or date cannot skew what is shown.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from spellbook.database.schema import (
    GENERATIONS_FTS,
    GENERATIONS_FTS_VOCAB,
    GENERATIONS_TABLE,
    TRAINING_FTS,
    TRAINING_FTS_VOCAB,
    TRAINING_TABLE,
)
from spellbook.text.fts import fts_query, is_phrase, is_prefix, match_terms, phrases
from spellbook.text.markup import highlighted, safe_url

RANK_LIMIT = 5_000  # order at most this many matches by relevance; bigger results are spread samples
WINDOWS = 50  # spread samples of huge results over this many id windows
PREFIX_WINDOWS = 5  # fewer for prefixes and phrases: each window merges doclists or checks positions again
COUNT_LIMIT = 100_000  # count exactly up to here; beyond, the count comes from a sample
BREAKDOWN_SAMPLE = 25_000  # domain breakdown of bigger results: from this many spread matches, scaled

@dataclass
class SearchResult:
    query: str
    total: int  # exact when total_exact, else an estimate
    total_exact: bool
    ranked: bool
    rows: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Corpus:
    """A searchable table: its FTS index, the columns a result carries, and how to show its text."""

    table: str
    fts: str
    vocab: str
    text: str  # the indexed column, shown highlighted as text_html
    url: str  # the column whose http(s) value becomes safe_url
    columns: str
    joins: str = ""


TRAINING = Corpus(
    TRAINING_TABLE,
    TRAINING_FTS,
    TRAINING_FTS_VOCAB,
    "caption",
    "url",
    "t.id, t.key, t.url, t.caption, t.width, t.height, t.aesthetic_score, t.punsafe, t.pwatermark, t.similarity, d.domain AS domain",
    "LEFT JOIN domains d ON d.id = t.domain_id",
)
PROMPTS = Corpus(
    GENERATIONS_TABLE,
    GENERATIONS_FTS,
    GENERATIONS_FTS_VOCAB,
    "prompt",
    "image_url",
    "t.id, t.source, t.prompt, t.negative_prompt, t.seed, t.steps, t.cfg, t.sampler, t.width, t.height, t.model, "
    "t.image_url, t.image_nsfw, t.created_at, t.is_grid",
)


def count_matches(conn, match: str, limit: int, corpus: Corpus = TRAINING) -> int:
    """Matches up to limit (+1 beyond it), without ranking or touching the table."""
    return conn.execute(
        f"SELECT count(*) FROM (SELECT rowid FROM {corpus.fts} WHERE {corpus.fts} MATCH ? LIMIT ?)",
        (match, limit + 1),
    ).fetchone()[0]


def _domain_id(conn, domain: str | None) -> int | None:
    if not domain:
        return None
    row = conn.execute("SELECT id FROM domains WHERE domain = ?", (domain,)).fetchone()
    return row[0] if row else -1


def search_training(conn, q: str, limit: int = 100, offset: int = 0, domain: str | None = None) -> SearchResult:
    """Caption matches for q (shortest first when few enough to order), optionally from one domain."""
    match = fts_query(q)
    domain_id = _domain_id(conn, domain)
    if match is None:
        return _browse(conn, q, limit, offset, domain_id)
    if domain_id is None:
        return fts_page(conn, TRAINING, q, match, limit, offset)
    return fts_page(conn, TRAINING, q, match, limit, offset, where="t.domain_id = :domain_id", params={"domain_id": domain_id})


def search_prompts(conn, q: str, limit: int = 100, offset: int = 0) -> SearchResult:
    """Top prompt matches for q; without words, the latest generations."""
    match = fts_query(q)
    if match is None:
        sql = f"SELECT {PROMPTS.columns}, t.prompt AS highlighted FROM {PROMPTS.table} t ORDER BY t.id DESC LIMIT ? OFFSET ?"
        rows = [_row_dict(PROMPTS, row, description) for row, description in _fetch(conn, sql, (limit, offset))]
        total = conn.execute(f"SELECT coalesce(max(id), 0) FROM {PROMPTS.table}").fetchone()[0]
        return SearchResult(query=q or "", total=total, total_exact=False, ranked=False, rows=rows)
    return fts_page(conn, PROMPTS, q, match, limit, offset)


def fts_page(conn, corpus: Corpus, q: str, match: str, limit: int, offset: int, where: str = "", params: dict | None = None) -> SearchResult:
    """One page of matches: up to RANK_LIMIT matches in relevance order (shortest text first), else
    matches spread evenly over the id range."""
    params = {"match": match, "limit": limit, "offset": offset, **(params or {})}
    condition = f" AND {where}" if where else ""
    join = f"JOIN {corpus.table} t ON t.id = f.rowid" if where else ""
    terms = match_terms(match)
    # One walk gives both the count and, for results small enough to order, every candidate.
    candidates = [
        rowid
        for (rowid,) in conn.execute(
            f"SELECT f.rowid FROM {corpus.fts} f {join} WHERE {corpus.fts} MATCH :match{condition} LIMIT {RANK_LIMIT + 1}", params
        )
    ]
    if len(candidates) <= RANK_LIMIT:
        # Shortest text first: there the matched words are most of the caption or prompt. (bm25 would
        # walk every query term's whole doclist again for its document frequency: 90 ms for
        # "master of the bambino vispo" at 12M rows, because of "of" and "the".)
        ids = [
            rowid
            for (rowid,) in conn.execute(
                f"""SELECT id FROM {corpus.table} WHERE id IN (SELECT value FROM json_each(:ids))
                    ORDER BY length({corpus.text}), id LIMIT :limit OFFSET :offset""",
                {"ids": json.dumps(candidates), "limit": limit, "offset": offset},
            )
        ]
        rows = _rows_by_id(conn, corpus, ids, terms)
        return SearchResult(query=q, total=len(candidates), total_exact=True, ranked=True, rows=rows)
    if where:
        matches = conn.execute(
            f"""SELECT count(*) FROM (SELECT t.id FROM {corpus.fts} f JOIN {corpus.table} t ON t.id = f.rowid
                WHERE {corpus.fts} MATCH :match{condition} LIMIT {COUNT_LIMIT + 1})""",
            params,
        ).fetchone()[0]
    elif is_prefix(match):
        matches = COUNT_LIMIT + 1  # a prefix merges many terms' doclists: counting further is slow
    else:
        matches = count_matches(conn, match, COUNT_LIMIT, corpus)
    exact = matches <= COUNT_LIMIT
    total = matches if exact else estimate_matches(conn, match, corpus)
    # A page of a huge result: the same number of matches from each of `windows` id windows.
    windows = min(windows_for(match), limit)
    params.update(per_window=-(-limit // windows), skip=offset // windows)
    sql = f"""SELECT f.rowid FROM {corpus.fts} f {join} WHERE {corpus.fts} MATCH :match{condition}
              AND f.rowid >= :start ORDER BY f.rowid LIMIT :per_window OFFSET :skip"""
    ids = []
    for start in window_starts(max_id(conn, corpus), windows):
        ids.extend(rowid for (rowid,) in conn.execute(sql, dict(params, start=start)))
        if len(ids) >= limit:
            break
    ids = list(dict.fromkeys(ids))[:limit]
    return SearchResult(query=q, total=total, total_exact=exact, ranked=False, rows=_rows_by_id(conn, corpus, ids, terms))


def _rows_by_id(conn, corpus: Corpus, ids: list[int], terms) -> list[dict]:
    """The rows with these ids, in this order, with their text highlighted."""
    sql = f"""SELECT {corpus.columns}, t.{corpus.text} AS highlighted FROM {corpus.table} t {corpus.joins}
              WHERE t.id IN (SELECT value FROM json_each(?))"""
    by_id = {row["id"]: row for row in (_row_dict(corpus, r, d, terms) for r, d in _fetch(conn, sql, (json.dumps(ids),)))}
    return [by_id[i] for i in ids if i in by_id]


def windows_for(match: str) -> int:
    """How many id windows a spread sample takes: a window seeks cheaply in one term's doclist,
    but a prefix re-merges many doclists and a phrase walks position lists to find its matches."""
    return PREFIX_WINDOWS if is_prefix(match) or is_phrase(match) else WINDOWS


def max_id(conn, corpus: Corpus = TRAINING) -> int:
    return conn.execute(f"SELECT coalesce(max(id), 0) FROM {corpus.table}").fetchone()[0]


def window_starts(max_id: int, windows: int = WINDOWS) -> list[int]:
    return [1 + (max_id * i) // windows for i in range(windows)]


def _browse(conn, q, limit, offset, domain_id) -> SearchResult:
    """No search words: the images of one domain, or of the whole table, in id order."""
    if domain_id is not None:
        total = conn.execute(f"SELECT count(*) FROM {TRAINING_TABLE} WHERE domain_id = ?", (domain_id,)).fetchone()[0]
        where = "WHERE t.domain_id = :domain_id"
    else:
        total = conn.execute("SELECT coalesce(sum(image_count), 0) FROM domains").fetchone()[0]
        where = ""
    sql = f"""
        SELECT {TRAINING.columns}, t.caption AS highlighted
        FROM {TRAINING_TABLE} t {TRAINING.joins}
        {where} ORDER BY t.id LIMIT :limit OFFSET :offset
    """
    params = {"limit": limit, "offset": offset, "domain_id": domain_id}
    rows = [_row_dict(TRAINING, row, description) for row, description in _fetch(conn, sql, params)]
    return SearchResult(query=q or "", total=total, total_exact=True, ranked=False, rows=rows)


def _fetch(conn, sql, params):
    cursor = conn.execute(sql, params)
    description = [column[0] for column in cursor.description]
    for row in cursor.fetchall():
        yield row, description


def _row_dict(corpus: Corpus, row, description, terms=(frozenset(), ())) -> dict:
    record = dict(zip(description, row))
    record["text_html"] = highlighted(record.pop("highlighted"), terms)
    record["safe_url"] = safe_url(record[corpus.url])
    return record


def estimate_matches(conn, match: str, corpus: Corpus = TRAINING) -> int:
    """Number of matches of a huge result, from FTS5's per-term document counts (fts5vocab).

    Exact for a single term; for several terms the rarest bounds it; a prefix sums its terms' counts.
    """
    counts = []
    for term, prefix in phrases(match):
        words = [w.lower() for w in re.findall(r"\w+", term)]
        if not words:
            continue
        if prefix:  # the prefix applies to the last word
            last = words[-1]
            row = conn.execute(f"SELECT sum(doc) FROM {corpus.vocab} WHERE term >= ? AND term < ?", (last, last + "\uffff")).fetchone()
            counts.append(row[0] or 0)
            words = words[:-1]
        for word in words:
            row = conn.execute(f"SELECT doc FROM {corpus.vocab} WHERE term = ?", (word,)).fetchone()
            counts.append(row[0] if row else 0)
    return min(counts) if counts else 0
