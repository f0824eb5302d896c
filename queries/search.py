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
from dataclasses import dataclass, field

from spellbook.database.schema import (
    GENERATIONS_FTS,
    GENERATIONS_FTS_VOCAB,
    GENERATIONS_TABLE,
    TRAINING_FTS,
    TRAINING_FTS_VOCAB,
    TERM_COUNTS,
    TRAINING_TABLE,
)
from spellbook.queries import optout
from spellbook.queries.spread import Windows
from spellbook.text.fold import tokens
from spellbook.text.fts import fts_query, is_phrase, is_prefix, match_terms, phrases
from spellbook.text.markup import highlighted, safe_url

RANK_LIMIT = 5_000  # order at most this many matches by relevance; bigger results are spread samples
WINDOWS = 50  # spread samples of huge results over this many id windows
PREFIX_WINDOWS = 5  # fewer for prefixes and phrases: each window merges doclists or checks positions again
COUNT_LIMIT = 100_000  # count exactly up to here; beyond, the count comes from a sample
BREAKDOWN_SAMPLE = 25_000  # domain breakdown of bigger results: from this many spread matches, scaled
DOMAIN_SHARE_SAMPLE = 2_000  # matches looked at to estimate a domain's share of a huge result
WALK_LIMIT = 100_000  # several words each in more rows than this: not walked whole (fts_page)
PREFIX_TERMS = 64  # a prefix of up to this many indexed words is searched as their OR (expand_prefixes)

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
    "t.image_url, t.image_nsfw, t.created_at, t.is_grid, t.image_archive, "
    "(t.image_path IS NOT NULL AND t.image_root_id IS NOT NULL) AS has_local_image",
)


def count_matches(conn, match: str, limit: int, corpus: Corpus = TRAINING) -> int:
    """Matches up to limit (+1 beyond it), without ranking or touching the table."""
    return conn.execute(
        f"SELECT count(*) FROM (SELECT rowid FROM {corpus.fts} WHERE {corpus.fts} MATCH ? LIMIT ?)",
        (match, limit + 1),
    ).fetchone()[0]


@dataclass(frozen=True)
class Domain:
    """A domain filter: the domain's id and how many images it has (domains.image_count)."""

    id: int
    images: int


NO_SUCH_DOMAIN = Domain(-1, 0)


def find_domain(conn, domain: str | None) -> Domain | None:
    """The domain filter for a name: None without one, NO_SUCH_DOMAIN for a name not in the table."""
    if not domain:
        return None
    row = conn.execute("SELECT id, image_count FROM domains WHERE domain = ?", (domain,)).fetchone()
    return Domain(*row) if row else NO_SUCH_DOMAIN


def search_training(conn, q: str, limit: int = 100, offset: int = 0, domain: str | None = None, opted_out: bool = False) -> SearchResult:
    """Caption matches for q (shortest first when few enough to order), optionally from one domain,
    optionally only images whose owners opted out of training (`spellbook check-optout`)."""
    match = fts_query(q)
    in_domain = find_domain(conn, domain)
    if in_domain is NO_SUCH_DOMAIN:  # nothing to look for: no scan of the table
        return SearchResult(query=q or "", total=0, total_exact=True, ranked=match is not None)
    if opted_out and not optout.has_checks(conn):
        return SearchResult(query=q or "", total=0, total_exact=True, ranked=match is not None)
    if match is None:
        if opted_out:
            return _browse_opted_out(conn, q, limit, offset, in_domain)
        return _browse(conn, q, limit, offset, in_domain)
    return fts_page(conn, TRAINING, q, match, limit, offset, domain=in_domain, opted_out=opted_out)


def search_prompts(conn, q: str, limit: int = 100, offset: int = 0) -> SearchResult:
    """Top prompt matches for q; without words, the newest generations (by when they were made;
    those without a date last: SQLite sorts NULL lowest)."""
    match = fts_query(q)
    if match is None:
        # The index on created_at holds the rowid too: this walks it backwards, newest first.
        sql = f"""SELECT {PROMPTS.columns}, t.prompt AS highlighted FROM {PROMPTS.table} t
                  ORDER BY t.created_at DESC, t.id DESC LIMIT ? OFFSET ?"""
        rows = [_row_dict(PROMPTS, row, description) for row, description in _fetch(conn, sql, (limit, offset))]
        total = conn.execute("SELECT coalesce(sum(inserted), 0) FROM datasets WHERE kind = 'prompts'").fetchone()[0]
        return SearchResult(query=q or "", total=total, total_exact=True, ranked=False, rows=rows)
    return fts_page(conn, PROMPTS, q, match, limit, offset)


