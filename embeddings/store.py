"""The vector store: a SQLite file beside a Spellbook database (spellbook.db -> spellbook.vectors.db),
so that the searchable database stays small to publish, attached as `vectors` when serving.

One vector per distinct content and model, content-addressed (a caption or prompt by its text, a
generated image by its bytes, a LAION row's image by the row's stable key), and linked to every
row that has that content: DiffusionDB's 14M images carry 1.8M distinct prompts, so 1.8M text
vectors serve them all. Collections say what a vector is of:

    training_image      the image behind a training row's URL (LAION's own vectors, or fetched)
    training_caption    a training row's caption
    generation_prompt   a generation's prompt
    generation_image    a generated image (a local file)

Vectors are L2-normalised and stored as float16 or int8 (per model; int8 as round(127 x v)),
re-scored as float32. Writes are batched in transactions; every embedding task is resumable and
idempotent, because a vector that exists for (model, collection, content) is never computed again.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from spellbook.database.connect import sqlite3, transaction

COLLECTIONS = {
    # name: (table of the items, modality of the vectors)
    "training_image": ("training_images", "image"),
    "training_caption": ("training_images", "text"),
    "generation_prompt": ("generations", "text"),
    "generation_image": ("generations", "image"),
}
PRECISIONS = ("float16", "int8")
# float16: the only stored precision whose re-scored ivfpq recall@10 at 12.1M vectors meets 0.95
# (0.953; int8 x127 gives 0.881, bench/VECTORS.md). int8 halves the file for smaller collections.
DEFAULT_PRECISION = "float16"
READERS = 8  # threads that read one big batch of vectors from a read-only store (vectors_by_id)
PARALLEL_READS_FROM = 64  # vectors in a batch that is read by READERS threads
_READERS_LOCK = threading.Lock()
SCHEMA_VERSION = 1


class StoreError(Exception):
    """A vector store that is missing, belongs to another model, or cannot be read."""


def vectors_path(db_path: str | Path) -> Path:
    db_path = Path(db_path)
    return db_path.with_name(db_path.stem + ".vectors" + (db_path.suffix or ".db"))


def content_hash(text_or_bytes) -> int:
    """A 63-bit content address: blake2b of a text (UTF-8) or of bytes."""
    data = text_or_bytes.encode("utf-8", "surrogatepass") if isinstance(text_or_bytes, str) else bytes(text_or_bytes)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") >> 1


def encode(vectors: np.ndarray, precision: str) -> list[bytes]:
    vectors = np.asarray(vectors, dtype=np.float32)
    if precision == "int8":
        return [row.tobytes() for row in np.clip(np.rint(vectors * 127.0), -127, 127).astype(np.int8)]
    return [row.tobytes() for row in vectors.astype(np.float16)]


def decode(blobs, dimensions: int, precision: str) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dimensions), np.float32)
    raw = b"".join(blobs)
    if precision == "int8":
        vectors = np.frombuffer(raw, dtype=np.int8).reshape(-1, dimensions).astype(np.float32) / 127.0
    else:
        vectors = np.frombuffer(raw, dtype=np.float16).reshape(-1, dimensions).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    model_id TEXT NOT NULL,              -- open_clip:ViT-L-14/openai, open_clip:local-dir:PATH ...
    fingerprint TEXT NOT NULL UNIQUE,    -- the weights: a query must be encoded by the same
    dimensions INTEGER NOT NULL,
    precision TEXT NOT NULL,             -- float16 or int8
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY,
    model INTEGER NOT NULL REFERENCES models(id),
    collection TEXT NOT NULL,
    content_hash INTEGER NOT NULL,       -- content_hash() of the text or image, or the row's stable key
    vector BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_vectors_content ON vectors(model, collection, content_hash);
-- Which rows have which vector (many rows can share one: one prompt, many images).
CREATE TABLE IF NOT EXISTS vector_items (
    collection TEXT NOT NULL,
    item_id INTEGER NOT NULL,            -- training_images.id or generations.id in the main database
    vector INTEGER NOT NULL REFERENCES vectors(id),
    PRIMARY KEY (collection, item_id, vector)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_vector_items_vector ON vector_items(vector, collection);
-- Every image URL fetched: dead links are known, and the grid shows them as dead.
CREATE TABLE IF NOT EXISTS link_checks (
    url_hash INTEGER PRIMARY KEY,        -- content_hash(url)
    url TEXT NOT NULL,
    outcome TEXT NOT NULL,               -- ok, http_error, not_image, too_large, timeout, blocked, ...
    status INTEGER,
    bytes INTEGER,
    seconds REAL,
    content_type TEXT,
    error TEXT,
    attempts INTEGER,
    checked_at TEXT NOT NULL
);
-- The index built over each collection (spellbook index): how far it reaches, for adding the rest.
CREATE TABLE IF NOT EXISTS indexes (
    model INTEGER NOT NULL REFERENCES models(id),
    collection TEXT NOT NULL,
    file_name TEXT NOT NULL,             -- beside this file
    kind TEXT NOT NULL,                  -- exact, or the approximate design
    max_vector_id INTEGER NOT NULL,      -- vectors with larger ids are not in it yet
    vectors INTEGER NOT NULL,
    built_at TEXT NOT NULL,
    PRIMARY KEY (model, collection)
);
-- How far each import of LAION's published embeddings got (file sha256 -> rows done).
CREATE TABLE IF NOT EXISTS imports (
    sha256 TEXT PRIMARY KEY,
    file_name TEXT NOT NULL,
    model INTEGER NOT NULL REFERENCES models(id),
    rows_done INTEGER NOT NULL,
    matched INTEGER NOT NULL,
    skipped INTEGER NOT NULL,
    status TEXT NOT NULL,
    imported_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class ModelRecord:
    id: int
    model_id: str
    fingerprint: str
    dimensions: int
    precision: str


def _checked(collection: str) -> str:
    if collection not in COLLECTIONS:
        raise StoreError(f"no collection {collection!r}; one of {', '.join(COLLECTIONS)}")
    return collection


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class VectorStore:
    """The vectors file of one database, opened for writing (embedding) or reading (pages)."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._readers = None  # threads (and their connections) for parallel reads: vectors_by_id
        self._reader_conns: list = []
        self._local = threading.local()
        if readonly:
            if not self.path.exists():
                raise StoreError(f"{self.path.name}: no vector store (run `spellbook embed` first)")
            self.conn = self._open_readonly()
        else:
            self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _open_readonly(self):
        return sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False)

    @classmethod
    def beside(cls, db_path, readonly: bool = False) -> "VectorStore":
        return cls(vectors_path(db_path), readonly=readonly)

    def close(self):
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()
        self.conn.close()

    # --- models ----------------------------------------------------------------------------------

    def models(self) -> list[ModelRecord]:
        return [ModelRecord(*row) for row in self.conn.execute("SELECT id, model_id, fingerprint, dimensions, precision FROM models ORDER BY id")]

    def model_record(self, model, precision: str = DEFAULT_PRECISION, create: bool = True) -> ModelRecord:
        """The row of this model (by the fingerprint of its weights), created on first use."""
        fingerprint = model.fingerprint()
        row = self.conn.execute("SELECT id, model_id, fingerprint, dimensions, precision FROM models WHERE fingerprint = ?", (fingerprint,)).fetchone()
        if row is not None:
            return ModelRecord(*row)
        if not create:
            known = ", ".join(record.model_id for record in self.models()) or "none"
            raise StoreError(f"{self.path.name}: no vectors were made with {model.model_id} (this store has: {known}); "
                             "serve with the same --model/--pretrained as `spellbook embed` used")
        if precision not in PRECISIONS:
            raise StoreError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
        self.conn.execute(
            "INSERT INTO models(model_id, fingerprint, dimensions, precision, created_at) VALUES (?, ?, ?, ?, ?)",
            (model.model_id, fingerprint, model.dimensions, precision, now()),
        )
        return self.model_record(model, precision, create=False)

    def only_model(self) -> ModelRecord | None:
        models = self.models()
        return models[0] if len(models) == 1 else None

    # --- writing ---------------------------------------------------------------------------------

    def missing(self, record: ModelRecord, collection: str, hashes) -> set[int]:
        """The content hashes among `hashes` with no vector yet."""
        found = set()
        hashes = list(hashes)
        for start in range(0, len(hashes), 500):
            chunk = hashes[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(h for (h,) in self.conn.execute(
                f"SELECT content_hash FROM vectors WHERE model = ? AND collection = ? AND content_hash IN ({marks})", (record.id, collection, *chunk)
            ))
        return set(hashes) - found

    def put(self, record: ModelRecord, collection: str, items: list[tuple[int, int]], vectors: dict[int, np.ndarray]) -> int:
        """One transaction: new vectors (content hash -> vector) and the links of items (item id,
        content hash) to them. Returns how many vectors were new."""
        with transaction(self.conn):
            hashes = list(vectors)
            blobs = encode(np.stack([vectors[h] for h in hashes]), record.precision) if hashes else []
            self.conn.executemany(
                "INSERT OR IGNORE INTO vectors(model, collection, content_hash, vector) VALUES (?, ?, ?, ?)",
                [(record.id, collection, h, blob) for h, blob in zip(hashes, blobs)],
            )
            self.conn.executemany(
                """INSERT OR IGNORE INTO vector_items(collection, item_id, vector)
                   SELECT ?, ?, id FROM vectors WHERE model = ? AND collection = ? AND content_hash = ?""",
                [(collection, item_id, record.id, collection, h) for item_id, h in items],
            )
        return len(hashes)

    def remove_items(self, collections, item_ids) -> dict[tuple[int, str], list[int]]:
        """Unlink removed rows and delete the vectors no other row has, in one transaction.
        Returns the deleted vector ids by (model, collection), for the indexes to drop too."""
        item_ids = [int(i) for i in item_ids]
        orphans: dict[tuple[int, str], list[int]] = {}
        with transaction(self.conn):
            for collection in collections:
                vectors = [v for (v,) in self._select_in(
                    f"SELECT DISTINCT vector FROM vector_items WHERE collection = '{_checked(collection)}' AND item_id IN ({{marks}})", item_ids)]
                self._delete_in(f"DELETE FROM vector_items WHERE collection = '{collection}' AND item_id IN ({{marks}})", item_ids)
                still = {v for (v,) in self._select_in("SELECT DISTINCT vector FROM vector_items WHERE vector IN ({marks})", vectors)}
                gone = [v for v in vectors if v not in still]
                for model, vector_id in self._select_in("SELECT model, id FROM vectors WHERE id IN ({marks})", gone):
                    orphans.setdefault((model, collection), []).append(vector_id)
                self._delete_in("DELETE FROM vectors WHERE id IN ({marks})", gone)
        return orphans

    def _delete_in(self, sql: str, values: list, chunk: int = 900) -> None:
        for start in range(0, len(values), chunk):
            part = values[start : start + chunk]
            self.conn.execute(sql.format(marks=",".join("?" * len(part))), part)

    def record_links(self, results) -> None:
        self.conn.executemany(
            """INSERT INTO link_checks(url_hash, url, outcome, status, bytes, seconds, content_type, error, attempts, checked_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(url_hash) DO UPDATE SET outcome = excluded.outcome, status = excluded.status, bytes = excluded.bytes,
               seconds = excluded.seconds, content_type = excluded.content_type, error = excluded.error,
               attempts = excluded.attempts, checked_at = excluded.checked_at""",
            [(content_hash(r.url), r.url, r.outcome, r.status, r.bytes, r.seconds, r.content_type, r.error, r.attempts, now()) for r in results],
        )

    # --- reading ---------------------------------------------------------------------------------

    def count(self, record: ModelRecord, collection: str) -> int:
        return self.conn.execute("SELECT count(*) FROM vectors WHERE model = ? AND collection = ?", (record.id, collection)).fetchone()[0]

    def vectors_by_id(self, record: ModelRecord, ids) -> np.ndarray:
        """float32 vectors for vector ids, in the order asked."""
        ids = [int(i) for i in ids]
        if not ids:
            return np.zeros((0, record.dimensions), np.float32)
        sql = "SELECT id, vector FROM vectors WHERE id IN ({marks})"
        if self.readonly and len(ids) >= PARALLEL_READS_FROM:
            # Re-scoring reads a few hundred vectors scattered over a file that may be far bigger
            # than the page cache (26 GB of float16 at 12M): one by one they wait on the disk in
            # turn (300 uncached reads 32 ms), in READERS threads at once 9 ms (bench/README.md).
            parts = [part.tolist() for part in np.array_split(np.array(sorted(set(ids))), READERS) if len(part)]
            rows = dict(pair for found in self._reader_pool().map(lambda part: self._read(sql, part), parts) for pair in found)
        else:
            rows = dict(self._select_in(sql, ids))
        return decode([rows[i] for i in ids], record.dimensions, record.precision)

    def _reader_pool(self):
        with _READERS_LOCK:
            if self._readers is None:
                from concurrent.futures import ThreadPoolExecutor

                self._readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="spellbook-vectors")
            return self._readers

    def _read(self, sql: str, values: list) -> list:
        """_select_in on this thread's own read-only connection (a connection runs one statement at a time)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open_readonly()
            with _READERS_LOCK:
                self._reader_conns.append(conn)
        return self._select_in(sql, values, conn=conn)

    def item_vectors(self, record: ModelRecord, collection: str, item_ids) -> dict[int, np.ndarray]:
        """item id -> its vector in a collection (items without one are left out)."""
        item_ids = [int(i) for i in item_ids]
        found = self._select_in(
            "SELECT i.item_id, v.vector FROM vector_items i JOIN vectors v ON v.id = i.vector "
            f"WHERE i.collection = '{_checked(collection)}' AND v.model = {int(record.id)} AND i.item_id IN ({{marks}})",
            item_ids,
        )
        if not found:
            return {}
        vectors = decode([blob for _, blob in found], record.dimensions, record.precision)
        return {item_id: vector for (item_id, _), vector in zip(found, vectors)}

    def items_of(self, collection: str, vector_ids) -> dict[int, list[int]]:
        """vector id -> the item ids that have it."""
        out: dict[int, list[int]] = {}
        # No ORDER BY: with one, SQLite walks the collection's whole primary key in item order
        # (238 ms at 1M items for 300 vectors) instead of probing the vector index (1.3 ms).
        for vector, item_id in self._select_in(
            f"SELECT vector, item_id FROM vector_items WHERE collection = '{_checked(collection)}' AND vector IN ({{marks}})", [int(v) for v in vector_ids]
        ):
            out.setdefault(vector, []).append(item_id)
        for items in out.values():
            items.sort()
        return out

    def iter_vectors(self, record: ModelRecord, collection: str, batch: int = 50_000, after: int = 0):
        """(vector ids, float32 vectors) in id order, in batches: to build an index."""
        while True:
            # NOT INDEXED: a walk of the table from `after`. Left to itself, SQLite took the
            # (model, collection, content_hash) index, read every vector of the collection after
            # `after` and sorted them, for every batch: quadratic (days at 12M vectors).
            rows = self.conn.execute(
                "SELECT id, vector FROM vectors NOT INDEXED WHERE id > ? AND model = ? AND collection = ? ORDER BY id LIMIT ?", (after, record.id, collection, batch)
            ).fetchall()
            if not rows:
                return
            yield np.array([r[0] for r in rows], dtype=np.int64), decode([r[1] for r in rows], record.dimensions, record.precision)
            after = rows[-1][0]

    def dead_links(self, urls) -> dict[str, str]:
        """url -> outcome, for the URLs among these whose last check failed."""
        urls = list(urls)
        by_hash = {content_hash(url): url for url in urls}
        return {by_hash[h]: outcome for h, outcome in self._select_in(
            "SELECT url_hash, outcome FROM link_checks WHERE outcome != 'ok' AND url_hash IN ({marks})", list(by_hash)
        )}

    def _select_in(self, sql: str, values: list, chunk: int = 900, conn=None) -> list:
        conn = conn or self.conn
        rows = []
        for start in range(0, len(values), chunk):
            part = values[start : start + chunk]
            rows.extend(conn.execute(sql.format(marks=",".join("?" * len(part))), part).fetchall())
        return rows
