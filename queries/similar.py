"""Similarity: nearest training images and prompts by CLIP vectors, hybrid with full-text search,
look-alikes of an artist's work. Read-only: the vectors file beside the database and its indexes.

A text query is encoded by the model that made the vectors (a mismatch is a clear error), cached
per process; a search takes the collection's index when `spellbook index` built one, else scans
the stored vectors (fine up to a few hundred thousand). Keyword and vector results are fused by
reciprocal rank fusion, and every result says why it matched: the words, the similarity, or both.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spellbook.embeddings.store import COLLECTIONS, ModelRecord, StoreError, VectorStore, vectors_path
from spellbook.queries.search import PROMPTS, TRAINING, _fetch, _row_dict, every_word_common, fetcher, fts_query, max_id, windows_for
from spellbook.queries.spread import Windows
from spellbook.text.fts import match_terms

RRF_K = 60  # reciprocal rank fusion: score = sum of 1 / (RRF_K + rank) over the lists a row is in
LOOKALIKE_SEEDS = 200  # the artist's captioned images whose neighbours are looked at
LOOKALIKE_NEIGHBOURS = 30
LOOKALIKE_PROBES = 8  # seeds searched on their own, beside the seeds' centroid
QUERY_CACHE = 512
VECTOR_SIDE_THREADS = 3
KEYWORD_CANDIDATES = 1_000  # the keyword side of a hybrid search orders at most this many matches by length


class SimilarityUnavailable(Exception):
    """No vectors, no model, or a model that is not the one the vectors were made with: pages say so
    and keep keyword search working."""


@dataclass
class Hit:
    item_id: int
    score: float | None = None  # cosine similarity, when the vectors found it
    words: bool = False  # the full-text search found it
    rank: float = 0.0  # the fused score

    @property
    def why(self) -> str:
        if self.words and self.score is not None:
            return "words and similarity"
        return "words" if self.words else "similarity"


@dataclass
class Similarity:
    """One database's vectors, indexes and query model, for the life of a server process."""

    db_path: Path
    model_name: str | None = None
    pretrained: str | None = None
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _indexes: dict = field(default_factory=dict, repr=False)
    _exact: dict = field(default_factory=dict, repr=False)
    _queries: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _model: object = field(default=None, repr=False)
    _record: ModelRecord | None = field(default=None, repr=False)
    _warm_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _warmed: bool = field(default=False, repr=False)

    def warm(self) -> None:
        """Load now what a first search would (once per process, seconds: the model's weights, each
        collection's index or exact matrix), so that no request pays for it inside its time limit.
        A server calls it at startup in the background, and each similarity page before its
        queries (waiting, if the startup load is still running). What cannot load is left for the
        page to report."""
        with self._warm_lock:
            if self._warmed or not self.available:
                return
            try:
                record = self.record()
                model = self.model()
                if model.supports_text:
                    self.text_vector("a photo")
                store = self.store()
                for collection in COLLECTIONS:
                    if store.count(record, collection) and self._index(record, collection) is None:
                        self._matrix(record, collection)
            except SimilarityUnavailable:
                pass
            finally:
                self._warmed = True

    @property
    def available(self) -> bool:
        return vectors_path(self.db_path).exists()

    def store(self) -> VectorStore:
        store = getattr(self._local, "store", None)
        if store is None:
            try:
                store = self._local.store = VectorStore.beside(self.db_path, readonly=True)
            except StoreError as error:
                raise SimilarityUnavailable(str(error)) from None
        return store

    def record(self) -> ModelRecord:
        """The model the vectors were made with (the configured one must be it)."""
        if self._record is None:
            store = self.store()
            if self.model_name is None:
                record = store.only_model()
                if record is None:
                    raise SimilarityUnavailable(
                        f"{store.path.name} holds vectors of {len(store.models())} models; say which with --model/--pretrained"
                        if store.models() else f"{store.path.name} holds no vectors yet"
                    )
                self._record = record
            else:
                try:
                    self._record = store.model_record(self.model(), create=False)
                except StoreError as error:
                    raise SimilarityUnavailable(str(error)) from None
        return self._record

    def model(self):
        """The query encoder: the configured model, or the one the store names."""
        if self._model is None:
            from spellbook.embeddings.models import ModelError, get_model

            name, pretrained = self.model_name, self.pretrained
            if name is None:
                name, pretrained = model_spec(self.record().model_id)
            try:
                self._model = get_model(name, pretrained)
            except ModelError as error:
                raise SimilarityUnavailable(str(error)) from None
        return self._model

    def collections(self) -> dict[str, int]:
        record = self.record()
        return {name: self.store().count(record, name) for name in COLLECTIONS}

    # --- encoding ----------------------------------------------------------------------------------

    def text_vector(self, text: str) -> np.ndarray:
        key = " ".join(text.split()).lower()
        with self._lock:
            if key in self._queries:
                self._queries.move_to_end(key)
                return self._queries[key]
        model = self.model()
        if not model.supports_text:
            raise SimilarityUnavailable(f"{model.model_id} does not embed text")
        self.record()  # a model that is not the store's is refused before it is used
        from spellbook.embeddings.models import ModelError

        try:
            vector = model.embed_texts([text])[0]
        except ModelError as error:
            raise SimilarityUnavailable(str(error)) from None
        with self._lock:
            self._queries[key] = vector
            while len(self._queries) > QUERY_CACHE:
                self._queries.popitem(last=False)
        return vector

    def image_vector(self, image) -> np.ndarray:
        model = self.model()
        self.record()
        if not model.supports_images:
            raise SimilarityUnavailable(f"{model.model_id} does not embed images")
        return model.embed_images([image])[0]

    def item_vector(self, collection: str, item_id: int) -> np.ndarray | None:
        return self.store().item_vectors(self.record(), collection, [item_id]).get(item_id)

    # --- search ------------------------------------------------------------------------------------

    def nearest(self, collection: str, vector: np.ndarray, k: int = 50, exclude=()) -> list[Hit]:
        """The k items of a collection nearest to vector (cosine), best first; items sharing a
        vector (one prompt, many generations) come together."""
        record = self.record()
        store = self.store()
        exclude = set(exclude)
        want = k + len(exclude) + 5
        ids, scores = self._search(record, collection, np.asarray(vector, np.float32), want)
        items = store.items_of(collection, ids)
        hits, seen = [], set()
        for vector_id, score in zip(ids.tolist(), scores.tolist()):
            for item_id in items.get(vector_id, []):
                if item_id in exclude or item_id in seen:
                    continue
                seen.add(item_id)
                hits.append(Hit(item_id, float(score)))
                if len(hits) >= k:
                    return hits
        return hits

    def _search(self, record: ModelRecord, collection: str, vector: np.ndarray, k: int):
        index = self._index(record, collection)
        if index is not None:
            # The index's own number of candidates (300: what its recall was measured with, bench/VECTORS.md).
            return index.search(vector, k, rescore=lambda ids: self.store().vectors_by_id(record, ids))
        ids, matrix = self._matrix(record, collection)
        if not len(ids):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores = matrix @ vector
        top = np.argsort(-scores)[:k] if len(scores) > k else np.argsort(-scores)
        return ids[top], scores[top]

    def _index(self, record: ModelRecord, collection: str):
        key = (record.id, collection)
        if key not in self._indexes:
            from spellbook.embeddings.index import EXACT_MAX_ROWS, IndexFileError
            from spellbook.embeddings.indexing import open_index

            try:
                index = open_index(self.db_path, record, collection)
            except IndexFileError as error:  # not cached: a rebuilt index is picked up by the next search
                raise SimilarityUnavailable(f"The vector index cannot be read ({error}). Rebuild it: spellbook index DB --rebuild") from None
            if index is None and (count := self.store().count(record, collection)) > EXACT_MAX_ROWS:
                # Scanning that many vectors per query would outlast the request's time limit.
                raise SimilarityUnavailable(f"{count:,} vectors and no index for them. Build one: spellbook index DB")
            self._indexes[key] = index
        return self._indexes[key]

    def _matrix(self, record: ModelRecord, collection: str):
        key = (record.id, collection)
        with self._lock:
            if key not in self._exact:
                parts = list(self.store().iter_vectors(record, collection))
                ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
                matrix = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, record.dimensions), np.float32)
                self._exact[key] = (ids, matrix)
            return self._exact[key]