# Only the images found opted out: one primary-key probe of optout_checks per match walked
OPTED_OUT_CONDITION = " AND EXISTS (SELECT 1 FROM optout_checks o WHERE o.image_id = f.rowid AND o.opted_out = 1)"


def fetcher(conn, corpus: Corpus, match: str, domain: Domain | None = None, opted_out: bool = False):
    """fetch(start, end, after, limit): matches with start <= id < end and id > after, in id order."""
    join, condition = "", ""
    if domain is not None:
        # CROSS JOIN keeps the FTS walk outside: left to itself, SQLite would walk the domain's
        # index and probe FTS for every one of its rows (the strategy _probe_matches takes only
        # when the domain is much the smaller).
        join, condition = f"CROSS JOIN {corpus.table} t ON t.id = f.rowid", " AND t.domain_id = :domain_id"
    if opted_out:
        condition += OPTED_OUT_CONDITION
    sql = f"""SELECT f.rowid FROM {corpus.fts} f {join} WHERE {corpus.fts} MATCH :match{condition}
              AND f.rowid > :after AND f.rowid < :end ORDER BY f.rowid LIMIT :limit"""
    match = expand_prefixes(conn, corpus, match)

    def fetch(start: int, end: int, after: int, limit: int) -> list[int]:
        params = {"match": match, "after": max(after, start - 1), "end": end, "limit": limit, "domain_id": domain.id if domain else None}
        return [rowid for (rowid,) in conn.execute(sql, params)]

    return fetch


def expand_prefixes(conn, corpus: Corpus, match: str) -> str:
    """The same query with each one-word prefix ("post"*) written as the OR of the indexed words it
    stands for, when there are at most PREFIX_TERMS of them.

    FTS5 has no prefix index here: every statement with "post"* first merges the doclists of all
    the words starting with "post" over the whole table (7-12 ms at 12M rows), so the windows of a
    spread sample paid that once each. An OR of the words merges lazily and seeks to a rowid like
    one word (0.3-0.5 ms a window). The words come from fts5vocab, folded as the index folds."""
    parts = phrases(match)
    if not any(star for _, star in parts):
        return match
    out = []
    for phrase, star in parts:
        words = tokens(phrase)
        if star and len(words) == 1:
            found = [term for (term,) in conn.execute(
                f"SELECT term FROM {corpus.vocab} WHERE term >= ? AND term < ? LIMIT ?", (words[0], words[0] + "\U0010ffff", PREFIX_TERMS + 1))]
            if not found:
                return match  # nothing starts so: the query as it was (no match), not an empty OR
            if len(found) <= PREFIX_TERMS:
                out.append("(" + " OR ".join('"' + term.replace('"', '""') + '"' for term in found) + ")")
                continue
        out.append(f'"{phrase}"' + ("*" if star else ""))
    return " AND ".join(out)


def list_fetcher(ids: list[int]):
    """The same over ids already in hand (sorted)."""
    from bisect import bisect_left, bisect_right

    def fetch(start: int, end: int, after: int, limit: int) -> list[int]:
        low = bisect_right(ids, max(after, start - 1))
        high = bisect_left(ids, end, lo=low)
        return ids[low : min(high, low + limit)]

    return fetch


# Intersecting a search with a small domain: probing the index for each of the domain's images
# (15-45 us each) beats walking the search's matches (0.2-4 us each) once the domain is this many
# times smaller than the search (measured at 1M rows; bench/README.md).
PROBE_RATIO = 80


def _probe_matches(conn, corpus: Corpus, match: str, ids: list[int]) -> list[int]:
    """The ids (in order) that match, each probed in FTS."""
    sql = f"SELECT count(*) FROM {corpus.fts} WHERE {corpus.fts} MATCH ? AND rowid = ?"
    return [row_id for row_id in ids if conn.execute(sql, (match, row_id)).fetchone()[0]]


def _subset_ids(conn, corpus: Corpus, match: str, domain: Domain | None, opted_out: bool) -> list[int] | None:
    """Every match of a narrowed search, when the subset (a domain's images, the opted-out images)
    is so much smaller than the search that probing each of its rows beats walking the matches;
    else None."""
    if opted_out:
        ids = optout.opted_out_ids(conn, domain.id if domain else None)
        if len(ids) > optout.OPTED_OUT_LIST_LIMIT or len(ids) * PROBE_RATIO >= estimate_matches(conn, match, corpus):
            return None
        return _probe_matches(conn, corpus, match, ids)
    if domain is not None and domain.images * PROBE_RATIO < estimate_matches(conn, match, corpus):
        ids = [row_id for (row_id,) in conn.execute(f"SELECT id FROM {corpus.table} WHERE domain_id = ? ORDER BY id", (domain.id,))]
        return _probe_matches(conn, corpus, match, ids)
    return None


