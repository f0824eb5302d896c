"""Filling the vector store: `spellbook embed`.

Every task works in batches, each one transaction, in item id order, so that a killed run resumes
where it stopped and a second run does nothing: a vector that exists for (model, collection,
content) is never computed again, and items whose content is already embedded are only linked.

- import_laion: LAION's published image embeddings (img_emb/img_emb_NNNN.npy, float16, one row per
  row of metadata_NNNN.parquet beside it), joined to training_images by the stable key of URL and
  caption; rows that are not in the database are skipped and counted.
- embed_texts: captions or prompts, each distinct text embedded once.
- embed_images: generated images on this machine's disk, and training images fetched by URL
  (spellbook.embeddings.fetch: bounded, every fetch recorded in link_checks).
"""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from spellbook.database.connect import connect_readonly
from spellbook.embeddings.store import COLLECTIONS, DEFAULT_PRECISION, ModelRecord, VectorStore, content_hash, now

MAX_IMAGE_BYTES = 64 << 20
MAX_IMAGE_PIXELS = 80_000_000  # Pillow's decompression-bomb guard, stated (it warns at 89M and refuses at twice that)


class EmbedError(Exception):
    """Input that cannot be embedded at all: names the file (and row and column where there is one)."""


@dataclass
class EmbedSummary:
    task: str
    items: int = 0  # items looked at
    embedded: int = 0  # new vectors computed or imported
    linked: int = 0  # items linked to a vector (new or existing)
    skipped: int = 0  # items without content, or rows not in the database
    failed: int = 0  # images that could not be fetched or decoded
    notes: list[str] = field(default_factory=list)
    outcomes: dict = field(default_factory=dict)

    def report(self) -> str:
        line = f"{self.task}: {self.items:,} items, {self.embedded:,} new vectors, {self.linked:,} linked, {self.skipped:,} skipped, {self.failed:,} failed"
        if self.outcomes:
            line += " (" + ", ".join(f"{k} {v:,}" for k, v in sorted(self.outcomes.items())) + ")"
        return "\n".join([line, *self.notes])


def _progress(total: int, label: str, show: bool):
    if not show:
        return None
    import click

    return click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)


# --- LAION's published embeddings --------------------------------------------------------------


def laion_shards(paths) -> list[tuple[Path, Path]]:
    """(embeddings .npy, metadata .parquet) pairs: img_emb/img_emb_0000.npy goes with
    metadata/metadata_0000.parquet (or metadata_0000.parquet beside it)."""
    pairs = []
    for path in map(Path, paths):
        files = sorted(path.rglob("*.npy")) if path.is_dir() else [path]
        for npy in files:
            if npy.suffix != ".npy":
                raise EmbedError(f"{npy}: expected LAION's img_emb_NNNN.npy")
            number = npy.stem.rsplit("_", 1)[-1]
            candidates = [npy.with_name(f"metadata_{number}.parquet"), npy.parent.parent / "metadata" / f"metadata_{number}.parquet",
                          npy.parent / "metadata" / f"metadata_{number}.parquet"]
            metadata = next((c for c in candidates if c.exists()), None)
            if metadata is None:
                raise EmbedError(f"{npy}: no metadata_{number}.parquet beside it or in ../metadata/")
            pairs.append((npy, metadata))
    if not pairs:
        raise EmbedError(f"no img_emb_*.npy files in {', '.join(map(str, paths))}")
    return pairs


def _column(names: list[str], *wanted: str) -> str | None:
    lowered = {name.lower(): name for name in names}
    return next((lowered[w] for w in wanted if w in lowered), None)


