"""Which websites the training images were scraped from: domain breakdowns of a search, or of all.

Small results are counted exactly; the breakdown of a huge result counts a sample spread evenly
over the id range and scales it up (marked as an estimate).
"""
from __future__ import annotations

import json
from collections import Counter

from spellbook.database.schema import TRAINING_FTS, TRAINING_TABLE
from spellbook.queries.search import BREAKDOWN_SAMPLE, TRAINING, count_matches, estimate_matches, fetcher, max_id, windows_for
from spellbook.queries.spread import Windows
from spellbook.text.fts import fts_query


def domain_breakdown(conn, q: str | None = None, top: int = 15, sample: int = BREAKDOWN_SAMPLE) -> dict:
    """{"query", "total", "domains": [{"domain", "count"}], "other", "estimated"} for q, or for the whole table.

    Results bigger than `sample` are estimated from `sample` matches spread over the id range."""
    match = fts_query(q) if q else None
    if match is None:
        rows = conn.execute(
            "SELECT domain, image_count FROM domains WHERE image_count > 0 ORDER BY image_count DESC, domain LIMIT ?", (top,)
        ).fetchall()
        total = conn.execute("SELECT coalesce(sum(image_count), 0) FROM domains").fetchone()[0]
        return _breakdown(q or None, total, rows, estimated=False)
    matches = count_matches(conn, match, sample)
    if matches <= sample:
        rows = _domain_counts(conn, f"SELECT rowid FROM {TRAINING_FTS} WHERE {TRAINING_FTS} MATCH :match", {"match": match})
        return _breakdown(q, matches, rows[:top], estimated=False, counted=sum(n for _, n in rows))
    # Count a sample spread over the id range, each match weighted by how many it stands for.
    spread = Windows.over(max_id(conn), windows_for(match)).sample(fetcher(conn, TRAINING, match), need=sample)
    total = max(estimate_matches(conn, match), spread.size)
    weighted: Counter = Counter()
    for weight, ids in spread.by_weight(total):  # two groups: windows sampled whole, and the rest
        for domain, n in _domain_counts(conn, "SELECT value AS rowid FROM json_each(:ids)", {"ids": json.dumps(ids)}):
            weighted[domain] += n * weight
    scaled = sorted(((domain, round(n)) for domain, n in weighted.items()), key=lambda item: (-item[1], item[0]))
    return _breakdown(q, total, scaled[:top], estimated=True, counted=total)


def _domain_counts(conn, matches_sql: str, params: dict) -> list[tuple[str, int]]:
    return conn.execute(
        f"""
        SELECT d.domain, count(*) AS n
        FROM ({matches_sql}) h
        JOIN {TRAINING_TABLE} t ON t.id = h.rowid
        JOIN domains d ON d.id = t.domain_id
        GROUP BY d.id ORDER BY n DESC, d.domain
        """,
        params,
    ).fetchall()


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
