"""Take-down: `spellbook remove` deletes rows from every surface and records that it did.

A removed row is deleted with its FTS entry, its links to keywords and vectors (and the vectors no
other row has), and its share of every precomputed count (domains, keywords, per-day uses, artists,
term counts); `removed_rows` keeps only its stable key, its old id and a hash of its URL, so that its
pages answer 410 with the reason and no later ingest brings it back. Each removal is one
transaction: a failure leaves the database as it was. `spellbook publish` then writes a copy in
which no byte of a removed row is left (FTS rebuilt, VACUUM).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from spellbook.database import schema
from spellbook.database.connect import connect, transaction
from spellbook.ingest.keys import stable_keys
from spellbook.ingest.records import InputError

ITEMS = {"training_image": "training_images", "generation": "generations"}
BATCH = 900


@dataclass
class RemovalSummary:
    kind: str
    value: str
    reason: str
    rows: int
    vectors: int = 0

    def report(self) -> str:
        return f"removed {self.rows:,} rows ({self.vectors:,} vectors) for {self.kind} {self.value}: {self.reason}"


def url_hash(url: str) -> int:
    from spellbook.embeddings.store import content_hash

    return content_hash(url)


def _chunks(values, size=BATCH):
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _targets(conn, item: str, kind: str, values: list) -> list[int]:
    """Row ids for the values of one kind."""
    table = ITEMS[item]
    if kind == "key":
        ids = []
        for part in _chunks([int(v) for v in values]):
            ids += [i for (i,) in conn.execute(f"SELECT id FROM {table} WHERE key IN ({','.join('?' * len(part))})", part)]
        return ids
    if kind == "id":
        return [int(v) for v in values]
    if kind == "unsafe":  # predicted unsafe: LAION's punsafe, or a corpus's image NSFW score, at or over the threshold
        column = "punsafe" if item == "training_image" else "image_nsfw"
        return [i for (i,) in conn.execute(f"SELECT id FROM {table} WHERE {column} >= ?", (float(values[0]),))]
    column = {"url": "url" if item == "training_image" else "image_url", "hash": "hash"}.get(kind)
    if kind == "domain":
        if item != "training_image":
            raise InputError("--domain", "domains belong to training images")
        domain_ids = [i for (i,) in conn.execute(
            f"SELECT id FROM domains WHERE domain IN ({','.join('?' * len(values))})", values)] if values else []
        return [i for d in domain_ids for (i,) in conn.execute("SELECT id FROM training_images WHERE domain_id = ?", (d,))]
    if column is None or (kind == "hash" and item != "training_image"):
        raise InputError(kind, f"cannot remove {item} rows by {kind}")
    # No index on URLs or LAION's hashes (they would cost ~20 bytes a row): one scan against a temp table.
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS wanted(value PRIMARY KEY) WITHOUT ROWID")
    conn.execute("DELETE FROM temp.wanted")
    conn.executemany("INSERT OR IGNORE INTO temp.wanted(value) VALUES (?)", [(int(v) if kind == "hash" else v,) for v in values])
    return [i for (i,) in conn.execute(f"SELECT id FROM {table} WHERE {column} IN (SELECT value FROM temp.wanted)")]


def _delete_training(conn, ids: list[int], removal: int) -> int:
    removed = 0
    for part in _chunks(ids):
        marks = ",".join("?" * len(part))
        rows = conn.execute(f"SELECT id, key, caption, url, domain_id FROM training_images WHERE id IN ({marks})", part).fetchall()
        conn.executemany(f"INSERT INTO {schema.TRAINING_FTS}({schema.TRAINING_FTS}, rowid, caption) VALUES ('delete', ?, ?)", [(r[0], r[2]) for r in rows])
        conn.execute(f"DELETE FROM training_images WHERE id IN ({marks})", part)
        conn.execute(f"DELETE FROM optout_checks WHERE image_id IN ({marks})", part)
        for domain_id, n in Counter(r[4] for r in rows if r[4] is not None).items():
            conn.execute("UPDATE domains SET image_count = image_count - ? WHERE id = ?", (n, domain_id))
        conn.executemany("INSERT OR IGNORE INTO removed_rows(item, key, item_id, url_hash, removal) VALUES ('training_image', ?, ?, ?, ?)",
                         [(r[1], r[0], url_hash(r[3]), removal) for r in rows])
        removed += len(rows)
    return removed


def _delete_generations(conn, ids: list[int], removal: int) -> int:
    removed = 0
    for part in _chunks(ids):
        marks = ",".join("?" * len(part))
        rows = conn.execute(f"SELECT id, key, prompt, image_url, created_at FROM generations WHERE id IN ({marks})", part).fetchall()
        conn.executemany(f"INSERT INTO {schema.GENERATIONS_FTS}({schema.GENERATIONS_FTS}, rowid, prompt) VALUES ('delete', ?, ?)", [(r[0], r[2]) for r in rows])
        days = {r[0]: (r[4] or "")[:10] or None for r in rows}
        links = conn.execute(f"SELECT generation_id, keyword_id FROM generation_keywords WHERE generation_id IN ({marks})", part).fetchall()
        for keyword_id, n in Counter(k for _, k in links).items():
            conn.execute("UPDATE keywords SET prompt_count = prompt_count - ? WHERE id = ?", (n, keyword_id))
        for (keyword_id, day), n in Counter((k, days[g]) for g, k in links if days[g]).items():
            conn.execute("UPDATE keyword_days SET count = count - ? WHERE keyword_id = ? AND day = ?", (n, keyword_id, day))
        for day, n in Counter(d for d in days.values() if d).items():
            conn.execute("UPDATE prompt_days SET count = count - ? WHERE day = ?", (n, day))
        conn.execute(f"DELETE FROM generation_keywords WHERE generation_id IN ({marks})", part)
        conn.execute(f"DELETE FROM generations WHERE id IN ({marks})", part)
        conn.executemany("INSERT OR IGNORE INTO removed_rows(item, key, item_id, url_hash, removal) VALUES ('generation', ?, ?, ?, ?)",
                         [(r[1], r[0], url_hash(r[3]) if r[3] else None, removal) for r in rows])
        removed += len(rows)
    return removed


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def remove(db_path, kind: str, values, reason: str, item: str = "training_image", requested_by: str | None = None) -> RemovalSummary:
    """Remove the rows matching values of one kind (url, key, hash, domain, id) from every surface."""
    from spellbook.ingest.load import _IngestLock

    values = [v for v in (str(v).strip() for v in values) if v]
    if not values:
        raise InputError(kind, "nothing to remove: no values given")
    if item not in ITEMS:
        raise InputError(item, f"one of {', '.join(ITEMS)}")
    if not reason.strip():
        raise InputError("--reason", "a removal needs a reason (it is shown on the removed rows' pages)")
    shown = f"{len(values)} {kind}s" if len(values) > 1 else (f"hash {url_hash(values[0])}" if kind == "url" else values[0])
    with _IngestLock(Path(db_path)):
        conn = connect(db_path)
        try:
            schema.ensure_schema(conn)
            with transaction(conn):
                ids = sorted(set(_targets(conn, item, kind, values)))
                removal = conn.execute(
                    "INSERT INTO removals(kind, value, reason, requested_by, rows_removed, created_at) VALUES (?, ?, ?, ?, 0, ?)",
                    (kind, shown, reason.strip(), requested_by, _now()),
                ).lastrowid
                count = (_delete_training if item == "training_image" else _delete_generations)(conn, ids, removal)
                conn.execute("UPDATE removals SET rows_removed = ? WHERE id = ?", (count, removal))
            vectors = _remove_vectors(db_path, item, ids) if ids else 0
            _refresh_counts(conn, item)
        finally:
            conn.close()
    return RemovalSummary(kind, shown, reason.strip(), count, vectors)


def remove_missing(db_path, release_paths, reason: str) -> RemovalSummary:
    """A newer release of a training set (Re-LAION) no longer has some rows: remove every training
    row whose (url, caption) key is in none of the release's files."""
    import numpy as np
    import pyarrow.parquet as pq

    from spellbook.database.connect import connect_readonly
    from spellbook.ingest.readers import parquet_files

    release = []
    for file in (f for path in release_paths for f in parquet_files(Path(path))):
        names = pq.read_schema(file).names
        url = next((n for n in ("URL", "url") if n in names), None)
        caption = next((n for n in ("TEXT", "caption", "text") if n in names), None)
        if url is None or caption is None:
            raise InputError(file, f"a release file needs URL and TEXT columns (has {', '.join(names)})")
        parquet = pq.ParquetFile(file)
        for group in range(parquet.metadata.num_row_groups):
            table = parquet.read_row_group(group, columns=[url, caption])
            release.append(np.asarray(stable_keys(table.column(0).to_pylist(), table.column(1).to_pylist()), dtype=np.int64))
    kept = np.unique(np.concatenate(release)) if release else np.zeros(0, np.int64)
    conn = connect_readonly(db_path)
    try:
        keys = np.fromiter((k for (k,) in conn.execute("SELECT key FROM training_images")), dtype=np.int64)
    finally:
        conn.close()
    gone = keys[~np.isin(keys, kept)]
    if not len(gone):
        return RemovalSummary("release", ", ".join(map(str, release_paths)), reason, 0)
    summary = remove(db_path, "key", gone.tolist(), reason)
    return RemovalSummary("release", ", ".join(Path(p).name for p in release_paths), reason, summary.rows, summary.vectors)