def model_spec(model_id: str) -> tuple[str, str | None]:
    """("ViT-L-14", "openai") from "open_clip:ViT-L-14/openai"; ("local-dir:/p", None) from "open_clip:local-dir:/p"."""
    body = model_id.split(":", 1)[1] if model_id.startswith("open_clip:") else model_id
    if body.startswith(("local-dir:", "hf-hub:")):
        return body, None
    name, _, pretrained = body.partition("/")
    return name, pretrained or None


# --- what the pages ask ---------------------------------------------------------------------------


def fuse(keyword_ids: list[int], similar: list[Hit], limit: int) -> list[Hit]:
    """Reciprocal rank fusion of a keyword ranking and a similarity ranking."""
    hits: dict[int, Hit] = {}
    for rank, item_id in enumerate(keyword_ids, start=1):
        hit = hits.setdefault(item_id, Hit(item_id))
        hit.words = True
        hit.rank += 1.0 / (RRF_K + rank)
    for rank, found in enumerate(similar, start=1):
        hit = hits.setdefault(found.item_id, Hit(found.item_id))
        hit.score = found.score
        hit.rank += 1.0 / (RRF_K + rank)
    return sorted(hits.values(), key=lambda h: (-h.rank, h.item_id))[:limit]


def keyword_ranking(conn, corpus, q: str, limit: int) -> list[int]:
    """The keyword side's ranking: matches shortest text first, as the search page orders them
    (a bigger result's first KEYWORD_CANDIDATES matches in id order, so that its ranking stays
    bounded: 5,000 of them cost 10-15 ms of row reads at 12M rows; words that are all common, as on
    the search page, are not walked whole: `limit` matches spread)."""
    match = fts_query(q)
    if match is None:
        return []
    fetch, rows_total = fetcher(conn, corpus, match), max_id(conn, corpus)
    if every_word_common(conn, corpus, match):
        candidates = Windows.over(rows_total, windows_for(match)).sample(fetch, need=limit).page(0, limit)
    else:
        candidates = fetch(1, rows_total + 1, 0, KEYWORD_CANDIDATES)
    if not candidates:
        return []
    import json

    return [row_id for (row_id,) in conn.execute(
        f"SELECT id FROM {corpus.table} WHERE id IN (SELECT value FROM json_each(?)) ORDER BY length({corpus.text}), id LIMIT ?",
        (json.dumps(candidates), limit),
    )]


