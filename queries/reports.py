"""The prompt side's read-only queries: prompt pages, keyword pages, artist reports.

What would be slow at 2M prompts is precomputed at ingest (ingest/load.py and ingest/artists.py):
per-keyword prompt counts, per-keyword and per-day use (keyword_days, prompt_days), and per-artist
counts on both sides (artists). Co-occurrence is counted on demand over a bounded sample.
"""
from __future__ import annotations

from spellbook.queries.domains import domain_breakdown
from spellbook.queries.search import (
    COUNT_LIMIT,
    PROMPTS,
    SearchResult,
    _fetch,
    _row_dict,
    count_matches,
    estimate_matches,
    search_training,
)
from spellbook.text.fts import fts_query
from spellbook.text.samplers import a1111_name

COOCCURRENCE_SAMPLE = 5_000  # prompts of a keyword looked at for its companions
HISTOGRAM_SAMPLE = 20_000  # training matches looked at for the aesthetic-score histogram
EXAMPLES = 12


def _number(value) -> str:
    """7.0 -> "7", 7.5 -> "7.5": how A1111 writes CFG."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def generation_data(row: dict) -> str:
    """The A1111 "generation data" block prompt writers paste into their UI; unknown fields are left out."""
    lines = [row["prompt"]]
    if row.get("negative_prompt"):
        lines.append(f"Negative prompt: {row['negative_prompt']}")
    settings = []
    if row.get("steps") is not None:
        settings.append(f"Steps: {row['steps']}")
    if row.get("sampler"):
        settings.append(f"Sampler: {a1111_name(row['sampler'])}")
    if row.get("cfg") is not None:
        settings.append(f"CFG scale: {_number(row['cfg'])}")
    if row.get("seed") is not None:
        settings.append(f"Seed: {row['seed']}")
    if row.get("width") and row.get("height"):
        settings.append(f"Size: {row['width']}x{row['height']}")
    if row.get("model"):
        settings.append(f"Model: {row['model']}")
    if settings:
        lines.append(", ".join(settings))
    return "\n".join(lines)


def generation(conn, generation_id: int) -> dict | None:
    """One generation with everything its page shows."""
    cursor = conn.execute(
        """SELECT g.*, d.file_name AS dataset_file FROM generations g LEFT JOIN datasets d ON d.id = g.dataset_id WHERE g.id = ?""",
        (generation_id,),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    record = dict(zip([c[0] for c in cursor.description], row))
    record["sampler_a1111"] = a1111_name(record["sampler"])
    record["generation_data"] = generation_data(record)
    record["keywords"] = [
        {"keyword": keyword, "kind": kind, "prompt_count": count}
        for keyword, kind, count in conn.execute(
            """SELECT k.keyword, k.kind, k.prompt_count FROM generation_keywords gk JOIN keywords k ON k.id = gk.keyword_id
               WHERE gk.generation_id = ? ORDER BY k.kind, k.prompt_count DESC""",
            (generation_id,),
        )
    ]
    return record


def total_prompts(conn) -> int:
    return conn.execute("SELECT coalesce(sum(inserted), 0) FROM datasets WHERE kind = 'prompts'").fetchone()[0]


def total_training(conn) -> int:
    return conn.execute("SELECT coalesce(sum(inserted), 0) FROM datasets WHERE kind = 'training'").fetchone()[0]


def _days(conn, keyword_id: int) -> list[dict]:
    """Uses per UTC day over the corpus's whole span (days without a use are 0), with the day's share."""
    rows = conn.execute(
        """SELECT p.day, coalesce(k.count, 0), p.count FROM prompt_days p
           LEFT JOIN keyword_days k ON k.day = p.day AND k.keyword_id = ? ORDER BY p.day""",
        (keyword_id,),
    ).fetchall()
    return [{"day": day, "count": count, "share": count / total if total else 0.0} for day, count, total in rows]


def _cooccurring(conn, keyword_id: int, top: int = 15) -> list[dict]:
    rows = conn.execute(
        """SELECT k.keyword, k.kind, count(*) AS n
           FROM (SELECT generation_id FROM generation_keywords WHERE keyword_id = :id ORDER BY generation_id DESC LIMIT :sample) s
           JOIN generation_keywords gk ON gk.generation_id = s.generation_id AND gk.keyword_id != :id
           JOIN keywords k ON k.id = gk.keyword_id
           GROUP BY gk.keyword_id ORDER BY n DESC, k.keyword LIMIT :top""",
        {"id": keyword_id, "sample": COOCCURRENCE_SAMPLE, "top": top},
    ).fetchall()
    return [{"keyword": keyword, "kind": kind, "count": n} for keyword, kind, n in rows]


def _example_generations(conn, keyword_id: int, limit: int = EXAMPLES) -> list[dict]:
    sql = f"""SELECT {PROMPTS.columns}, t.prompt AS highlighted
              FROM (SELECT generation_id FROM generation_keywords WHERE keyword_id = ? ORDER BY generation_id DESC LIMIT ?) s
              JOIN generations t ON t.id = s.generation_id ORDER BY t.id DESC"""
    return [_row_dict(PROMPTS, row, description) for row, description in _fetch(conn, sql, (keyword_id, limit))]


def training_mentions(conn, phrase: str) -> dict:
    """How many training captions contain the phrase (exact up to COUNT_LIMIT, then estimated)."""
    match = fts_query(f'"{phrase}"')
    if match is None:
        return {"query": phrase, "count": 0, "exact": True}
    count = count_matches(conn, match, COUNT_LIMIT)
    if count > COUNT_LIMIT:
        return {"query": f'"{phrase}"', "count": estimate_matches(conn, match), "exact": False}
    return {"query": f'"{phrase}"', "count": count, "exact": True}


def keyword_report(conn, keyword: str) -> dict | None:
    """A keyword's prompt side, and how many training captions contain its words."""
    report = _prompt_side(conn, keyword)
    if report is not None:
        report["training"] = training_mentions(conn, report["keyword"])
    return report