def _remove_vectors(db_path, item: str, ids: list[int]) -> int:
    """Unlink the removed rows in the vector store; drop the vectors no row has any more, and take
    them out of the indexes. Returns how many vectors went."""
    from spellbook.embeddings.store import VectorStore, vectors_path

    if not vectors_path(db_path).exists():
        return 0
    collections = ["training_image", "training_caption"] if item == "training_image" else ["generation_prompt", "generation_image"]
    from spellbook.embeddings.indexing import remove_from_indexes

    store = VectorStore.beside(db_path)
    try:
        orphans = store.remove_items(collections, ids)
        for (model, collection), vector_ids in orphans.items():
            remove_from_indexes(store, model, collection, vector_ids)
        return sum(len(vector_ids) for vector_ids in orphans.values())
    finally:
        store.close()


def _refresh_counts(conn, item: str) -> None:
    from spellbook.ingest.artists import refresh_artists

    if item == "training_image":
        schema.refresh_term_counts(conn, schema.TRAINING_FTS, schema.TRAINING_FTS_VOCAB)
    else:
        schema.refresh_term_counts(conn, schema.GENERATIONS_FTS, schema.GENERATIONS_FTS_VOCAB)
    refresh_artists(conn)


def list_removals(db_path) -> list[dict]:
    from spellbook.database.connect import connect_readonly

    conn = connect_readonly(db_path)
    try:
        columns = ["id", "kind", "value", "reason", "requested_by", "rows_removed", "created_at"]
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'removals'").fetchone():
            return []
        return [dict(zip(columns, row)) for row in conn.execute(f"SELECT {', '.join(columns)} FROM removals ORDER BY id")]
    finally:
        conn.close()