def import_laion(db_path, paths, model, precision: str = DEFAULT_PRECISION, batch: int = 50_000, progress: bool = False) -> EmbedSummary:
    """LAION's image embeddings into the store, joined to training_images by (url, caption)."""
    import pyarrow.parquet as pq

    from spellbook.ingest.keys import file_sha256, stable_keys

    summary = EmbedSummary("laion embeddings")
    store = VectorStore.beside(db_path)
    main = connect_readonly(db_path)
    try:
        record = None
        for npy_path, metadata_path in laion_shards(paths):
            try:
                vectors = np.load(npy_path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise EmbedError(f"{npy_path}: not a readable .npy file ({error})") from None
            if vectors.ndim != 2:
                raise EmbedError(f"{npy_path}: expected a 2-D array of embeddings, got shape {vectors.shape}")
            file = pq.ParquetFile(metadata_path)
            url_column = _column(file.schema_arrow.names, "url")
            caption_column = _column(file.schema_arrow.names, "caption", "text")
            if url_column is None or caption_column is None:
                raise EmbedError(f"{metadata_path}: needs url and caption columns (has {', '.join(file.schema_arrow.names)})")
            if file.metadata.num_rows != vectors.shape[0]:
                raise EmbedError(f"{npy_path}: {vectors.shape[0]:,} embeddings but {metadata_path.name} has {file.metadata.num_rows:,} rows; they must align row for row")
            if record is None:
                record = _laion_record(store, model, vectors.shape[1], precision)
            elif vectors.shape[1] != record.dimensions:
                raise EmbedError(f"{npy_path}: {vectors.shape[1]} dimensions, the others have {record.dimensions}")
            sha = file_sha256(npy_path)
            done = store.conn.execute("SELECT rows_done, status FROM imports WHERE sha256 = ?", (sha,)).fetchone()
            if done and done[1] == "complete":
                summary.notes.append(f"{npy_path.name}: already imported")
                continue
            start = done[0] if done else 0
            bar = _progress(vectors.shape[0] - start, npy_path.name, progress)
            offset = 0
            for group in range(file.metadata.num_row_groups):
                table = file.read_row_group(group, columns=[url_column, caption_column])
                for chunk in table.to_batches(max_chunksize=batch):
                    rows = chunk.num_rows
                    if offset + rows <= start:
                        offset += rows
                        continue
                    skip = max(0, start - offset)
                    urls = chunk.column(0).to_pylist()[skip:]
                    captions = chunk.column(1).to_pylist()[skip:]
                    part = np.asarray(vectors[offset + skip : offset + rows], dtype=np.float32)
                    _import_chunk(store, main, record, urls, captions, part, summary, stable_keys)
                    offset += rows
                    store.conn.execute(
                        """INSERT INTO imports(sha256, file_name, model, rows_done, matched, skipped, status, imported_at)
                           VALUES (?, ?, ?, ?, ?, ?, 'loading', ?) ON CONFLICT(sha256) DO UPDATE SET rows_done = excluded.rows_done,
                           matched = excluded.matched, skipped = excluded.skipped, imported_at = excluded.imported_at""",
                        (sha, npy_path.name, record.id, offset, summary.linked, summary.skipped, now()),
                    )
                    if bar is not None:
                        bar.update(rows - skip)
            store.conn.execute("UPDATE imports SET status = 'complete' WHERE sha256 = ?", (sha,))
            if bar is not None:
                bar.render_finish()
    finally:
        store.close()
        main.close()
    return summary


def _laion_record(store: VectorStore, model, dimensions: int, precision: str) -> ModelRecord:
    """The model row for LAION's vectors, from the model's identity alone (no weights loaded)."""
    row = store.conn.execute("SELECT id, model_id, fingerprint, dimensions, precision FROM models WHERE fingerprint = ?", (model.fingerprint(),)).fetchone()
    if row is None:
        store.conn.execute(
            "INSERT INTO models(model_id, fingerprint, dimensions, precision, created_at) VALUES (?, ?, ?, ?, ?)",
            (model.model_id, model.fingerprint(), dimensions, precision, now()),
        )
        row = store.conn.execute("SELECT id, model_id, fingerprint, dimensions, precision FROM models WHERE fingerprint = ?", (model.fingerprint(),)).fetchone()
    record = ModelRecord(*row)
    if record.dimensions != dimensions:
        raise EmbedError(f"the embeddings have {dimensions} dimensions, {record.model_id} has {record.dimensions}: are they of this model?")
    return record


def _import_chunk(store, main, record, urls, captions, vectors, summary, stable_keys) -> None:
    keys = stable_keys(urls, captions)
    ids = dict(_keys_to_ids(main, keys))
    summary.items += len(keys)
    wanted = [(ids[key], key, i) for i, key in enumerate(keys) if key in ids]
    summary.skipped += len(keys) - len(wanted)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms == 0, 1, norms)
    missing = store.missing(record, "training_image", [key for _, key, _ in wanted])
    new = {key: vectors[i] for _, key, i in wanted if key in missing}
    summary.embedded += store.put(record, "training_image", [(item_id, key) for item_id, key, _ in wanted], new)
    summary.linked += len(wanted)


