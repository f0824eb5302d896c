"""Caption search and domain breakdowns: the read-only queries behind the pages and the benchmarks.

Ranked FTS5 costs about a microsecond per matching row, and real captions are full of words that
match most rows ("art", "of"). So: count the matches up to RANK_LIMIT first (cheap, no ranking);
rank with bm25 only below that; above it, return the first matches in id order. Ids are hashes,
so that order is a uniform random sample of the matches, which is also what the domain breakdown
of a huge result uses (scaled, and marked as an estimate).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from markupsafe import Markup, escape

from ingest.schema import TRAINING_FTS, TRAINING_FTS_VOCAB, TRAINING_TABLE

RANK_LIMIT = 10_000  # rank by bm25 at most this many matches
COUNT_LIMIT = 100_000  # count exactly up to here; beyond, the count comes from a sample
BREAKDOWN_SAMPLE = 100_000  # domain breakdown of bigger results: from this many matches, scaled

_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"  # private-use characters: never in captions we show
_TOKEN = re.compile(r'"([^"]*)"|(\S+)')
_WORD = re.compile(r"\w+", re.UNICODE)


def fts_query(text: str) -> str | None:
    """A user's words as a safe FTS5 query: words are ANDed, "quoted phrases" stay phrases,
    a trailing * makes a prefix. FTS5 operators and punctuation in the input are plain text."""
    parts = []
    for phrase, word in _TOKEN.findall(text or ""):
        if phrase:
            words = _WORD.findall(phrase)
            if words:
                parts.append('"' + " ".join(words) + '"')
            continue
        prefix = word.endswith("*")
        words = _WORD.findall(word)
        if not words:
            continue
        if len(words) > 1:  # "mucha's" or "foo-bar": keep the words together as a phrase
            parts.append('"' + " ".join(words) + '"' + ("*" if prefix else ""))
        else:
            parts.append('"' + words[0] + '"' + ("*" if prefix else ""))
    return " ".join(parts) or None


def highlighted(text: str | None) -> Markup:
    """FTS5 highlight() output, escaped, with the matches in <mark>."""
    if text is None:
        return Markup("")
    safe = str(escape(text))
    return Markup(safe.replace(_MARK_OPEN, "<mark>").replace(_MARK_CLOSE, "</mark>"))


def safe_url(url: str | None) -> str | None:
    """The URL if it is http(s), else None: only these may become links or images."""
    if url and re.match(r"(?i)^https?://[^\s/]", url) and not any(c in url for c in "\r\n\t"):
        return url
    return None


@dataclass
class SearchResult:
    query: str
    total: int  # exact when total_exact, else an estimate
    total_exact: bool
    ranked: bool
    rows: list[dict] = field(default_factory=list)


def count_matches(conn, match: str, limit: int) -> int:
    """Matches up to limit (+1 beyond it), without ranking or touching the table."""
    return conn.execute(
        f"SELECT count(*) FROM (SELECT rowid FROM {TRAINING_FTS} WHERE {TRAINING_FTS} MATCH ? LIMIT ?)",
        (match, limit + 1),
    ).fetchone()[0]


def _domain_id(conn, domain: str | None) -> int | None:
    if not domain:
        return None
    row = conn.execute("SELECT id FROM domains WHERE domain = ?", (domain,)).fetchone()
    return row[0] if row else -1


_ROW_COLUMNS = (
    "t.id, t.key, t.url, t.caption, t.width, t.height, t.aesthetic_score, t.punsafe, t.pwatermark, t.similarity, "
    "d.domain AS domain"
)


def search_training(conn, q: str, limit: int = 100, offset: int = 0, domain: str | None = None) -> SearchResult:
    """Top matches for q (bm25 where affordable), with highlighted captions."""
    match = fts_query(q)
    domain_id = _domain_id(conn, domain)
    if match is None:
        return _browse(conn, q, limit, offset, domain_id)
    domain_clause = " AND t.domain_id = :domain_id" if domain_id is not None else ""
    params = {"match": match, "limit": limit, "offset": offset, "domain_id": domain_id}
    if domain_id is None:
        matches = count_matches(conn, match, COUNT_LIMIT)
    else:
        matches = conn.execute(
            f"""SELECT count(*) FROM (SELECT t.id FROM {TRAINING_FTS} f JOIN {TRAINING_TABLE} t ON t.id = f.rowid
                WHERE {TRAINING_FTS} MATCH :match{domain_clause} LIMIT {COUNT_LIMIT + 1})""",
            params,
        ).fetchone()[0]
    ranked = matches <= RANK_LIMIT
    total, exact = matches, matches <= COUNT_LIMIT
    if not exact:
        total = estimate_matches(conn, match)
    order = "ORDER BY f.rank" if ranked else ""
    sql = f"""
        SELECT {_ROW_COLUMNS},
               highlight({TRAINING_FTS}, 0, '{_MARK_OPEN}', '{_MARK_CLOSE}') AS caption_highlighted
        FROM {TRAINING_FTS} f
        JOIN {TRAINING_TABLE} t ON t.id = f.rowid
        LEFT JOIN domains d ON d.id = t.domain_id
        WHERE {TRAINING_FTS} MATCH :match{domain_clause}
        {order}
        LIMIT :limit OFFSET :offset
    """
    rows = [_row_dict(row, cursor_description) for row, cursor_description in _fetch(conn, sql, params)]
    return SearchResult(query=q, total=total, total_exact=exact, ranked=ranked, rows=rows)


def _browse(conn, q, limit, offset, domain_id) -> SearchResult:
    """No search words: the images of one domain, or of the whole table, in id order."""
    if domain_id is not None:
        total = conn.execute(f"SELECT count(*) FROM {TRAINING_TABLE} WHERE domain_id = ?", (domain_id,)).fetchone()[0]
        where = "WHERE t.domain_id = :domain_id"
    else:
        total = conn.execute("SELECT coalesce(sum(image_count), 0) FROM domains").fetchone()[0]
        where = ""
    sql = f"""
        SELECT {_ROW_COLUMNS}, t.caption AS caption_highlighted
        FROM {TRAINING_TABLE} t LEFT JOIN domains d ON d.id = t.domain_id
        {where} ORDER BY t.id LIMIT :limit OFFSET :offset
    """
    params = {"limit": limit, "offset": offset, "domain_id": domain_id}
    rows = [_row_dict(row, description) for row, description in _fetch(conn, sql, params)]
    return SearchResult(query=q or "", total=total, total_exact=True, ranked=False, rows=rows)


def _fetch(conn, sql, params):
    cursor = conn.execute(sql, params)
    description = [column[0] for column in cursor.description]
    for row in cursor.fetchall():
        yield row, description


def _row_dict(row, description) -> dict:
    record = dict(zip(description, row))
    record["caption_html"] = highlighted(record.pop("caption_highlighted"))
    record["safe_url"] = safe_url(record["url"])
    return record


def estimate_matches(conn, match: str) -> int:
    """Number of matches of a huge result, from FTS5's per-term document counts.

    For a single term the fts5vocab count is exact; for several, the rarest term bounds it.
    """
    vocab = TRAINING_FTS_VOCAB
    terms = [t.lower() for t in _WORD.findall(match)]
    counts = []
    for term in terms:
        row = conn.execute(f"SELECT doc FROM {vocab} WHERE term = ?", (term,)).fetchone()
        counts.append(row[0] if row else 0)
    if not counts:
        return 0
    return min(counts)


def domain_breakdown(conn, q: str | None = None, top: int = 15) -> dict:
    """{"query", "total", "domains": [{"domain", "count"}], "other", "estimated"} for q, or for the whole table."""
    match = fts_query(q) if q else None
    if match is None:
        rows = conn.execute(
            "SELECT domain, image_count FROM domains WHERE image_count > 0 ORDER BY image_count DESC, domain LIMIT ?", (top,)
        ).fetchall()
        total = conn.execute("SELECT coalesce(sum(image_count), 0) FROM domains").fetchone()[0]
        return _breakdown(q or None, total, rows, estimated=False)
    matches = count_matches(conn, match, BREAKDOWN_SAMPLE)
    sample = min(matches, BREAKDOWN_SAMPLE)
    rows = conn.execute(
        f"""
        SELECT d.domain, count(*) AS n
        FROM (SELECT rowid FROM {TRAINING_FTS} WHERE {TRAINING_FTS} MATCH ? LIMIT ?) h
        JOIN {TRAINING_TABLE} t ON t.id = h.rowid
        JOIN domains d ON d.id = t.domain_id
        GROUP BY d.id ORDER BY n DESC, d.domain
        """,
        (match, sample),
    ).fetchall()
    if matches <= BREAKDOWN_SAMPLE:
        return _breakdown(q, matches, rows[:top], estimated=False, counted=sum(n for _, n in rows))
    total = estimate_matches(conn, match)
    scale = total / sample
    scaled = [(domain, round(n * scale)) for domain, n in rows]
    return _breakdown(q, total, scaled[:top], estimated=True, counted=sum(n for _, n in scaled))


def _breakdown(q, total, rows, estimated, counted=None) -> dict:
    domains = [{"domain": domain, "count": count} for domain, count in rows]
    shown = sum(d["count"] for d in domains)
    counted = total if counted is None else counted
    return {
        "query": q,
        "total": total,
        "domains": domains,
        "other": max(counted - shown, 0),
        "estimated": estimated,
    }
