"""The prompt side's read-only queries: prompt pages, keyword pages, artist reports.

What would be slow at 2M prompts is precomputed at ingest (ingest/load.py and ingest/artists.py):
per-keyword prompt counts, per-keyword and per-day use (keyword_days, prompt_days), and per-artist
counts on both sides (artists). Co-occurrence is counted on demand over a bounded sample.
"""
from __future__ import annotations

import json

from spellbook.queries import optout
from spellbook.queries.domains import domain_breakdown
from spellbook.queries.search import (
    COUNT_LIMIT,
    PROMPTS,
    TRAINING,
    SearchResult,
    _fetch,
    _row_dict,
    count_matches,
    estimate_matches,
    fetcher,
    max_id,
    search_training,
    windows_for,
)
from spellbook.queries.spread import Windows
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
    record["extra"] = json.loads(record["extra"]) if record.get("extra") else {}
    record["has_local_image"] = record.pop("image_root_id") is not None and record["image_path"] is not None
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


def removal_of(conn, item: str, key: int | None = None, item_id: int | None = None) -> dict | None:
    """Why a row was taken down ({"reason", "removed_at"}), if it was: its pages answer 410."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'removed_rows'").fetchone():
        return None
    column, value = ("key", key) if key is not None else ("item_id", item_id)
    row = conn.execute(
        f"SELECT r.reason, r.created_at FROM removed_rows x JOIN removals r ON r.id = x.removal WHERE x.item = ? AND x.{column} = ?",
        (item, value),
    ).fetchone()
    return {"reason": row[0], "removed_at": row[1]} if row else None


def local_image(conn, generation_id: int) -> tuple[str, str] | None:
    """(image root, path below it) of a generation's image on this machine, for serving it; the
    root never leaves the server."""
    return conn.execute(
        """SELECT r.path, g.image_path FROM generations g JOIN image_roots r ON r.id = g.image_root_id
           WHERE g.id = ? AND g.image_path IS NOT NULL""",
        (generation_id,),
    ).fetchone()


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


HISTOGRAM_BIN = 0.25


def _aesthetic_histogram(conn, match: str, count: int) -> dict:
    """Aesthetic scores of the matching captions in bins of 0.25, every bin from the lowest to the
    highest kept (empty ones too, so the bars keep their places). Above HISTOGRAM_SAMPLE matches,
    from a sample spread over the id range, weighted like the domain breakdown, and labelled so."""
    spread = Windows.over(max_id(conn), windows_for(match)).sample(fetcher(conn, TRAINING, match), need=HISTOGRAM_SAMPLE)
    counts: dict[int, float] = {}
    for weight, ids in spread.by_weight(max(count, spread.size)):
        for score_bin, n in conn.execute(
            f"""SELECT cast(aesthetic_score / {HISTOGRAM_BIN} AS INTEGER), count(*) FROM training_images
                WHERE id IN (SELECT value FROM json_each(?)) AND aesthetic_score IS NOT NULL GROUP BY 1""",
            (json.dumps(ids),),
        ):
            counts[score_bin] = counts.get(score_bin, 0.0) + n * weight
    bins = [] if not counts else [
        {"bin": index * HISTOGRAM_BIN, "count": round(counts.get(index, 0.0))} for index in range(min(counts), max(counts) + 1)
    ]
    return {"bins": bins, "sampled": not spread.complete, "sample": spread.size}


def canonical_artist(name: str) -> str:
    """The artist's canonical lower-cased name ("Simon Stalenhag" -> "simon stålenhag")."""
    from spellbook.text.keywords import ArtistVocabulary  # loading the vocabulary takes a moment: only when asked

    cleaned = " ".join(name.split()).strip().lower()
    return ArtistVocabulary.default().canonical(cleaned) or cleaned


def artist_report(conn, name: str, opted_out: bool = False) -> dict:
    """Both sides for one artist: training captions mentioning the name, and prompts using it.
    With `opted_out`, the training examples are only images whose owners opted out of training
    (among those `spellbook check-optout` checked)."""
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
            "aesthetic_histogram": _aesthetic_histogram(conn, match, training["count"]) if match else {"bins": [], "sampled": False, "sample": 0},
            "examples": search_training(conn, training["query"], limit=EXAMPLES, opted_out=opted_out).rows if match else [],
            "opted_out_only": opted_out,
            # None: nothing was ever checked for opt-out signals in this database
            "optout": optout.matched_optouts(conn, match) if match and optout.has_checks(conn) else None,
        },
    }
    if report["training"]["optout"] is not None:
        checks = optout.optout_of(conn, [row["id"] for row in report["training"]["examples"]])
        for row in report["training"]["examples"]:
            row["optout"] = checks.get(row["id"])
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


