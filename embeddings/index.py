"""The vector index: (int64 id, L2-normalised vector) pairs, searched by inner product.

`VectorIndex` picks the implementation by size:

- up to EXACT_MAX_ROWS vectors, **exact**: the float32 vectors in one memory-mapped file, scanned with
  one matrix-vector product per query (200k x 768: ~15 ms, 614 MB);
- above it, **ivfpq**: faiss IVF with product-quantised residuals (M = d/8 sub-quantisers of 8 bits,
  96 bytes a vector at 768 dimensions; nlist ~ 4 sqrt(N), trained by two-level k-means), memory-mapped,
  whose top `candidates` hits are re-scored exactly by the caller's `rescore(ids)`. At 12.1M x 768
  that is ~1.3 GB on disk and in the page cache, against 18.6 GB of float16 vectors.

bench/vectors.py measures both against exact search and the other designs that were tried; its
figures and the reasons for this choice are in bench/VECTORS.md.

Files: `path` is a small JSON manifest; the data lie beside it as `<path name>.<token>.<part>`. An
approximate index has a trained part (coarse centroids and PQ codebooks, written once at build), a
base (memory-mapped, never modified) and a delta (what was added since, in memory and rewritten on
each save). `add` encodes new vectors with the trained parts only; `save` writes the delta and, once
it holds more than COMPACT_FRACTION of the base, merges it into a new base (no retraining).
`remove` records ids that are filtered out of every search from then on. Every write goes to new file
names and commits by renaming the manifest, so a killed build or save leaves the previous index
usable; files no manifest names are deleted after each commit. Readers keep the files they have
mapped (Linux unlink semantics). One writer at a time: `add`/`remove`/`save` must not run concurrently
with each other or with `search` on the same object; searches may run concurrently.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import secrets
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

FORMAT = "spellbook.vector-index"
FORMAT_VERSION = 1
EXACT_MAX_ROWS = 200_000  # above this, exact scans cost more than the approximate index (bench/VECTORS.md)
COMPACT_FRACTION = 0.25  # a delta above this share of the base is merged into a new base on save
DEFAULT_CANDIDATES = 300  # approximate hits re-scored when the caller gives rescore but no candidates
PQ_TRAINING_ROWS = 65_536  # faiss trains each 256-centroid sub-quantiser on at most 256 x 256 points
BATCH_ROWS = 100_000

log = logging.getLogger(__name__)


class IndexFileError(ValueError):
    """An index that is missing, truncated, corrupted, or not one of ours."""


class VectorIndex:
    """The index the caller uses; see the module docstring. Build with `build`, open with `open`."""

    def __init__(self, path: Path, manifest: dict, store: "_Store"):
        self.path = Path(path)
        self._manifest = manifest
        self._store = store
        self._dirty = False

    # --- properties -------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self._store.kind

    @property
    def dimensions(self) -> int:
        return self._store.dimensions

    @property
    def settings(self) -> dict:
        """The search settings (nprobe, candidates) and how the index was built."""
        return dict(self._store.settings)

    def __len__(self) -> int:
        return self._store.count

    def __contains__(self, id_) -> bool:
        return bool(self._store.contains(np.array([id_], np.int64))[0])

    def __repr__(self) -> str:
        return f"<VectorIndex {self.kind} {len(self):,} x {self.dimensions} at {self.path}>"

    # --- build and open ---------------------------------------------------------------------------

    @classmethod
    def build(cls, path: Path, batches: Iterable[tuple[np.ndarray, np.ndarray]], dimensions: int, count: int | None = None, *,
              kind: str | None = None, training: np.ndarray | None = None, exact_max_rows: int = EXACT_MAX_ROWS,
              nlist: int | None = None, pq_m: int | None = None, nprobe: int | None = None,
              candidates: int | None = None) -> "VectorIndex":
        """Build an index from batches of (ids int64[n], vectors float16/float32/int8[n, dimensions]).

        kind None picks by size: "exact" up to exact_max_rows vectors (from `count` when given,
        else from the stream), else "ivfpq". The approximate index trains on `training` when given,
        else on the first ~40 x nlist vectors of the stream: pass batches in no particular order
        (or a representative `training` sample). Writes at `path` atomically."""
        if kind not in (None, "exact", "ivfpq"):
            raise ValueError(f"unknown index kind {kind!r}: 'exact' or 'ivfpq'")
        path = Path(path)
        rows = _Rows(batches, dimensions)
        settings = {"exact_max_rows": int(exact_max_rows)}
        if kind is None:
            if count is not None:
                kind = "exact" if count <= exact_max_rows else "ivfpq"
            else:
                rows.buffer(exact_max_rows + 1)
                kind = "exact" if rows.exhausted else "ivfpq"
        writer = _Writer(path)
        try:
            if kind == "exact":
                store = _ExactStore.build(writer, rows, dimensions, settings)
            else:
                expected = count if count is not None else max(rows.buffered, 4 * exact_max_rows)
                tuning = {"nlist": nlist, "pq_m": pq_m, "nprobe": nprobe, "candidates": candidates}
                store = _IVFPQStore.build(writer, rows, dimensions, expected, training, settings, tuning)
            manifest = writer.commit(store.kind, dimensions, store.count, store.settings, store.entries)
        except BaseException:
            writer.discard()  # the previous index, if any, is untouched
            raise
        return cls(path, manifest, store)

    @classmethod
    def open(cls, path: Path, *, verify: bool = True) -> "VectorIndex":
        """Open an index for search and updates; approximate bases are memory-mapped. verify
        checks every file's CRC-32 (~0.5 s per GB); sizes are always checked."""
        path = Path(path)
        for attempt in range(3):  # a concurrent save may delete files between manifest and data
            manifest = _read_manifest(path)
            try:
                files = {role: _checked(path.parent, role, entry, verify) for role, entry in manifest["files"].items()}
            except FileNotFoundError as missing:
                if attempt < 2 and _read_manifest(path) != manifest:
                    continue
                raise IndexFileError(f"{path}: part of the index is missing ({missing.filename})") from None
            break
        store_class = {"exact": _ExactStore, "ivfpq": _IVFPQStore}.get(manifest["kind"])
        if store_class is None:
            raise IndexFileError(f"{path}: unknown index kind {manifest['kind']!r}")
        try:
            store = store_class.open(files, manifest)
        except (RuntimeError, ValueError) as error:  # faiss and numpy say "read error", "cannot reshape"
            if isinstance(error, IndexFileError):
                raise
            raise IndexFileError(f"{path}: cannot read the index ({error})") from None
        return cls(path, manifest, store)

    # --- updates ----------------------------------------------------------------------------------

    def add(self, ids, vectors) -> None:
        """Add vectors (incremental: encoded with the trained parts, never retrained); persisted by
        save(). Ids already in the index or removed before are refused (ValueError)."""
        ids, vectors = _ids(ids), _vectors(vectors, self.dimensions)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("duplicate ids in one add")
        if not len(ids):
            return
        if self._store.removed_mask(ids).any():
            raise ValueError(f"ids removed before cannot be added again: {ids[self._store.removed_mask(ids)][:5].tolist()}")
        present = self._store.contains(ids)
        if present.any():
            raise ValueError(f"ids already in the index: {ids[present][:5].tolist()}")
        self._store.add(ids, vectors)
        self._dirty = True

    def remove(self, ids) -> None:
        """Never return these ids again (take-down requests); persisted by save(). Ids that are not
        in the index are recorded all the same, so that they cannot be added later."""
        ids = _ids(ids)
        if len(ids):
            self._store.remove(ids)
            self._dirty = True

    def save(self) -> None:
        """Persist adds and removals: a new delta, or a new base once the delta has grown past
        COMPACT_FRACTION of it; an exact index that has grown past exact_max_rows becomes ivfpq."""
        if not self._dirty:
            return
        writer = _Writer(self.path)
        try:
            self._save(writer)
        except BaseException:
            writer.discard()
            raise
        self._dirty = False

    def _save(self, writer: "_Writer") -> None:
        store = self._store
        if store.kind == "exact" and store.count > store.settings["exact_max_rows"]:
            rows = _Rows(store.live_batches(), self.dimensions)
            self._store = _IVFPQStore.build(writer, rows, self.dimensions, store.count, None, {"exact_max_rows": store.settings["exact_max_rows"]}, {})
            self._store.removed = store.removed  # still refused by add
            self._store.removed_changed()
            self._store.write_removed(writer)
            store.close()
        elif store.delta_rows > COMPACT_FRACTION * max(store.base_rows, 1):
            store.compact(writer)
        else:
            store.write_delta(writer)
        self._manifest = writer.commit(self._store.kind, self.dimensions, self._store.count, self._store.settings, self._store.entries)

    def compact(self) -> None:
        """Merge the delta and drop removed vectors into a new base now (no retraining)."""
        writer = _Writer(self.path)
        try:
            self._store.compact(writer)
            self._manifest = writer.commit(self._store.kind, self.dimensions, self._store.count, self._store.settings, self._store.entries)
        except BaseException:
            writer.discard()
            raise
        self._dirty = False

    # --- search -----------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, rescore: Callable[[np.ndarray], np.ndarray] | None = None,
               candidates: int | None = None, *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64[<=k], scores float32[<=k]), best first, for one query vector.

        Approximate: the top `candidates` hits (default DEFAULT_CANDIDATES) are re-scored as
        query . rescore(ids) when rescore is given (rescore returns float32[len(ids), d] in the
        order asked); without it the scores are the quantised estimates (recall@10 ~0.5). Exact
        indexes never call rescore: their scores are already exact."""
        query = np.asarray(query, dtype=np.float32)
        if query.ndim == 2 and query.shape[0] == 1:
            query = query[0]
        if query.shape != (self.dimensions,) or not np.isfinite(query).all():
            raise ValueError(f"a query is one finite vector of {self.dimensions} dimensions, not {query.shape}")
        if k <= 0 or self._store.count == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        query = np.ascontiguousarray(query)
        if self.kind == "exact":
            return self._store.search(query, k)
        fetch = max(k, candidates or self._store.settings.get("candidates", DEFAULT_CANDIDATES)) if rescore else k
        ids, scores = self._store.search(query, fetch, nprobe=nprobe)
        if rescore is None or not len(ids):
            return ids[:k], scores[:k]
        vectors = np.asarray(rescore(ids), dtype=np.float32)
        if vectors.shape != (len(ids), self.dimensions):
            raise ValueError(f"rescore returned {vectors.shape} for {len(ids)} ids")
        exact = vectors @ query
        order = np.argsort(-exact, kind="stable")[:k]
        return ids[order], exact[order]


# --- inputs -----------------------------------------------------------------------------------------


def _ids(ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError("ids are a 1-d array of integers")
    return np.ascontiguousarray(ids, dtype=np.int64)


def _vectors(vectors, dimensions: int) -> np.ndarray:
    """float32, C-contiguous, L2-normalised (so that int8 input of any single scale works)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != dimensions:
        raise ValueError(f"vectors are [n, {dimensions}], not {vectors.shape}")
    if vectors.dtype not in (np.float16, np.float32, np.float64, np.int8):
        raise ValueError(f"vectors are float16, float32 or int8, not {vectors.dtype}")
    vectors = np.array(vectors, dtype=np.float32, order="C")
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    if not (np.isfinite(norms).all() and (norms > 0).all()):
        raise ValueError("vectors must be finite and non-zero")
    vectors /= norms[:, None]
    return vectors


