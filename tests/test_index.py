"""spellbook.embeddings.index on small clustered sets, with the real libraries (numpy, faiss)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from spellbook.embeddings.index import IndexFileError, VectorIndex

D = 32


def clustered(n: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    """Unit vectors around a shared direction, in Gaussian clusters (like CLIP's, in miniature)."""
    rng = np.random.default_rng([seed, 7])
    centres = np.random.default_rng(7).standard_normal((clusters, D)) + 1.5
    x = centres[rng.integers(0, clusters, n)] + 0.7 * rng.standard_normal((n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def batches(vectors, first_id=0, size=1000):
    for start in range(0, len(vectors), size):
        yield np.arange(first_id + start, first_id + min(len(vectors), start + size)), vectors[start:start + size]


class Stored:
    """The caller's stored vectors, by id: what rescore reads."""

    def __init__(self, vectors, first_id=0):
        self.by_id = {first_id + i: v for i, v in enumerate(vectors)}
        self.calls = []

    def extend(self, ids, vectors):
        self.by_id.update(zip(np.asarray(ids).tolist(), vectors))

    def __call__(self, ids):
        self.calls.append(len(ids))
        return np.stack([self.by_id[int(i)] for i in ids]).astype(np.float32)


@pytest.fixture(scope="module")
def vectors():
    return clustered(12_000)


@pytest.fixture(scope="module")
def approximate(tmp_path_factory, vectors):
    """An ivfpq index over 12,000 vectors (built once; tests that change it work on copies)."""
    path = tmp_path_factory.mktemp("approximate") / "vectors.index"
    VectorIndex.build(path, batches(vectors), D, count=len(vectors), exact_max_rows=1000, nlist=128, nprobe=32)
    return path


def copy_index(source, target_dir):
    import shutil

    for file in source.parent.iterdir():
        shutil.copy2(file, target_dir / file.name)
    return target_dir / source.name


def exact_top(vectors, query, k=10):
    return np.argsort(-(vectors @ query), kind="stable")[:k]


def test_exact_build_open_search(tmp_path, vectors):
    small = vectors[:2000]
    path = tmp_path / "small.index"
    built = VectorIndex.build(path, batches(small, first_id=500), D)
    assert (built.kind, len(built), built.dimensions) == ("exact", 2000, D)
    index = VectorIndex.open(path)
    assert (index.kind, len(index), index.dimensions) == ("exact", 2000, D)
    ids, scores = index.search(small[17], 5)
    assert ids[0] == 517 and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.diff(scores) <= 0)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert np.array_equal(ids, exact_top(small, small[17], 5) + 500)
    assert 517 in index and 10 not in index


def test_approximate_recall_and_own_id_first(approximate, vectors):
    index = VectorIndex.open(approximate)
    assert index.kind == "ivfpq" and len(index) == len(vectors)
    stored = Stored(vectors)
    queries = clustered(100, seed=1)
    recall = np.mean([len(set(index.search(q, 10, rescore=stored, candidates=200)[0].tolist()) & set(exact_top(vectors, q).tolist())) / 10
                      for q in queries])
    assert recall >= 0.9
    assert set(stored.calls) == {200}  # the top `candidates` hits are what gets re-scored
    for i in (0, 999, 5000, 11999):
        ids, scores = index.search(vectors[i], 10, rescore=stored)
        assert ids[0] == i and scores[0] == pytest.approx(1.0, abs=1e-5)
    ids, scores = index.search(vectors[3], 10)  # no rescore: quantised scores, still best first
    assert len(ids) == 10 and np.all(np.diff(scores) <= 0)


def test_exact_below_the_threshold_approximate_above(tmp_path, vectors):
    assert VectorIndex.build(tmp_path / "a.index", batches(vectors[:1000]), D, exact_max_rows=1000).kind == "exact"
    assert VectorIndex.build(tmp_path / "b.index", batches(vectors[:1000]), D, count=1000, exact_max_rows=1000).kind == "exact"
    assert VectorIndex.build(tmp_path / "c.index", batches(vectors[:3000]), D, exact_max_rows=1000, nlist=32).kind == "ivfpq"
    # an exact index that grows past the threshold becomes approximate when saved
    index = VectorIndex.open(tmp_path / "a.index")
    index.add(np.arange(1000, 3000), vectors[1000:3000])
    assert index.kind == "exact"
    index.save()
    assert index.kind == "ivfpq" and len(index) == 3000
    reopened = VectorIndex.open(tmp_path / "a.index")
    assert reopened.kind == "ivfpq" and len(reopened) == 3000
    assert reopened.search(vectors[2500], 1, rescore=Stored(vectors[:3000]))[0][0] == 2500


def test_incremental_add_reuses_the_trained_parts(tmp_path, approximate, vectors):
    path = copy_index(approximate, tmp_path)
    before = json.loads(path.read_text())["files"]
    stamps = {role: (tmp_path / entry["name"]).stat().st_mtime_ns for role, entry in before.items()}
    index = VectorIndex.open(path)
    added = clustered(120, seed=2)  # 1%
    new_ids = np.arange(1_000_000, 1_000_120)
    stored = Stored(vectors)
    stored.extend(new_ids, added)
    index.add(new_ids, added)
    assert len(index) == 12_120
    assert index.search(added[5], 10, rescore=stored)[0][0] == 1_000_005  # found before save
    index.save()
    after = json.loads(path.read_text())["files"]
    for role in ("trained", "coarse", "base", "base_ids"):  # nothing retrained or rewritten
        assert after[role] == before[role]
        assert (tmp_path / after[role]["name"]).stat().st_mtime_ns == stamps[role]
    assert {"delta", "delta_ids"} <= set(after)
    import faiss

    assert faiss.read_index(str(tmp_path / after["delta"]["name"])).ntotal == 120  # only the new vectors were encoded
    reopened = VectorIndex.open(path)
    assert len(reopened) == 12_120
    for i in (0, 60, 119):
        assert reopened.search(added[i], 10, rescore=stored)[0][0] == new_ids[i]
    with pytest.raises(ValueError, match="already in the index"):
        reopened.add(new_ids[:1], added[:1])
    # merged into a new base: the trained parts still the same files
    reopened.compact()
    compacted = json.loads(path.read_text())["files"]
    assert compacted["trained"] == before["trained"] and compacted["base"] != before["base"] and "delta" not in compacted
    assert VectorIndex.open(path).search(added[7], 1, rescore=stored)[0][0] == new_ids[7]


@pytest.mark.parametrize("kind", ["exact", "ivfpq"])
def test_removed_ids_are_never_returned(tmp_path, vectors, kind):
    data = vectors[:4000]
    path = tmp_path / "v.index"
    index = VectorIndex.build(path, batches(data), D, kind=kind, nlist=64, nprobe=64)
    stored = Stored(data)
    assert index.search(data[42], 1, rescore=stored)[0][0] == 42
    index.remove([42, 43, 999_999])  # an id never indexed is recorded too
    assert len(index) == 3998 and 42 not in index
    for candidates in (None, 50):
        assert not {42, 43} & set(index.search(data[42], 50, rescore=stored, candidates=candidates)[0].tolist())
    index.save()
    reopened = VectorIndex.open(path)
    assert len(reopened) == 3998
    assert not {42, 43} & set(reopened.search(data[43], 100, rescore=stored, candidates=400)[0].tolist())
    with pytest.raises(ValueError, match="removed"):
        reopened.add([42], data[42:43])
    with pytest.raises(ValueError, match="removed"):
        reopened.add([999_999], data[0:1])
    reopened.add([5000], clustered(1, seed=3))
    reopened.compact()
    again = VectorIndex.open(path)
    assert len(again) == 3999 and 42 not in again and 5000 in again
    assert not {42, 43} & set(again.search(data[42], 100, rescore=stored, candidates=400)[0].tolist())


def test_a_failed_build_leaves_the_old_index(tmp_path, vectors):
    path = tmp_path / "v.index"
    VectorIndex.build(path, batches(vectors[:3000]), D, nlist=32)
    files = sorted(p.name for p in tmp_path.iterdir())

    def failing():
        yield from batches(vectors[:2000])
        raise RuntimeError("the source went away")

    with pytest.raises(RuntimeError, match="went away"):
        VectorIndex.build(path, failing(), D, kind="ivfpq", nlist=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # and no leftovers
    index = VectorIndex.open(path)
    assert len(index) == 3000 and index.search(vectors[5], 1)[0][0] == 5


KILLED_BUILD = """
import sys, time
from pathlib import Path
import numpy as np
from spellbook.embeddings.index import VectorIndex
from tests.test_index import clustered, batches, D

def slow():
    yield from batches(clustered(3000, seed=4), first_id=10_000)
    Path(sys.argv[2]).write_text("started")
    time.sleep(60)
    yield from batches(clustered(3000, seed=5), first_id=20_000)

VectorIndex.build(Path(sys.argv[1]), slow(), D, kind="exact")
"""


def test_a_killed_build_leaves_the_old_index(tmp_path, vectors):
    path = tmp_path / "v.index"
    VectorIndex.build(path, batches(vectors[:1000]), D)
    marker = tmp_path / "started"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(path), str(marker)], cwd=root)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the build did not start"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers  # the killed build had written part of a file
    index = VectorIndex.open(path)
    assert index.kind == "exact" and len(index) == 1000 and index.search(vectors[9], 1)[0][0] == 9
    index.add([5000], vectors[5000:5001])
    index.save()  # the next commit clears what the killed build left
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_missing_truncated_and_corrupted_files_are_clear_errors(tmp_path, vectors):
    assert issubclass(IndexFileError, ValueError)
    path = tmp_path / "v.index"
    with pytest.raises(IndexFileError, match="no index"):
        VectorIndex.open(path)
    VectorIndex.build(path, batches(vectors[:3000]), D, kind="ivfpq", nlist=32)
    manifest = json.loads(path.read_text())
    base = tmp_path / manifest["files"]["base"]["name"]
    original = base.read_bytes()

    base.write_bytes(original[: len(original) // 2])
    with pytest.raises(IndexFileError, match="truncated"):
        VectorIndex.open(path)

    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    base.write_bytes(bytes(damaged))
    with pytest.raises(IndexFileError, match="corrupted"):
        VectorIndex.open(path)

    base.write_bytes(original)
    assert len(VectorIndex.open(path)) == 3000
    base.unlink()
    with pytest.raises(IndexFileError, match="missing"):
        VectorIndex.open(path)

    path.write_text(path.read_text()[:40])
    with pytest.raises(IndexFileError, match="truncated or corrupted"):
        VectorIndex.open(path)
    path.write_text('{"format": "something else"}')
    with pytest.raises(IndexFileError, match="not a Spellbook vector index"):
        VectorIndex.open(path)


def test_inputs_are_checked(tmp_path, vectors):
    path = tmp_path / "v.index"
    with pytest.raises(ValueError, match=r"\[n, 32\]"):
        VectorIndex.build(path, [(np.arange(3), np.ones((3, 16), np.float32))], D)
    with pytest.raises(ValueError, match="duplicate"):
        VectorIndex.build(path, [(np.array([1, 1]), vectors[:2])], D)
    assert not path.exists()
    int8 = np.clip(np.rint(vectors[:500] * 127), -127, 127).astype(np.int8)  # the store's int8
    index = VectorIndex.build(path, [(np.arange(500), int8)], D)
    assert index.search(vectors[7], 1)[0][0] == 7
    with pytest.raises(ValueError, match="finite and non-zero"):
        index.add([900], np.zeros((1, D), np.float32))
    with pytest.raises(ValueError, match="one finite vector"):
        index.search(np.ones(D + 1, np.float32), 5)
    ids, scores = index.search(vectors[0].astype(np.float16), 10_000)
    assert len(ids) == 500
    assert len(index.search(vectors[0], 0)[0]) == 0


def test_importing_the_index_loads_no_heavy_library():
    code = "import sys, spellbook.embeddings.index; print(sorted(m for m in ('torch', 'faiss', 'usearch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class _Identity:
    """What a store records of a model: its id, dimension and weights' fingerprint."""

    def __init__(self, name: str, dimensions: int):
        self.model_id, self.dimensions = name, dimensions

    def fingerprint(self) -> str:
        return "sha256:" + self.model_id


def test_reading_the_vectors_for_a_build_is_one_walk(tmp_path):
    """Regression: VectorStore.iter_vectors let SQLite take the (model, collection, content_hash)
    index, read every vector of the collection after the batch's start and sort them, for every
    batch: quadratic, so `spellbook index` on 12M float16 vectors (26 GB) read 590 GB in 20 min and
    was far from done. Reading in small batches now costs about what one batch does."""
    from spellbook.embeddings.store import VectorStore

    store = VectorStore(tmp_path / "v.db")
    first, second = store.model_record(_Identity("a", 8)), store.model_record(_Identity("b", 8))
    rng = np.random.default_rng(0)
    for start in range(0, 4_000, 500):  # two models' runs interleaved, as `spellbook embed` adds them
        for record in (first, second):
            vectors = rng.normal(size=(500, 8)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            by_hash = {start + i + 1: v for i, v in enumerate(vectors)}
            store.put(record, "training_image", [(h, h) for h in by_hash], by_hash)

    def read(batch):
        steps = []
        store.conn.set_progress_handler(lambda: steps.append(1), 100)
        try:
            return [int(i) for ids, _ in store.iter_vectors(first, "training_image", batch=batch) for i in ids], len(steps)
        finally:
            store.conn.set_progress_handler(None, 100)

    whole, whole_steps = read(10_000)
    batched, batched_steps = read(50)
    assert whole == batched == sorted(whole) and len(whole) == 4_000
    assert batched_steps < 2 * whole_steps, (batched_steps, whole_steps)


def test_a_read_only_store_reads_big_batches_in_parallel_and_the_same(tmp_path):
    """Re-scoring reads a few hundred scattered vectors; a read-only store reads a batch of
    PARALLEL_READS_FROM or more on READERS threads, each with its own connection: the same vectors,
    in the order asked (duplicates too), as the one-connection path."""
    import threading

    from spellbook.embeddings import store as store_module
    from spellbook.embeddings.store import VectorStore

    path = tmp_path / "v.db"
    writer = VectorStore(path)
    record = writer.model_record(_Identity("a", 8))
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(2_000, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    writer.put(record, "training_image", [(i + 1, i + 1) for i in range(2_000)], {i + 1: v for i, v in enumerate(vectors)})
    ids = [int(i) for (i,) in writer.conn.execute("SELECT id FROM vectors ORDER BY random() LIMIT 500")]
    ids += ids[:20]  # asked twice
    expected = writer.vectors_by_id(record, ids)
    writer.close()
    reader = VectorStore(path, readonly=True)
    before = threading.active_count()
    got = reader.vectors_by_id(record, ids)
    assert np.array_equal(got, expected)
    assert len(reader._reader_conns) > 1 and threading.active_count() > before  # read on several threads
    assert np.array_equal(reader.vectors_by_id(record, ids[: store_module.PARALLEL_READS_FROM - 1]), expected[: store_module.PARALLEL_READS_FROM - 1])
    with pytest.raises(KeyError):
        reader.vectors_by_id(record, ids + [10**9])  # an id that is not there, as before
    reader.close()
    assert reader._readers is None and not reader._reader_conns