def rows_for(conn, corpus, hits: list[Hit], q: str = "") -> list[dict]:
    """The rows of hits, in their order, each with its similarity and why it matched."""
    import json

    terms = match_terms(fts_query(q)) if q else (frozenset(), ())
    sql = f"""SELECT {corpus.columns}, t.{corpus.text} AS highlighted FROM {corpus.table} t {corpus.joins}
              WHERE t.id IN (SELECT value FROM json_each(?))"""
    by_id = {row["id"]: row for row in (_row_dict(corpus, r, d, terms) for r, d in _fetch(conn, sql, (json.dumps([h.item_id for h in hits]),)))}
    out = []
    for hit in hits:
        row = by_id.get(hit.item_id)
        if row is not None:
            out.append(dict(row, similarity=hit.score, why=hit.why, fused=hit.rank))
    return out


def search(conn, sim: Similarity, q: str = "", vector: np.ndarray | None = None, mode: str = "hybrid", target: str = "training",
           limit: int = 60, by_image: bool = False) -> dict:
    """The /-/similar page: words (keyword ranking), a vector (similarity), or both fused. A text
    query is compared with training images (CLIP's text and images share one space) or with prompts;
    an image (by_image) with training images or generated images."""
    corpus = TRAINING if target == "training" else PROMPTS
    collection = "training_image" if target == "training" else ("generation_image" if by_image else "generation_prompt")
    words = bool(q) and mode in ("hybrid", "keywords")
    similar: list[Hit] = []
    pending = None
    if mode in ("hybrid", "similarity"):
        if vector is None and q:
            vector = sim.text_vector(q)
        if vector is not None:
            # With words, the vector side runs on a thread of its own while this one ranks them:
            # faiss and SQLite both let go of the GIL, so on two cores the keyword side costs no
            # time of its own.
            if words:
                pending = _vector_side().submit(sim.nearest, collection, vector, 100)
            else:
                similar = sim.nearest(collection, vector, k=100)
    keyword = keyword_ranking(conn, corpus, q, 100) if words else []
    if pending is not None:
        similar = pending.result()
    if mode == "keywords":
        hits = [Hit(i, words=True, rank=1.0 / (RRF_K + r)) for r, i in enumerate(keyword[:limit], start=1)]
    elif mode == "similarity":
        hits = similar[:limit]
    else:
        hits = fuse(keyword, similar, limit)
    return {"query": q, "mode": mode, "target": target, "rows": rows_for(conn, corpus, hits, q)}


_vector_pool = None
_vector_pool_lock = threading.Lock()