def fts_page(conn, corpus: Corpus, q: str, match: str, limit: int, offset: int, domain: Domain | None = None, opted_out: bool = False) -> SearchResult:
    """One page of matches: up to RANK_LIMIT matches in relevance order (shortest text first), else
    matches spread evenly over the id range (queries/spread.py), optionally within one domain and
    among the opted-out images."""
    terms = match_terms(match)
    rows_total = max_id(conn, corpus)
    fetch = fetcher(conn, corpus, match, domain, opted_out)
    known = _subset_ids(conn, corpus, match, domain, opted_out) if (domain is not None or opted_out) else None
    if known is not None:
        fetch = list_fetcher(known)
    # Several words that are each in more than WALK_LIMIT rows ("the white", "s of"): finding whether
    # they are together in few rows means walking the rarest one's whole doclist (and its positions,
    # for a phrase): 25-55 ms at 12M rows for a result of a few thousand. Such a search is never
    # walked whole: the spread windows only as far as the page needs, the total estimated from how
    # far each window had to go (exact when every window ran out), and never ranked (whether a
    # sample holds every match depends on the page asked for, and every page must follow one order).
    common = known is None and domain is None and not opted_out and every_word_common(conn, corpus, match)
    if not common:
        # One walk from the start gives both the count and, for results small enough to order, every match.
        candidates = fetch(1, rows_total + 1, 0, RANK_LIMIT + 1)
        if len(candidates) <= RANK_LIMIT:
            # Shortest text first: there the matched words are most of the caption or prompt. (bm25
            # would walk every query term's whole doclist again for its document frequency: 90 ms
            # for "master of the bambino vispo" at 12M rows, because of "of" and "the".)
            # One pass orders the candidates and reads the page's rows (a top-N sort, no second lookup).
            sql = f"""SELECT {corpus.columns}, t.{corpus.text} AS highlighted FROM {corpus.table} t {corpus.joins}
                      WHERE t.id IN (SELECT value FROM json_each(:ids)) ORDER BY length(t.{corpus.text}), t.id LIMIT :limit OFFSET :offset"""
            params = {"ids": json.dumps(candidates), "limit": limit, "offset": offset}
            rows = [_row_dict(corpus, row, description, terms) for row, description in _fetch(conn, sql, params)]
            return SearchResult(query=q, total=len(candidates), total_exact=True, ranked=True, rows=rows)
    windows = Windows.over(rows_total, windows_for(match))
    sample = windows.sample(fetch, need=offset + limit)
    ids = sample.page(offset, limit)
    if known is not None:  # every match is in hand
        total, exact = len(known), True
    elif sample.complete:  # the result ended within the sample: its size is the exact total
        total, exact = sample.size, True
    elif common:
        # More remain (a window did not run out), so never fewer than the sample and one more.
        bound = min(estimate_matches(conn, match, corpus), rows_total)
        total, exact = max(sample.size + 1, min(round(windows.estimated_total(sample)), bound)), False
    else:
        total, exact = _total(conn, corpus, match, domain, rows_total, opted_out)
    return SearchResult(query=q, total=total, total_exact=exact, ranked=False, rows=_rows_by_id(conn, corpus, ids, terms))


def every_word_common(conn, corpus: Corpus, match: str) -> bool:
    """Several words (no prefix), each in more than WALK_LIMIT rows."""
    if is_prefix(match):
        return False
    words = _words(match)
    return len(words) > 1 and all(term_docs(conn, corpus, word) > WALK_LIMIT for word in words)


def _words(match: str) -> list[str]:
    """Every folded word of a query without prefixes, in order, repeats kept."""
    return [word for phrase, _ in phrases(match) for word in tokens(phrase)]


def _total(conn, corpus: Corpus, match: str, domain: Domain | None, rows_total: int, opted_out: bool = False) -> tuple[int, bool]:
    """(total, exact) of a result bigger than RANK_LIMIT."""
    if domain is not None or opted_out:
        # Not counted (that walks every match): the subset's share of a sample of the search's
        # matches spread over the collection, times the search's total.
        matches = estimate_matches(conn, match, corpus)
        spread = Windows.over(rows_total, windows_for(match)).sample(fetcher(conn, corpus, match), need=DOMAIN_SHARE_SAMPLE)
        conditions = (" AND f.domain_id = :domain_id" if domain is not None else "") + (OPTED_OUT_CONDITION.replace("f.rowid", "f.id") if opted_out else "")
        in_subset = total_weight = 0.0
        for weight, ids in spread.by_weight(matches):
            (hits,) = conn.execute(
                f"SELECT count(*) FROM {corpus.table} f WHERE f.id IN (SELECT value FROM json_each(:ids)){conditions}",
                {"ids": json.dumps(ids), "domain_id": domain.id if domain else None},
            ).fetchone()
            in_subset += hits * weight
            total_weight += len(ids) * weight
        guess = round(matches * in_subset / total_weight) if total_weight else 0
        bound = min(domain.images if domain else matches, optout.opted_out_count(conn) if opted_out else matches)
        return max(RANK_LIMIT + 1, min(guess, matches, bound)), False
    if is_prefix(match):
        return estimate_matches(conn, match, corpus), False  # a prefix merges many doclists: counting is slow
    if len(_words(match)) == 1:  # one word: its document count is the exact total (no walk)
        return estimate_matches(conn, match, corpus), True
    matches = count_matches(conn, match, COUNT_LIMIT, corpus)
    if matches <= COUNT_LIMIT:
        return matches, True
    return estimate_matches(conn, match, corpus), False


