"""Per-artist counts on both sides, refreshed after every ingest (the landing page's two lists).

Training side: how many captions contain the name as a phrase (FTS5, folded like every search).
Prompt side: how many prompts carry the name as an artist keyword (ingest/keywords.py).
"""
from __future__ import annotations

from ingest import DATA_DIR
from ingest.schema import TRAINING_FTS
from ingest.search import fts_query

MIN_PROMPT_USES = 3  # artists found only after "by" join the list once this many prompts use them


def vocabulary_names() -> list[str]:
    """The artist vocabulary (clip-interrogator's artists.txt, MIT), lower-cased, without the
    entries that are ordinary words ("artist", "constant"): as phrases they match any caption."""
    from ingest.keywords import DEFAULT_ANYWHERE_DENY

    path = DATA_DIR / "vocab" / "artists.txt"
    names = {line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    return sorted(names - DEFAULT_ANYWHERE_DENY)


def training_count(conn, name: str) -> int:
    match = fts_query(f'"{name}"')
    if match is None:
        return 0
    return conn.execute(f"SELECT count(*) FROM {TRAINING_FTS} WHERE {TRAINING_FTS} MATCH ?", (match,)).fetchone()[0]


def refresh_artists(conn) -> int:
    """Recount every vocabulary artist, and every other artist keyword used MIN_PROMPT_USES+ times."""
    prompt_side = {
        keyword: (keyword_id, count)
        for keyword_id, keyword, count in conn.execute(
            "SELECT id, keyword, prompt_count FROM keywords WHERE kind = 'artist'"
        )
    }
    names = set(vocabulary_names()) | {name for name, (_, count) in prompt_side.items() if count >= MIN_PROMPT_USES}
    rows = []
    for name in sorted(names):
        keyword_id, prompt_count = prompt_side.get(name, (None, 0))
        rows.append((name, keyword_id, training_count(conn, name), prompt_count))
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM artists")
        conn.executemany("INSERT INTO artists(name, keyword_id, training_count, prompt_count) VALUES (?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(rows)