EXPORT_LIMIT = 100_000  # rows in one CSV export; the page and the response say when there are more
EXPORT_CHUNK = 5_000  # rows fetched per query while an export streams

TRAINING_EXPORT_COLUMNS = ["id", "key", "url", "caption", "domain", "width", "height", "aesthetic_score", "punsafe"]
PROMPT_EXPORT_COLUMNS = ["id", "source", "source_id", "prompt", "negative_prompt", "seed", "steps", "cfg", "sampler",
                         "width", "height", "model", "image_url", "created_at"]


def artist_export_size(conn, name: str, side: str) -> int:
    """How many rows the export of one side would hold before EXPORT_LIMIT: exact up to EXPORT_LIMIT + 1."""
    if side == "prompts":
        row = conn.execute("SELECT prompt_count FROM keywords WHERE keyword = ?", (canonical_artist(name),)).fetchone()
        return row[0] if row else 0
    match = fts_query(f'"{canonical_artist(name)}"')
    return count_matches(conn, match, EXPORT_LIMIT) if match else 0


EVIDENCE_COLUMNS = ["id", "key", "laion_hash", "url", "caption", "domain", "aesthetic_score", "punsafe", "dataset", "dataset_version", "source_sha256", "synthetic"]
EVIDENCE_OPTOUT_COLUMNS = ["opted_out", "optout_signals", "optout_checked_at"]


def evidence_chunk(conn, name: str, after: int = 0, limit: int = EXPORT_CHUNK, opted_out: bool = False) -> list[dict]:
    """The next rows of an artist's evidence file, in id order after `after`: every training caption
    that names the artist, with where it came from (the file, its format and sha256), its
    identities (the stable key, LAION's own hash) and its opt-out signals where they were checked.
    With `opted_out`, only the rows found opted out."""
    match = fts_query(f'"{canonical_artist(name)}"')
    if match is None:
        return []
    checks = optout.has_checks(conn)
    if opted_out and not checks:
        return []
    filtered = " AND EXISTS (SELECT 1 FROM optout_checks o WHERE o.image_id = f.rowid AND o.opted_out = 1)" if opted_out else ""
    rows = conn.execute(
        f"""SELECT t.id, t.key, t.hash, t.url, t.caption, d.domain, t.aesthetic_score, t.punsafe, s.file_name, s.schema_version, s.sha256, s.synthetic
           FROM (SELECT f.rowid FROM training_images_fts f WHERE training_images_fts MATCH ? AND f.rowid > ?{filtered} ORDER BY f.rowid LIMIT ?) h
           JOIN training_images t ON t.id = h.rowid LEFT JOIN domains d ON d.id = t.domain_id LEFT JOIN datasets s ON s.id = t.dataset_id
           ORDER BY t.id""",
        (match, after, limit),
    ).fetchall()
    records = [dict(zip(EVIDENCE_COLUMNS, row)) for row in rows]
    signals = optout.optout_of(conn, [r["id"] for r in records]) if checks else {}
    for record in records:
        found = signals.get(record["id"])
        record["opted_out"] = None if found is None else found["opted_out"]
        record["optout_signals"] = ";".join(found["sources"]) if found else None
        record["optout_checked_at"] = found["checked_at"] if found else None
    return records


def artist_export_chunk(conn, name: str, side: str, after: int = 0, limit: int = EXPORT_CHUNK) -> list[tuple]:
    """The next rows of an artist's export, in id order after id `after`: training captions that
    mention the name, or prompts that use it (side="prompts"). Each chunk is its own short query."""
    if side == "prompts":
        return conn.execute(
            f"""SELECT {", ".join("g." + c for c in PROMPT_EXPORT_COLUMNS)}
                FROM keywords k JOIN generation_keywords gk ON gk.keyword_id = k.id JOIN generations g ON g.id = gk.generation_id
                WHERE k.keyword = ? AND gk.generation_id > ? ORDER BY gk.generation_id LIMIT ?""",
            (canonical_artist(name), after, limit),
        ).fetchall()
    match = fts_query(f'"{canonical_artist(name)}"')
    if match is None:
        return []
    return conn.execute(
        """SELECT t.id, t.key, t.url, t.caption, d.domain, t.width, t.height, t.aesthetic_score, t.punsafe
           FROM (SELECT rowid FROM training_images_fts WHERE training_images_fts MATCH ? AND rowid > ? ORDER BY rowid LIMIT ?) h
           JOIN training_images t ON t.id = h.rowid LEFT JOIN domains d ON d.id = t.domain_id ORDER BY t.id""",
        (match, after, limit),
    ).fetchall()


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
    "artist_export_chunk",
    "artist_export_size",
    "evidence_chunk",
    "artist_report",
    "generation",
    "generation_data",
    "keyword_report",
    "local_image",
    "removal_of",
    "site_summary",
    "top_artists",
]