def _prompt_side(conn, keyword: str) -> dict | None:
    row = conn.execute("SELECT id, keyword, kind, prompt_count FROM keywords WHERE keyword = ?", (keyword,)).fetchone()
    if row is None:
        return None
    keyword_id, text, kind, prompt_count = row
    prompts = total_prompts(conn)
    return {
        "keyword": text,
        "kind": kind,
        "prompt_count": prompt_count,
        "prompt_share": prompt_count / prompts if prompts else 0.0,
        "total_prompts": prompts,
        "days": _days(conn, keyword_id),
        "cooccurring": _cooccurring(conn, keyword_id),
        "cooccurrence_sample": min(prompt_count, COOCCURRENCE_SAMPLE),
        "examples": _example_generations(conn, keyword_id),
    }


def _aesthetic_histogram(conn, match: str) -> list[dict]:
    """Aesthetic scores of (up to HISTOGRAM_SAMPLE of) the matching captions, in bins of 0.25."""
    rows = conn.execute(
        """SELECT cast(t.aesthetic_score * 4 AS INTEGER) / 4.0 AS bin, count(*)
           FROM (SELECT rowid FROM training_images_fts WHERE training_images_fts MATCH ? LIMIT ?) h
           JOIN training_images t ON t.id = h.rowid
           WHERE t.aesthetic_score IS NOT NULL GROUP BY bin ORDER BY bin""",
        (match, HISTOGRAM_SAMPLE),
    ).fetchall()
    return [{"bin": score_bin, "count": count} for score_bin, count in rows]


def canonical_artist(name: str) -> str:
    """The artist's canonical lower-cased name ("Simon Stalenhag" -> "simon stålenhag")."""
    from spellbook.text.keywords import ArtistVocabulary  # loading the vocabulary takes a moment: only when asked

    cleaned = " ".join(name.split()).strip().lower()
    return ArtistVocabulary.default().canonical(cleaned) or cleaned


