"""Per-artist counts on both sides, refreshed after every ingest (the landing page's two lists).

Training side: how many captions contain the name as a phrase (FTS5, folded like every search).
Prompt side: how many prompts carry the name as an artist keyword (spellbook.text.keywords).
"""
from __future__ import annotations

from spellbook.database.connect import transaction
from spellbook.database.schema import TRAINING_FTS
from spellbook.text.fts import fts_query
from spellbook.text.keywords import vocabulary_names

MIN_PROMPT_USES = 3  # artists found only after "by" join the list once this many prompts use them


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
    with transaction(conn):
        conn.execute("DELETE FROM artists")
        conn.executemany("INSERT INTO artists(name, keyword_id, training_count, prompt_count) VALUES (?, ?, ?, ?)", rows)
    return len(rows)