def _vector_side():
    """The threads that search vectors while a hybrid search ranks its words (as many as Datasette's SQL threads)."""
    global _vector_pool
    with _vector_pool_lock:
        if _vector_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _vector_pool = ThreadPoolExecutor(max_workers=VECTOR_SIDE_THREADS, thread_name_prefix="spellbook-vectors-side")
        return _vector_pool


def more_like(conn, sim: Similarity, target: str, item_id: int, limit: int = 30) -> dict:
    """Rows like one training image (its image vector, else its caption's) or one generation (its
    image, else its prompt)."""
    order = ["training_image", "training_caption"] if target == "training" else ["generation_image", "generation_prompt"]
    for collection in order:
        vector = sim.item_vector(collection, item_id)
        if vector is not None:
            break
    else:
        raise SimilarityUnavailable(f"{'training image' if target == 'training' else 'generation'} {item_id} has no vector yet (spellbook embed)")
    same = "training_image" if target == "training" else collection
    corpus = TRAINING if target == "training" else PROMPTS
    hits = sim.nearest(same, vector, k=limit, exclude={item_id})
    return {"item": item_id, "target": target, "by": collection, "rows": rows_for(conn, corpus, hits)}


def prompt_neighbours(conn, sim: Similarity, generation_id: int, prompt: str, limit: int = 12) -> dict:
    """For a prompt page: the training images nearest the prompt's text (what in the training set it
    pulls on), and the most similar prompts."""
    vector = sim.item_vector("generation_prompt", generation_id)
    if vector is None:
        vector = sim.text_vector(prompt)
    training = sim.nearest("training_image", vector, k=limit)
    prompts = sim.nearest("generation_prompt", vector, k=limit, exclude={generation_id})
    return {"training": rows_for(conn, TRAINING, training), "prompts": rows_for(conn, PROMPTS, prompts)}


def lookalikes(conn, sim: Similarity, name_match: str, limit: int = 60) -> dict:
    """Training images close to the images whose captions name the artist, but whose own captions do
    not, best first. Seeds: up to LOOKALIKE_SEEDS of the artist's captioned images (spread over the
    collection). Candidates: the neighbours of the seeds' centroid and of a few seeds (a handful of
    index searches, whatever the number of seeds). Each candidate is then scored exactly by its best
    similarity to any seed, and says which. Similarity is not proof of origin."""
    fetch = fetcher(conn, TRAINING, name_match)
    spread = Windows.over(max_id(conn, TRAINING), windows_for(name_match)).sample(fetch, need=LOOKALIKE_SEEDS)
    seeds = sim.store().item_vectors(sim.record(), "training_image", [i for ids in spread.ids for i in ids][: LOOKALIKE_SEEDS * 2])
    if not seeds:
        return {"seeds": 0, "rows": []}
    seed_ids = list(seeds)
    matrix = np.stack([seeds[i] for i in seed_ids])
    centroid = matrix.mean(axis=0)
    queries = [centroid / (np.linalg.norm(centroid) or 1)] + [matrix[i] for i in range(0, len(seed_ids), max(1, len(seed_ids) // LOOKALIKE_PROBES))][:LOOKALIKE_PROBES]
    candidates = {hit.item_id for query in queries for hit in sim.nearest("training_image", query, k=max(limit * 3, LOOKALIKE_NEIGHBOURS), exclude=seeds)}
    named = _matching(conn, name_match, list(candidates))  # every image whose caption names the artist, not only the seeds
    candidates = [i for i in candidates if i not in named]
    vectors = sim.store().item_vectors(sim.record(), "training_image", candidates)
    if not vectors:
        return {"seeds": len(seeds), "rows": []}
    ids = list(vectors)
    scores = np.stack([vectors[i] for i in ids]) @ matrix.T  # each candidate against every seed
    best, which = scores.max(axis=1), scores.argmax(axis=1)
    order = np.argsort(-best)[:limit]
    rows = rows_for(conn, TRAINING, [Hit(ids[k], float(best[k])) for k in order])
    like = {ids[k]: seed_ids[which[k]] for k in order}
    for row in rows:
        row["like"] = like[row["id"]]
    return {"seeds": len(seeds), "rows": rows}


def _matching(conn, match: str, ids: list[int]) -> set[int]:
    found = set()
    for item_id in ids:
        if conn.execute("SELECT 1 FROM training_images_fts WHERE training_images_fts MATCH ? AND rowid = ?", (match, item_id)).fetchone():
            found.add(item_id)
    return found