def artist_report(conn, name: str) -> dict:
    """Both sides for one artist: training captions mentioning the name, and prompts using it."""
    name = canonical_artist(name)
    training = training_mentions(conn, name)
    match = fts_query(f'"{name}"')
    total = total_training(conn)
    report = {
        "artist": name,
        "training": {
            "count": training["count"],
            "exact": training["exact"],
            "share": training["count"] / total if total else 0.0,
            "total": total,
            "query": training["query"],
            "domains": domain_breakdown(conn, training["query"], top=10) if match else None,
            "aesthetic_histogram": _aesthetic_histogram(conn, match) if match else [],
            "examples": search_training(conn, training["query"], limit=EXAMPLES).rows if match else [],
        },
    }
    keyword = _prompt_side(conn, name)  # its training count is the one above
    report["prompts"] = {
        "count": keyword["prompt_count"] if keyword else 0,
        "share": keyword["prompt_share"] if keyword else 0.0,
        "total": keyword["total_prompts"] if keyword else total_prompts(conn),
        "days": keyword["days"] if keyword else [],
        "cooccurring": keyword["cooccurring"] if keyword else [],
        "examples": keyword["examples"] if keyword else [],
    }
    return report


def top_artists(conn, limit: int = 20) -> dict:
    """The artists with the most training captions, and with the most prompt uses."""
    side = {}
    for column in ("training_count", "prompt_count"):
        side[column] = [
            {"artist": name, "training_count": training, "prompt_count": prompt}
            for name, training, prompt in conn.execute(
                f"SELECT name, training_count, prompt_count FROM artists WHERE {column} > 0 ORDER BY {column} DESC, name LIMIT ?",
                (limit,),
            )
        ]
    return {"by_training": side["training_count"], "by_prompts": side["prompt_count"]}


def artist_training_rows(conn, name: str, limit: int = COUNT_LIMIT):
    """Every training caption mentioning the artist (up to limit), for CSV export."""
    match = fts_query(f'"{canonical_artist(name)}"')
    if match is None:
        return [], []
    cursor = conn.execute(
        """SELECT t.id, t.key, t.url, t.caption, d.domain, t.width, t.height, t.aesthetic_score, t.punsafe
           FROM (SELECT rowid FROM training_images_fts WHERE training_images_fts MATCH ? LIMIT ?) h
           JOIN training_images t ON t.id = h.rowid LEFT JOIN domains d ON d.id = t.domain_id ORDER BY t.id""",
        (match, limit),
    )
    return [c[0] for c in cursor.description], cursor


def artist_prompt_rows(conn, name: str, limit: int = COUNT_LIMIT):
    """Every prompt using the artist as a keyword (up to limit), for CSV export."""
    cursor = conn.execute(
        """SELECT g.id, g.source, g.source_id, g.prompt, g.negative_prompt, g.seed, g.steps, g.cfg, g.sampler,
                  g.width, g.height, g.model, g.image_url, g.created_at
           FROM keywords k JOIN generation_keywords gk ON gk.keyword_id = k.id JOIN generations g ON g.id = gk.generation_id
           WHERE k.keyword = ? ORDER BY g.id LIMIT ?""",
        (canonical_artist(name), limit),
    )
    return [c[0] for c in cursor.description], cursor


def site_summary(conn) -> dict:
    """Counts from the provenance tables (a count(*) over 12M rows would take a second)."""
    datasets = [
        dict(zip(("file_name", "kind", "schema_version", "synthetic", "row_count", "inserted", "status", "ingested_at", "sha256"), row))
        for row in conn.execute(
            "SELECT file_name, kind, schema_version, synthetic, row_count, inserted, status, ingested_at, sha256 FROM datasets ORDER BY id"
        )
    ]
    counts = {
        "training_images": sum(d["inserted"] for d in datasets if d["kind"] == "training"),
        "prompts": sum(d["inserted"] for d in datasets if d["kind"] == "prompts"),
        "domains": conn.execute("SELECT count(*) FROM domains WHERE image_count > 0").fetchone()[0],
    }
    return {"datasets": datasets, "counts": counts, "prompts": counts["prompts"] > 0, "artists": top_artists(conn)}


__all__ = [
    "SearchResult",
    "artist_prompt_rows",
    "artist_report",
    "artist_training_rows",
    "generation",
    "generation_data",
    "keyword_report",
    "site_summary",
    "top_artists",
]