def _keys_to_ids(main, keys) -> list[tuple[int, int]]:
    rows = []
    for start in range(0, len(keys), 900):
        part = keys[start : start + 900]
        rows.extend(main.execute(f"SELECT key, id FROM training_images WHERE key IN ({','.join('?' * len(part))})", part).fetchall())
    return rows


# --- texts -------------------------------------------------------------------------------------

TEXT_SOURCES = {"training_caption": ("training_images", "caption"), "generation_prompt": ("generations", "prompt")}


def embed_texts(db_path, model, collection: str, precision: str = DEFAULT_PRECISION, batch: int = 2_048, limit: int | None = None, progress: bool = False) -> EmbedSummary:
    """Captions (training_caption) or prompts (generation_prompt), each distinct text once."""
    table, column = TEXT_SOURCES[collection]
    summary = EmbedSummary(f"{collection} texts")
    store = VectorStore.beside(db_path)
    main = connect_readonly(db_path)
    try:
        record = store.model_record(model, precision)
        after = store.conn.execute("SELECT coalesce(max(item_id), 0) FROM vector_items WHERE collection = ? AND vector IN (SELECT id FROM vectors WHERE model = ?)", (collection, record.id)).fetchone()[0]
        total = main.execute(f"SELECT count(*) FROM {table} WHERE id > ?", (after,)).fetchone()[0]
        total = min(total, limit) if limit else total
        bar = _progress(total, collection, progress)
        while summary.items < total:
            rows = main.execute(f"SELECT id, {column} FROM {table} WHERE id > ? ORDER BY id LIMIT ?", (after, min(batch, total - summary.items))).fetchall()
            if not rows:
                break
            hashes = [(item_id, content_hash(text)) for item_id, text in rows]
            missing = store.missing(record, collection, {h for _, h in hashes})
            texts = {}
            for (item_id, text), (_, h) in zip(rows, hashes):
                if h in missing and h not in texts:
                    texts[h] = text
            vectors = dict(zip(texts, model.embed_texts(list(texts.values())))) if texts else {}
            summary.embedded += store.put(record, collection, hashes, vectors)
            summary.items += len(rows)
            summary.linked += len(rows)
            after = rows[-1][0]
            if bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.render_finish()
    finally:
        store.close()
        main.close()
    return summary


# --- images ------------------------------------------------------------------------------------


