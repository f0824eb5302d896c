"""`spellbook index`: an index over each collection of the vector store, built once and extended.

The index file lies beside the vectors file (spellbook.vectors.training_image.m1.index); the store
records how far it reaches (table `indexes`), so a run after more vectors were embedded adds only
those, and a run with nothing new does nothing. spellbook.embeddings.index decides, by size,
between an exact scan and an approximate index re-scored exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spellbook.embeddings.store import COLLECTIONS, ModelRecord, VectorStore, now, vectors_path


def index_path(db_path, record: ModelRecord, collection: str) -> Path:
    store = vectors_path(db_path)
    return store.with_name(f"{store.stem}.{collection}.m{record.id}.index")


def open_index(db_path, record: ModelRecord, collection: str):
    """The collection's index, or None when `spellbook index` has not built one."""
    path = index_path(db_path, record, collection)
    if not path.exists():
        return None
    from spellbook.embeddings.index import VectorIndex

    return VectorIndex.open(path)


@dataclass
class IndexSummary:
    collection: str
    kind: str
    added: int
    total: int
    rebuilt: bool

    def report(self) -> str:
        verb = "built" if self.rebuilt else "extended"
        return f"{self.collection}: {verb} {self.kind} index, {self.added:,} vectors added, {self.total:,} in all"


def build_indexes(db_path, collections=None, model_id: str | None = None, rebuild: bool = False) -> list[IndexSummary]:
    """Build or extend the index of every collection that has vectors (of one model)."""
    from spellbook.embeddings.index import VectorIndex

    store = VectorStore.beside(db_path)
    summaries = []
    try:
        records = [r for r in store.models() if model_id in (None, r.model_id, r.fingerprint)]
        for record in records:
            for collection in collections or COLLECTIONS:
                count = store.count(record, collection)
                if not count:
                    continue
                path = index_path(db_path, record, collection)
                row = store.conn.execute("SELECT max_vector_id FROM indexes WHERE model = ? AND collection = ?", (record.id, collection)).fetchone()
                if rebuild or row is None or not path.exists():
                    index = VectorIndex.build(path, store.iter_vectors(record, collection), record.dimensions, count=count)
                    added, rebuilt = count, True
                else:
                    index = VectorIndex.open(path)
                    added = 0
                    for ids, vectors in store.iter_vectors(record, collection, after=row[0]):
                        index.add(ids, vectors)
                        added += len(ids)
                    if added:
                        index.save()
                    rebuilt = False
                top = store.conn.execute("SELECT coalesce(max(id), 0) FROM vectors WHERE model = ? AND collection = ?", (record.id, collection)).fetchone()[0]
                store.conn.execute(
                    """INSERT INTO indexes(model, collection, file_name, kind, max_vector_id, vectors, built_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT(model, collection) DO UPDATE SET file_name = excluded.file_name, kind = excluded.kind,
                       max_vector_id = excluded.max_vector_id, vectors = excluded.vectors, built_at = excluded.built_at""",
                    (record.id, collection, path.name, index.kind, top, len(index), now()),
                )
                summaries.append(IndexSummary(collection, index.kind, added, len(index), rebuilt))
    finally:
        store.close()
    return summaries


def remove_from_indexes(store: VectorStore, model: int, collection: str, vector_ids) -> None:
    """Take removed vectors out of the collection's index (they are never returned again)."""
    row = store.conn.execute("SELECT file_name FROM indexes WHERE model = ? AND collection = ?", (model, collection)).fetchone()
    if row is None:
        return
    path = store.path.with_name(row[0])
    if not path.exists():
        return
    from spellbook.embeddings.index import VectorIndex

    import numpy as np

    index = VectorIndex.open(path)
    index.remove(np.asarray(list(vector_ids), dtype=np.int64))
    index.save()
    store.conn.execute("UPDATE indexes SET vectors = ? WHERE model = ? AND collection = ?", (len(index), model, collection))