class _Rows:
    """The build's input stream, with a buffer at its start (to decide the kind and to train on)."""

    def __init__(self, batches, dimensions: int):
        self._batches = iter(batches)
        self.dimensions = dimensions
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self.buffered = 0
        self.exhausted = False

    def _next(self):
        for ids, vectors in self._batches:
            ids, vectors = _ids(ids), _vectors(vectors, self.dimensions)
            if len(ids) != len(vectors):
                raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
            if len(ids):
                return ids, vectors
        self.exhausted = True
        return None

    def buffer(self, rows: int) -> None:
        while self.buffered < rows and not self.exhausted:
            batch = self._next()
            if batch is not None:
                self._buffer.append(batch)
                self.buffered += len(batch[0])

    def head(self) -> np.ndarray:
        """The buffered vectors, as one array."""
        return np.concatenate([v for _, v in self._buffer]) if self._buffer else np.zeros((0, self.dimensions), np.float32)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while self._buffer:
            yield self._buffer.pop(0)
        self.buffered = 0
        while (batch := self._next()) is not None:
            yield batch


# --- files ------------------------------------------------------------------------------------------


class _Writer:
    """New files for one commit, named <path name>.<token>.<role>; commit() renames the manifest."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.directory = self.path.parent
        self.directory.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(6)

    def target(self, role: str) -> tuple[Path, Path]:
        final = self.directory / f"{self.path.name}.{self.token}.{role}"
        return final, final.with_name(final.name + ".tmp")

    def finish(self, role: str, written: Path) -> dict:
        final = self.directory / f"{self.path.name}.{self.token}.{role}"
        _fsync(written)
        os.replace(written, final)
        return {"name": final.name, "bytes": final.stat().st_size, "crc32": _crc32(final)}

    def array(self, role: str, array: np.ndarray) -> dict:
        final, temporary = self.target(role)
        with open(temporary, "wb") as out:
            for start in range(0, len(array), BATCH_ROWS):
                out.write(np.ascontiguousarray(array[start:start + BATCH_ROWS]).tobytes())
        return self.finish(role, temporary)

    def faiss_index(self, role: str, index) -> dict:
        import faiss

        final, temporary = self.target(role)
        faiss.write_index(index, str(temporary))
        return self.finish(role, temporary)

    def commit(self, kind: str, dimensions: int, count: int, settings: dict, entries: dict) -> dict:
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind, "dimensions": int(dimensions),
                    "count": int(count), "settings": settings, "files": entries}
        temporary = self.directory / f"{self.path.name}.{self.token}.manifest.tmp"
        temporary.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _fsync(temporary)
        os.replace(temporary, self.path)
        _fsync(self.directory)
        self._remove_unreferenced({entry["name"] for entry in entries.values()})
        return manifest

    def discard(self) -> None:
        """Remove this writer's files (a failed build or save)."""
        for candidate in self.directory.glob(f"{glob.escape(self.path.name)}.{self.token}.*"):
            candidate.unlink(missing_ok=True)

    def _remove_unreferenced(self, keep: set[str]) -> None:
        ours = re.compile(rf"^{re.escape(self.path.name)}\.[0-9a-f]{{12}}\.[a-z_]+(\.tmp)?$")
        for candidate in self.directory.iterdir():
            if ours.match(candidate.name) and candidate.name not in keep:
                try:
                    candidate.unlink()
                except FileNotFoundError:
                    pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _read_manifest(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndexFileError(f"{path}: no index here (build one first)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise IndexFileError(f"{path}: cannot read the index manifest ({error})") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError:
        raise IndexFileError(f"{path}: the index manifest is truncated or corrupted") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFileError(f"{path}: not a Spellbook vector index")
    if manifest.get("version") != FORMAT_VERSION:
        raise IndexFileError(f"{path}: index format version {manifest.get('version')}, this Spellbook reads {FORMAT_VERSION}")
    required = {"kind": str, "dimensions": int, "count": int, "settings": dict, "files": dict}
    if any(not isinstance(manifest.get(key), kind) for key, kind in required.items()):
        raise IndexFileError(f"{path}: the index manifest is incomplete")
    return manifest


def _checked(directory: Path, role: str, entry: dict, verify: bool) -> Path:
    file = directory / entry["name"]
    size = file.stat().st_size  # FileNotFoundError: handled by the caller
    if size != entry["bytes"]:
        raise IndexFileError(f"{file}: {size:,} bytes where the index wrote {entry['bytes']:,} (truncated or replaced)")
    if verify and _crc32(file) != entry["crc32"]:
        raise IndexFileError(f"{file}: checksum mismatch (the {role} file is corrupted)")
    return file


def _raw(file: Path, dtype, width: int | None = None) -> np.ndarray:
    """A raw little-endian array file, memory-mapped (empty files give empty arrays)."""
    itemsize = np.dtype(dtype).itemsize * (width or 1)
    size = file.stat().st_size
    if size % itemsize:
        raise IndexFileError(f"{file}: {size} bytes is not a whole number of rows")
    rows = size // itemsize
    if rows == 0:
        return np.zeros((0, width) if width else 0, dtype)
    return np.memmap(file, dtype=dtype, mode="r", shape=(rows, width) if width else (rows,))


# --- stores -----------------------------------------------------------------------------------------


class _Store:
    """What both kinds share: base ids (sorted), delta ids, removed ids (sorted), the live count."""

    kind = ""

    def __init__(self, dimensions: int, settings: dict, entries: dict, base_sorted_ids: np.ndarray,
                 delta_ids: np.ndarray, removed: np.ndarray, count: int):
        self.dimensions = dimensions
        self.settings = settings
        self.entries = dict(entries)
        self.base_sorted_ids = base_sorted_ids
        self.delta_ids = delta_ids
        self.removed = removed
        self.count = count
        self.delta_changed = False  # the delta in memory differs from its file
        self.removed_dirty = False

    @property
    def base_rows(self) -> int:
        return len(self.base_sorted_ids)

    @property
    def delta_rows(self) -> int:
        return len(self.delta_ids)

    def removed_mask(self, ids: np.ndarray) -> np.ndarray:
        return _in_sorted(ids, self.removed)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        found = _in_sorted(ids, self.base_sorted_ids) | np.isin(ids, self.delta_ids)
        return found & ~self.removed_mask(ids)

    def remove(self, ids: np.ndarray) -> None:
        present = self.contains(np.unique(ids))
        self.count -= int(present.sum())
        self.removed = np.union1d(self.removed, ids).astype(np.int64)
        self.removed_dirty = True
        self.removed_changed()

    def removed_changed(self) -> None:
        pass

    def write_removed(self, writer: _Writer) -> None:
        if len(self.removed) and (self.removed_dirty or "removed" not in self.entries):
            self.entries["removed"] = writer.array("removed", self.removed)
        self.removed_dirty = False

    def close(self) -> None:
        pass


def _in_sorted(values: np.ndarray, sorted_array: np.ndarray) -> np.ndarray:
    if not len(sorted_array) or not len(values):
        return np.zeros(len(values), bool)
    at = np.searchsorted(sorted_array, values)
    at[at == len(sorted_array)] = len(sorted_array) - 1
    return np.asarray(sorted_array[at]) == values


def _removed_from(files: dict) -> np.ndarray:
    return np.array(_raw(files["removed"], np.int64)) if "removed" in files else np.zeros(0, np.int64)


class _ExactStore(_Store):
    """float32 vectors in row order (base memory-mapped, delta in memory), scanned in full."""

    kind = "exact"

    def __init__(self, base_vectors, base_ids, delta_vectors, delta_ids, removed, count, dimensions, settings, entries):
        order = np.argsort(base_ids, kind="stable")
        super().__init__(dimensions, settings, entries, np.asarray(base_ids)[order], np.asarray(delta_ids), removed, count)
        self.base_vectors, self.base_ids = base_vectors, np.asarray(base_ids)
        self.delta_vectors = delta_vectors
        self._masked = None

    @classmethod
    def build(cls, writer: _Writer, rows: _Rows, dimensions: int, settings: dict) -> "_ExactStore":
        final, temporary = writer.target("vectors")
        all_ids = []
        with open(temporary, "wb") as out:
            for ids, vectors in rows:
                out.write(vectors.tobytes())
                all_ids.append(ids)
        ids = np.concatenate(all_ids) if all_ids else np.zeros(0, np.int64)
        if len(np.unique(ids)) != len(ids):
            temporary.unlink()
            raise ValueError("duplicate ids in the vectors to index")
        entries = {"vectors": writer.finish("vectors", temporary), "ids": writer.array("ids", ids)}
        base = _raw(writer.directory / entries["vectors"]["name"], np.float32, dimensions)
        return cls(base, ids, np.zeros((0, dimensions), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64),
                   len(ids), dimensions, settings, entries)

    @classmethod
    def open(cls, files: dict, manifest: dict) -> "_ExactStore":
        d = manifest["dimensions"]
        base_vectors, base_ids = _raw(files["vectors"], np.float32, d), _raw(files["ids"], np.int64)
        if len(base_vectors) != len(base_ids):
            raise IndexFileError(f"{files['vectors']}: {len(base_vectors)} vectors for {len(base_ids)} ids")
        if "delta_vectors" in files:
            delta_vectors, delta_ids = np.array(_raw(files["delta_vectors"], np.float32, d)), np.array(_raw(files["delta_ids"], np.int64))
        else:
            delta_vectors, delta_ids = np.zeros((0, d), np.float32), np.zeros(0, np.int64)
        return cls(base_vectors, base_ids, delta_vectors, delta_ids, _removed_from(files), manifest["count"], d,
                   manifest["settings"], manifest["files"])

    def add(self, ids, vectors):
        self.delta_vectors = np.concatenate([self.delta_vectors, vectors])
        self.delta_ids = np.concatenate([self.delta_ids, ids])
        self.count += len(ids)
        self.delta_changed = True
        self._masked = None

    def removed_changed(self):
        self._masked = None

    def search(self, query, k):
        scores = np.asarray(self.base_vectors @ query) if len(self.base_ids) else np.zeros(0, np.float32)
        if len(self.delta_ids):
            scores = np.concatenate([scores, self.delta_vectors @ query])
        if self._masked is None:
            self._all_ids = np.concatenate([self.base_ids, self.delta_ids])
            self._masked = np.flatnonzero(self.removed_mask(self._all_ids))
        scores[self._masked] = -np.inf
        k = min(k, self.count)
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[np.isfinite(scores[top])]
        return self._all_ids[top].astype(np.int64), scores[top].astype(np.float32)

    def live_batches(self):
        for vectors, ids in ((self.base_vectors, self.base_ids), (self.delta_vectors, self.delta_ids)):
            for start in range(0, len(ids), BATCH_ROWS):
                batch_ids = np.asarray(ids[start:start + BATCH_ROWS])
                keep = ~self.removed_mask(batch_ids)
                yield batch_ids[keep], np.asarray(vectors[start:start + BATCH_ROWS])[keep]

    def write_delta(self, writer):
        if self.delta_changed:
            self.entries["delta_vectors"] = writer.array("delta_vectors", self.delta_vectors)
            self.entries["delta_ids"] = writer.array("delta_ids", self.delta_ids)
            self.delta_changed = False
        self.write_removed(writer)

    def compact(self, writer):
        final, temporary = writer.target("vectors")
        kept = []
        with open(temporary, "wb") as out:
            for ids, vectors in self.live_batches():
                out.write(vectors.tobytes())
                kept.append(ids)
        ids = np.concatenate(kept) if kept else np.zeros(0, np.int64)
        self.entries = {"vectors": writer.finish("vectors", temporary), "ids": writer.array("ids", ids)}
        self.write_removed(writer)
        base = _raw(writer.directory / self.entries["vectors"]["name"], np.float32, self.dimensions)
        self.__init__(base, ids, np.zeros((0, self.dimensions), np.float32), np.zeros(0, np.int64), self.removed,
                      len(ids), self.dimensions, self.settings, self.entries)


class _IVFPQStore(_Store):
    """faiss IndexIVFPQ (inner product, residuals): a memory-mapped base and an in-memory delta that
    share one trained quantiser and codebook; removed ids filtered by an IDSelector."""

    kind = "ivfpq"

    def __init__(self, base, trained, coarse_file, base_sorted_ids, delta, delta_ids, removed, count, dimensions, settings, entries):
        super().__init__(dimensions, settings, entries, base_sorted_ids, delta_ids, removed, count)
        self.base, self.trained, self.delta = base, trained, delta
        self._coarse_file = coarse_file
        self._coarse = None
        self._selector = None
        self.removed_changed()

    # building ---------------------------------------------------------------------------------------

    @classmethod
    def build(cls, writer, rows: _Rows, dimensions, expected, training, settings, tuning) -> "_IVFPQStore":
        import faiss

        nlist = tuning.get("nlist") or _nlist_for(expected)
        pq_m = tuning.get("pq_m") or _pq_m_for(dimensions)
        settings = dict(settings, nlist=nlist, pq_m=pq_m, pq_bits=8,
                        nprobe=tuning.get("nprobe") or _nprobe_for(nlist),
                        candidates=tuning.get("candidates") or DEFAULT_CANDIDATES)
        rows.buffer(max(40 * nlist, PQ_TRAINING_ROWS))
        sample = _vectors(training, dimensions) if training is not None else rows.head()
        if len(sample) < nlist:
            raise ValueError(f"{len(sample)} vectors cannot train {nlist} lists: build an exact index or pass more")
        log.info("training %d lists and %d x 8-bit sub-quantisers on %d vectors", nlist, pq_m, len(sample))
        top, bounds, centroids = _train_coarse(sample, nlist)
        settings["nlist"] = nlist = len(centroids)
        trained = faiss.IndexIVFPQ(faiss.IndexFlatIP(dimensions), dimensions, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        trained.quantizer.add(centroids)
        pick = np.random.default_rng(0).choice(len(sample), min(len(sample), PQ_TRAINING_ROWS), replace=False)
        if len(pick) < 256 * 39:
            trained.pq.cp.min_points_per_centroid = 1  # small indexes: train quietly on what there is
        trained.train(np.ascontiguousarray(sample[np.sort(pick)]))
        del sample
        entries = {"trained": writer.faiss_index("trained", trained)}
        final, temporary = writer.target("coarse")
        with open(temporary, "wb") as out:
            np.savez(out, top=top, bounds=bounds)
        entries["coarse"] = writer.finish("coarse", temporary)
        coarse = _Coarse(top, bounds, centroids)
        base = faiss.clone_index(trained)
        all_ids = []
        for ids, vectors in rows:
            _add_assigned(base, coarse, ids, vectors)
            all_ids.append(ids)
        ids = np.sort(np.concatenate(all_ids)) if all_ids else np.zeros(0, np.int64)
        if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
            raise ValueError("duplicate ids in the vectors to index")
        entries["base"] = writer.faiss_index("base", base)
        entries["base_ids"] = writer.array("base_ids", ids)
        del base
        store = cls.open({role: writer.directory / entry["name"] for role, entry in entries.items()},
                         {"dimensions": dimensions, "count": len(ids), "settings": settings, "files": entries})
        store._coarse = coarse
        return store

    @classmethod
    def open(cls, files: dict, manifest: dict) -> "_IVFPQStore":
        import faiss

        base = faiss.read_index(str(files["base"]), faiss.IO_FLAG_MMAP_IFC)
        trained = faiss.read_index(str(files["trained"]))
        d = manifest["dimensions"]
        for index in (base, trained):
            if not isinstance(faiss.downcast_index(index), faiss.IndexIVFPQ) or index.d != d:
                raise IndexFileError(f"{files['base']}: not an IVF-PQ index of {d} dimensions")
        if "delta" in files:
            delta = faiss.read_index(str(files["delta"]))
            delta_ids = np.array(_raw(files["delta_ids"], np.int64))
        else:
            delta, delta_ids = faiss.clone_index(trained), np.zeros(0, np.int64)
        base_sorted_ids = _raw(files["base_ids"], np.int64)
        if len(base_sorted_ids) != base.ntotal or len(delta_ids) != delta.ntotal:
            raise IndexFileError(f"{files['base']}: {base.ntotal} vectors for {len(base_sorted_ids)} ids")
        return cls(base, trained, files["coarse"], base_sorted_ids, delta, delta_ids, _removed_from(files),
                   manifest["count"], d, manifest["settings"], manifest["files"])

    # updates ----------------------------------------------------------------------------------------

    def coarse(self) -> "_Coarse":
        if self._coarse is None:
            with np.load(self._coarse_file) as saved:
                top, bounds = saved["top"], saved["bounds"]
            quantizer = self.trained.quantizer
            self._coarse = _Coarse(top, bounds, quantizer.reconstruct_n(0, quantizer.ntotal))
        return self._coarse

    def add(self, ids, vectors):
        for start in range(0, len(ids), BATCH_ROWS):
            _add_assigned(self.delta, self.coarse(), ids[start:start + BATCH_ROWS], vectors[start:start + BATCH_ROWS])
        self.delta_ids = np.concatenate([self.delta_ids, ids])
        self.count += len(ids)
        self.delta_changed = True

    def removed_changed(self):
        import faiss

        if len(self.removed):
            self._removed_array = np.ascontiguousarray(self.removed)  # the selector points into it
            inner = faiss.IDSelectorBatch(len(self._removed_array), faiss.swig_ptr(self._removed_array))
            self._selector = (inner, faiss.IDSelectorNot(inner))
        else:
            self._selector = None

    def write_delta(self, writer):
        if self.delta_changed:
            self.entries["delta"] = writer.faiss_index("delta", self.delta)
            self.entries["delta_ids"] = writer.array("delta_ids", self.delta_ids)
            self.delta_changed = False
        self.write_removed(writer)

    def compact(self, writer):
        import faiss

        merged = faiss.read_index(str(writer.directory / self.entries["base"]["name"]))  # into memory
        if self.delta.ntotal:
            merged.merge_from(self.delta, 0)
        if len(self.removed):
            merged.remove_ids(faiss.IDSelectorBatch(len(self.removed), faiss.swig_ptr(np.ascontiguousarray(self.removed))))
        ids = np.union1d(np.asarray(self.base_sorted_ids), self.delta_ids)
        ids = ids[~self.removed_mask(ids)]
        entries = {role: self.entries[role] for role in ("trained", "coarse")}
        entries["base"] = writer.faiss_index("base", merged)
        entries["base_ids"] = writer.array("base_ids", ids)
        del merged
        self.entries = entries
        self.write_removed(writer)
        self.base = faiss.read_index(str(writer.directory / entries["base"]["name"]), faiss.IO_FLAG_MMAP_IFC)
        self.base_sorted_ids = _raw(writer.directory / entries["base_ids"]["name"], np.int64)
        self.delta, self.delta_ids = faiss.clone_index(self.trained), np.zeros(0, np.int64)
        self.count = len(ids)

    # search -----------------------------------------------------------------------------------------

    def search(self, query, fetch, nprobe=None):
        import faiss

        params = faiss.SearchParametersIVF()
        params.nprobe = int(nprobe or self.settings["nprobe"])
        if self._selector is not None:
            params.sel = self._selector[1]
        scores, ids = self.base.search(query[None], fetch, params=params)
        scores, ids = scores[0], ids[0]
        if self.delta.ntotal:
            more_scores, more_ids = self.delta.search(query[None], fetch, params=params)
            scores, ids = np.concatenate([scores, more_scores[0]]), np.concatenate([ids, more_ids[0]])
            order = np.argsort(-scores, kind="stable")[:fetch]
            scores, ids = scores[order], ids[order]
        found = ids >= 0
        return ids[found], scores[found]


class _Coarse:
    """Assignment to the nearest of nlist centroids by a two-level search (the best of the children
    of the 4 nearest top-level centroids), ~10x fewer products than the flat search at 16k lists."""

    BEAM = 4

    def __init__(self, top: np.ndarray, bounds: np.ndarray, centroids: np.ndarray):
        self.top, self.bounds, self.centroids = top, bounds, centroids

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        if len(self.top) == len(self.centroids):  # one level
            return np.argmax(vectors @ self.centroids.T, axis=1).astype(np.int64)
        first = vectors @ self.top.T
        beam = min(self.BEAM, len(self.top))
        nearest = np.argpartition(-first, beam - 1, axis=1)[:, :beam]
        best = np.full(len(vectors), -np.inf, np.float32)
        chosen = np.zeros(len(vectors), np.int64)
        for cell in np.unique(nearest):
            rows = np.flatnonzero((nearest == cell).any(axis=1))
            start, end = self.bounds[cell], self.bounds[cell + 1]
            if start == end:
                continue
            scores = vectors[rows] @ self.centroids[start:end].T
            at = scores.argmax(axis=1)
            value = scores[np.arange(len(rows)), at]
            better = value > best[rows]
            best[rows[better]] = value[better]
            chosen[rows[better]] = start + at[better]
        return chosen


def _add_assigned(index, coarse: _Coarse, ids: np.ndarray, vectors: np.ndarray) -> None:
    import faiss

    assigned = np.ascontiguousarray(coarse.assign(vectors))
    vectors, ids = np.ascontiguousarray(vectors), np.ascontiguousarray(ids)
    index.add_core(len(ids), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), faiss.swig_ptr(assigned))


def _train_coarse(sample: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top-level centroids, child bounds, nlist centroids): spherical k-means, two-level above 1024
    lists (sqrt(nlist) top cells, each split in proportion to its share of the sample)."""
    import faiss

    d = sample.shape[1]

    def kmeans(points, k, seed):
        km = faiss.Kmeans(d, k, niter=12, spherical=True, seed=seed, max_points_per_centroid=256, min_points_per_centroid=1)
        km.train(np.ascontiguousarray(points))
        return km.centroids

    if nlist <= 1024:
        centroids = kmeans(sample, nlist, 1)
        return centroids, np.arange(nlist + 1, dtype=np.int64), centroids
    top_count = 1 << int(round(np.log2(np.sqrt(nlist))))
    top = kmeans(sample, top_count, 1)
    cell = np.argmax(sample @ top.T, axis=1)
    sizes = np.bincount(cell, minlength=top_count)
    shares = np.floor(np.cumsum(sizes) * nlist / sizes.sum()).astype(np.int64)
    children = np.diff(np.concatenate([[0], shares]))
    blocks = []
    for c in range(top_count):
        members = sample[cell == c]
        children[c] = want = int(min(children[c], len(members)))
        if want:
            blocks.append(kmeans(members, want, c + 2) if want < len(members) else members.copy())
    centroids = np.concatenate(blocks).astype(np.float32)  # a few short of nlist if a cell had too few members
    bounds = np.concatenate([[0], np.cumsum(children)]).astype(np.int64)
    return top, bounds, centroids


def _nlist_for(rows: int) -> int:
    """~4 sqrt(N), a power of two: 16384 at 12.1M, 4096 at 1M, 2048 at 250k."""
    return int(min(65536, max(64, 1 << int(round(np.log2(4 * np.sqrt(max(rows, 1))))))))


def _nprobe_for(nlist: int) -> int:
    return int(max(16, nlist // 32))


def _pq_m_for(dimensions: int) -> int:
    """dimensions / 8 sub-quantisers (96 at 768): the largest divisor of d not above d / 8."""
    for m in range(max(1, dimensions // 8), 0, -1):
        if dimensions % m == 0:
            return m
    return 1