def open_image(data: bytes):
    """A verified PIL image from bytes, or None: bounded pixels, no partial or hostile files."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except Exception:  # Pillow raises many kinds for damaged or hostile files, DecompressionBombError included
        return None


def _local_images(main, after: int, batch: int) -> list[tuple[int, str, str]]:
    return main.execute(
        """SELECT g.id, r.path, g.image_path FROM generations g JOIN image_roots r ON r.id = g.image_root_id
           WHERE g.image_path IS NOT NULL AND g.id > ? ORDER BY g.id LIMIT ?""",
        (after, batch),
    ).fetchall()


def _read_local(root: str, relative: str) -> bytes | None:
    import zipfile

    base = Path(root)
    try:
        if base.is_file() and zipfile.is_zipfile(base):
            with zipfile.ZipFile(base) as archive:
                info = archive.getinfo(relative)
                return archive.read(info) if info.file_size <= MAX_IMAGE_BYTES else None
        path = (base / relative).resolve()
        if not path.is_relative_to(base.resolve()) or path.stat().st_size > MAX_IMAGE_BYTES:
            return None
        return path.read_bytes()
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


def embed_images(db_path, model, collection: str, precision: str = DEFAULT_PRECISION, batch: int = 64, limit: int | None = None,
                 progress: bool = False, fetch_limits=None) -> EmbedSummary:
    """Generated images from this machine's disk (generation_image), or training images fetched by
    their URLs (training_image; every fetch recorded in link_checks)."""
    if collection not in ("generation_image", "training_image"):
        raise EmbedError(f"{collection}: images are embedded for generation_image or training_image")
    summary = EmbedSummary(f"{collection} images")
    store = VectorStore.beside(db_path)
    main = connect_readonly(db_path)
    try:
        record = store.model_record(model, precision)
        after = store.conn.execute(
            "SELECT coalesce(max(item_id), 0) FROM vector_items WHERE collection = ? AND vector IN (SELECT id FROM vectors WHERE model = ?)", (collection, record.id)
        ).fetchone()[0]
        for images in (_generation_images if collection == "generation_image" else _fetched_training_images)(main, store, after, batch, limit, summary, fetch_limits):
            decoded = [(item_id, h, open_image(data)) for item_id, h, data in images]
            good = [(item_id, h, image) for item_id, h, image in decoded if image is not None]
            summary.failed += len(decoded) - len(good)
            missing = store.missing(record, collection, {h for _, h, _ in good})
            todo = {}
            for _, h, image in good:
                if h in missing and h not in todo:
                    todo[h] = image
            vectors = dict(zip(todo, model.embed_images(list(todo.values())))) if todo else {}
            summary.embedded += store.put(record, collection, [(item_id, h) for item_id, h, _ in good], vectors)
            summary.linked += len(good)
            if progress:
                print(f"\r{collection}: {summary.items:,} items, {summary.embedded:,} embedded", end="", file=sys.stderr)
    finally:
        store.close()
        main.close()
    return summary


def _generation_images(main, store, after, batch, limit, summary, fetch_limits) -> Iterator[list]:
    while limit is None or summary.items < limit:
        rows = _local_images(main, after, batch if limit is None else min(batch, limit - summary.items))
        if not rows:
            return
        summary.items += len(rows)
        out = []
        for item_id, root, relative in rows:
            data = _read_local(root, relative)
            if data is None:
                summary.failed += 1
                continue
            out.append((item_id, content_hash(data), data))
        after = rows[-1][0]
        yield out


def _fetched_training_images(main, store, after, batch, limit, summary, fetch_limits) -> Iterator[list]:
    """Training images by URL, fetched `batch` at a time; the content address is the row's key, so a
    fetched image and LAION's own vector for the same row are one."""
    from spellbook.embeddings.fetch import FetchLimits, fetch_images

    limits = fetch_limits or FetchLimits()
    while limit is None or summary.items < limit:
        rows = main.execute("SELECT id, key, url FROM training_images WHERE id > ? ORDER BY id LIMIT ?",
                            (after, batch if limit is None else min(batch, limit - summary.items))).fetchall()
        if not rows:
            return
        summary.items += len(rows)
        keys = {item_id: key for item_id, key, _ in rows}
        results = list(fetch_images([(item_id, url) for item_id, _, url in rows], limits))
        store.record_links(results)
        out = []
        for result in results:
            summary.outcomes[result.outcome] = summary.outcomes.get(result.outcome, 0) + 1
            if result.outcome == "ok" and result.data:
                out.append((result.item_id, keys[result.item_id], result.data))
            else:
                summary.failed += 1
        after = rows[-1][0]
        yield out


__all__ = ["COLLECTIONS", "EmbedError", "EmbedSummary", "embed_images", "embed_texts", "import_laion", "laion_shards", "open_image"]