def _rows_by_id(conn, corpus: Corpus, ids: list[int], terms) -> list[dict]:
    """The rows with these ids, in this order, with their text highlighted."""
    sql = f"""SELECT {corpus.columns}, t.{corpus.text} AS highlighted FROM {corpus.table} t {corpus.joins}
              WHERE t.id IN (SELECT value FROM json_each(?))"""
    by_id = {row["id"]: row for row in (_row_dict(corpus, r, d, terms) for r, d in _fetch(conn, sql, (json.dumps(ids),)))}
    return [by_id[i] for i in ids if i in by_id]


def _browse_opted_out(conn, q, limit, offset, domain: Domain | None) -> SearchResult:
    """No search words, only opted-out images (of one domain): in id order."""
    ids = optout.opted_out_ids(conn, domain.id if domain else None, limit=offset + limit)
    total = optout.opted_out_count(conn, domain.id if domain else None)
    return SearchResult(query=q or "", total=total, total_exact=True, ranked=False, rows=_rows_by_id(conn, TRAINING, ids[offset : offset + limit], (frozenset(), ())))


def windows_for(match: str) -> int:
    """How many id windows a spread sample takes: a window seeks cheaply in one term's doclist,
    but a prefix re-merges many doclists and a phrase walks position lists to find its matches."""
    return PREFIX_WINDOWS if is_prefix(match) or is_phrase(match) else WINDOWS


def max_id(conn, corpus: Corpus = TRAINING) -> int:
    return conn.execute(f"SELECT coalesce(max(id), 0) FROM {corpus.table}").fetchone()[0]


def _browse(conn, q, limit, offset, domain: Domain | None) -> SearchResult:
    """No search words: the images of one domain (through its index), or of the whole table, in id order."""
    if domain is not None:
        total, where = domain.images, "WHERE t.domain_id = :domain_id"
    else:
        total = conn.execute("SELECT coalesce(sum(image_count), 0) FROM domains").fetchone()[0]
        where = ""
    sql = f"""
        SELECT {TRAINING.columns}, t.caption AS highlighted
        FROM {TRAINING_TABLE} t {TRAINING.joins}
        {where} ORDER BY t.id LIMIT :limit OFFSET :offset
    """
    params = {"limit": limit, "offset": offset, "domain_id": domain.id if domain else None}
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
    """Number of matches of a huge result, from FTS5's per-term document counts (fts5vocab),
    looked up with the index's own folding ("pokémon" is stored as "pokemon").

    Exact for a single term; for several terms the rarest bounds it; a prefix sums its terms' counts
    (a row with two such words counts twice, so the sum is capped at the table's rows)."""
    counts = []
    for phrase, prefix in phrases(match):
        words = tokens(phrase)
        if not words:
            continue
        if prefix:  # the prefix applies to the last word
            last = words.pop()
            row = conn.execute(f"SELECT sum(doc) FROM {corpus.vocab} WHERE term >= ? AND term < ?", (last, last + "\U0010ffff")).fetchone()
            counts.append(row[0] or 0)
        counts.extend(term_docs(conn, corpus, word) for word in words)
    return min(min(counts), max_id(conn, corpus)) if counts else 0


def term_docs(conn, corpus: Corpus, term: str) -> int:
    """Rows holding one (folded) term: kept for frequent terms at ingest (TERM_COUNTS), else
    counted by fts5vocab, which walks the term's doclist (short for a term that is not kept)."""
    row = None
    if _has_term_counts(conn):
        row = conn.execute(f"SELECT doc FROM {TERM_COUNTS} WHERE fts = ? AND term = ?", (corpus.fts, term)).fetchone()
    if row is None:
        row = conn.execute(f"SELECT doc FROM {corpus.vocab} WHERE term = ?", (term,)).fetchone()
    return row[0] if row else 0


def _has_term_counts(conn) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (TERM_COUNTS,)).fetchone() is not None
