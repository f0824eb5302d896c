"""Vector search benchmark: synthetic CLIP-like image embeddings (default: 12,096,835 x 768, the size of
LAION-Aesthetics 6+ with OpenAI ViT-L/14 image embeddings), searched through spellbook.embeddings.index.

    .venv/bin/python bench/vectors.py                          # 12.1M rows: the chosen design + baselines
    .venv/bin/python bench/vectors.py --rows 1000000 --designs all --crossover

For each design: build time and peak RSS of the build, index size on disk, recall@10 against exact
float32 search (200 queries: 160 held-out image points, 40 text-like), p50/p99 single-query latency over
1,000 queries (the same kinds), peak RSS of the search process (a fresh process that opens the index the
way a server would, then searches), and the cost of adding 1% more vectors and saving. Each design runs
in its own process, one after another. Baselines in the same run: exact numpy float32 and sqlite-vec
`vec0` float32 scan on the first 1M rows, extrapolated linearly to the full size; and the stored-precision
question (recall@10 of exact search over float16 and over int8 stored vectors, against float32).

How the vectors are made (class Mixture; GENERATOR_VERSION changes whenever the numbers do):
- 3,000 Gaussian clusters, grouped under 64 super-clusters (topics), with log-normal sizes (sigma 1.2:
  at 12.1M rows the largest cluster holds ~90k rows, the median ~2k) and log-normal spreads (sigma 0.35).
- Every vector is  mean_k * m_image + center_k + spread_k * noise, then L2-normalised. m_image is a
  shared direction (real CLIP image embeddings share a strong common component); its weight varies by
  cluster (share of the squared norm 0.12-0.48). Centres and noise follow a power-law spectrum
  (variance of the j-th axis ~ 1/j) in one random orthonormal basis, so that the data have ~30 effective
  dimensions; each cluster spreads along its own permutation of those axes.
- 3% of rows are near-duplicates of another row in the same chunk (cosine 0.94-0.995), as LAION has.
- Image queries are fresh draws of the same mixture (held out: not rows of the file). Text-like queries
  sit in another cone: a different mean direction (cosine 0.25 with m_image) plus a cluster centre and
  broader noise, so that their best matches score ~0.3-0.4, as CLIP text-image pairs do.
- Measured (printed by every run; bench/VECTORS.md has the table): cosine of random pairs p10-p90
  0.158-0.498 (median 0.346); image queries' nearest-neighbour cosine median 0.72-0.74 (200k to
  12.1M); the top 100 principal axes hold 73% of the variance. Uniform random vectors would instead
  have all pairwise cosines near 0 and make every quantiser look broken (see NOTES.md).

Generated in chunks of 100,000 rows (each from its own seed, so a file of N rows is the first N rows of
any longer one) to bench/cache/vectors-<rows>-<dims>-<seed>-g<version>.f16.npy (float16, 18.6 GB at
12.1M x 768), with the exact top 100 of the 200 truth queries computed on the way over the float32
vectors, over their float16 copies and over int8 copies (per-dimension symmetric scale: max |x_j| of
the first chunk / 127, clipped), saved beside it (…-truth.npz). Peak RSS of the generator ~2 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import _common  # noqa: E402  (bench/_common.py: this script's folder is first on sys.path)
CACHE, median, percentile, result_line = _common.CACHE, _common.median, _common.percentile, _common.result_line

GENERATOR_VERSION = 2
CHUNK = 100_000
TRUTH_QUERIES = 200  # the first 200 queries: 160 image, 40 text-like
TRUTH_K = 100
PRECISIONS = ("f32", "f16", "i8", "i8s")  # float32, float16, int8 per-dimension scale, int8 x127 (the store's)
FULL_ROWS = 12_096_835
TEXT_MEAN, TEXT_NOISE = 1.4, 0.8


class Mixture:
    """The parameters of the synthetic distribution (see the module docstring), fixed by seed and dims."""

    def __init__(self, dims: int = 768, seed: int = 1, clusters: int = 3000, supers: int = 64):
        rng = np.random.default_rng([seed, 0])
        self.dims = dims
        self.basis = np.linalg.qr(rng.standard_normal((dims, dims)))[0].astype(np.float32)
        spectrum = np.arange(1, dims + 1) ** -1.0
        self.spectrum = spectrum / spectrum.sum()
        image_mean = rng.standard_normal(dims)
        image_mean /= np.linalg.norm(image_mean)
        other = rng.standard_normal(dims)
        other -= other @ image_mean * image_mean
        other /= np.linalg.norm(other)
        self.image_mean = image_mean.astype(np.float32)
        self.text_mean = (0.25 * image_mean + np.sqrt(1 - 0.25**2) * other).astype(np.float32)

        def structured(n, share):
            return ((rng.standard_normal((n, dims)) * np.sqrt(self.spectrum * share)) @ self.basis.T).astype(np.float32)

        topics = structured(supers, 0.15)
        self.centers = topics[rng.integers(0, supers, clusters)] + structured(clusters, 0.08)
        self.mean_weight = np.sqrt(0.45 * rng.uniform(0.4, 1.6, clusters)).astype(np.float32)
        sizes = rng.lognormal(0, 1.2, clusters)
        self.weights = sizes / sizes.sum()
        self.spread = np.sqrt(0.6 * rng.lognormal(0, 0.35, clusters)).astype(np.float32)
        # noise along the same power-law axes as the centres: clusters overlap, neighbours cross them
        self.noise_basis = (np.sqrt(self.spectrum)[:, None] * self.basis.T).astype(np.float32)

    def _noise(self, rng, n) -> np.ndarray:
        return rng.standard_normal((n, self.dims), dtype=np.float32) @ self.noise_basis

    def images(self, rng, n: int, duplicates: float = 0.03) -> np.ndarray:
        labels = rng.choice(len(self.weights), n, p=self.weights)
        noise = self._noise(rng, n)
        x = noise * self.spread[labels, None]
        x += self.centers[labels]
        x += self.mean_weight[labels, None] * self.image_mean
        _normalise(x)
        if duplicates:
            copies = np.flatnonzero(rng.random(n) < duplicates)
            sources = rng.integers(0, n, len(copies))
            keep = ~np.isin(sources, copies)
            copies, sources = copies[keep], sources[keep]
            direction = noise[copies] / np.linalg.norm(noise[copies], axis=1, keepdims=True)
            x[copies] = x[sources] + rng.uniform(0.1, 0.35, (len(copies), 1)).astype(np.float32) * direction
            x[copies] /= np.sqrt(np.einsum("ij,ij->i", x[copies], x[copies]))[:, None]
        return x

    def texts(self, rng, n: int) -> np.ndarray:
        labels = rng.choice(len(self.weights), n, p=self.weights)
        x = self._noise(rng, n) * np.float32(np.sqrt(TEXT_NOISE))
        x += self.centers[labels]
        x += np.float32(TEXT_MEAN) * self.text_mean
        _normalise(x)
        return x


def _normalise(x: np.ndarray) -> None:
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]


class Dataset:
    """The cached files of one synthetic set: vectors (float16 memmap), queries, exact truth."""

    def __init__(self, rows: int, dims: int = 768, seed: int = 1):
        self.rows, self.dims, self.seed = rows, dims, seed
        stem = CACHE / f"vectors-{rows}-{dims}-{seed}-g{GENERATOR_VERSION}"
        self.vectors_path = stem.with_name(stem.name + ".f16.npy")
        self.queries_path = stem.with_name(stem.name + "-queries.npz")
        self.truth_path = stem.with_name(stem.name + "-truth.npz")
        self._mixture = None

    @property
    def mixture(self) -> Mixture:
        if self._mixture is None:
            self._mixture = Mixture(self.dims, self.seed)
        return self._mixture

    def ensure(self) -> "Dataset":
        if not self.queries_path.exists():
            self._write_queries()
        if not (self.vectors_path.exists() and self.truth_path.exists()):
            self._generate()
        return self

    def vectors(self) -> np.ndarray:
        return np.load(self.vectors_path, mmap_mode="r")

    def queries(self) -> tuple[np.ndarray, np.ndarray]:
        """(queries float32[1000, d], kinds "image"/"text"); the first TRUTH_QUERIES have exact truth."""
        with np.load(self.queries_path) as saved:
            return saved["queries"], saved["kinds"]

    def truth(self) -> dict[str, np.ndarray]:
        with np.load(self.truth_path) as saved:
            return dict(saved)

    def extra(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n more rows of the same distribution (ids rows, rows+1, ...): what `add 1%` adds."""
        rng = np.random.default_rng([self.seed, 3, self.rows])
        return np.arange(self.rows, self.rows + n, dtype=np.int64), self.mixture.images(rng, n)

    def _write_queries(self):
        rng = np.random.default_rng([self.seed, 2])
        image, text = self.mixture.images(rng, 800, duplicates=0), self.mixture.texts(rng, 200)
        # truth set first (160 image + 40 text), then the rest of the latency set in the same ratio
        queries = np.concatenate([image[:160], text[:40], image[160:], text[40:]])
        kinds = np.array(["image"] * 160 + ["text"] * 40 + ["image"] * 640 + ["text"] * 160)
        CACHE.mkdir(exist_ok=True)
        np.savez(self.queries_path.with_suffix(".partial.npz"), queries=queries, kinds=kinds)
        os.replace(self.queries_path.with_suffix(".partial.npz"), self.queries_path)

    def _generate(self):
        import faiss

        started = time.perf_counter()
        queries = self.queries()[0][:TRUTH_QUERIES]
        partial = self.vectors_path.with_suffix(".partial")
        header = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(self.rows, self.dims))
        offset = header.offset
        del header
        best = {p: (np.full((len(queries), 0), -np.inf, np.float32), np.zeros((len(queries), 0), np.int64)) for p in PRECISIONS}
        scale = None
        with open(partial, "r+b") as out:
            for chunk, start in enumerate(range(0, self.rows, CHUNK)):
                n = min(CHUNK, self.rows - start)
                x = self.mixture.images(np.random.default_rng([self.seed, 1, chunk]), CHUNK)[:n]
                if scale is None:
                    scale = np.abs(x).max(axis=0) / 127
                stored = x.astype(np.float16)
                out.seek(offset + start * self.dims * 2)
                out.write(stored.tobytes())
                for precision, values in (("f32", x), ("f16", stored.astype(np.float32)), ("i8", as_int8(x, scale)), ("i8s", as_int8(x))):
                    scores, ids = faiss.knn(queries, np.ascontiguousarray(values, dtype=np.float32), min(TRUTH_K, n), metric=faiss.METRIC_INNER_PRODUCT)
                    best[precision] = _merge_top(best[precision], (scores, ids + start), TRUTH_K)
                if chunk % 10 == 0:
                    print(f"# generated {start + n:,} / {self.rows:,} rows ({time.perf_counter() - started:.0f}s)", flush=True)
        np.savez(self.truth_path.with_suffix(".partial.npz"), int8_scale=scale.astype(np.float32),
                 **{f"{p}_scores": s for p, (s, _) in best.items()}, **{f"{p}_ids": i for p, (_, i) in best.items()})
        os.replace(partial, self.vectors_path)
        os.replace(self.truth_path.with_suffix(".partial.npz"), self.truth_path)
        print(f"# generated {self.vectors_path.name} ({self.vectors_path.stat().st_size / 1e9:.1f} GB) in {time.perf_counter() - started:.0f}s", flush=True)


def as_int8(x: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """x through int8 storage, back to float32: per-dimension symmetric scale, or (scale None) the
    vector store's single scale, round(127 x v) then re-normalised (spellbook.embeddings.store)."""
    if scale is None:
        q = np.clip(np.rint(np.asarray(x, np.float32) * 127), -127, 127)
        return q / np.linalg.norm(q, axis=1, keepdims=True)
    return (np.clip(np.rint(np.asarray(x, np.float32) / scale), -127, 127) * scale).astype(np.float32)


def _merge_top(a, b, k):
    scores, ids = np.concatenate([a[0], b[0]], axis=1), np.concatenate([a[1], b[1]], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |found[:k] & truth[:k]| / k."""
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def describe(dataset: Dataset) -> dict:
    """The distribution's shape, printed with every run (see the module docstring)."""
    import faiss

    vectors = dataset.vectors()
    rng = np.random.default_rng(0)
    sample = np.asarray(vectors[: min(len(vectors), 200_000)], dtype=np.float32)
    pairs = rng.integers(0, len(sample), (20_000, 2))
    pair_cos = np.einsum("ij,ij->i", sample[pairs[:, 0]], sample[pairs[:, 1]])
    truth = dataset.truth()
    queries, kinds = dataset.queries()
    image = kinds[:TRUTH_QUERIES] == "image"
    nn = truth["f32_scores"]
    centred = sample[:50_000] - sample[:50_000].mean(axis=0)
    variance = np.linalg.eigvalsh(centred.T @ centred)[::-1]
    figures = {
        "pair_cos_p10": float(np.percentile(pair_cos, 10)), "pair_cos_p50": float(np.percentile(pair_cos, 50)),
        "pair_cos_p90": float(np.percentile(pair_cos, 90)),
        "image_nn1_p50": float(np.median(nn[image, 0])), "image_nn10_p50": float(np.median(nn[image, 9])),
        "text_nn1_p50": float(np.median(nn[~image, 0])), "text_nn10_p50": float(np.median(nn[~image, 9])),
        "gap_10_11_p50": float(np.median(nn[:, 9] - nn[:, 10])),
        "top100_axes_variance": float(variance[:100].sum() / variance.sum()),
    }
    del faiss
    return figures


# --- the caller's side: stored vectors read back for re-scoring ------------------------------------------


class StoredVectors:
    """rescore(ids) as the caller does it: rows read from the float16 file by pread (not memory-mapped,
    so they do not count in the search process's RSS), sorted by offset, optionally through int8."""

    def __init__(self, dataset: Dataset, precision: str = "f16", extra: tuple[np.ndarray, np.ndarray] | None = None):
        self.dims, self.rows, self.precision = dataset.dims, dataset.rows, precision
        self.offset = np.load(dataset.vectors_path, mmap_mode="r").offset
        self.fd = os.open(dataset.vectors_path, os.O_RDONLY)
        self.scale = dataset.truth()["int8_scale"] if precision == "i8" else None
        self.extra = extra
        self.seconds = 0.0

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        ids = np.asarray(ids, np.int64)
        out = np.empty((len(ids), self.dims), np.float32)
        stored = ids < self.rows
        order = np.argsort(ids[stored])
        positions = np.flatnonzero(stored)[order]
        row_bytes = self.dims * 2
        raw = b"".join(os.pread(self.fd, row_bytes, self.offset + int(i) * row_bytes) for i in ids[stored][order])
        out[positions] = np.frombuffer(raw, np.float16).reshape(-1, self.dims)
        if (~stored).any():
            out[~stored] = self.extra[1][ids[~stored] - self.rows].astype(np.float16)
        if self.precision == "i8":
            out = as_int8(out, self.scale)
        elif self.precision == "i8s":
            out = as_int8(out)
        self.seconds += time.perf_counter() - started
        return out


def rss_now() -> dict:
    figures = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmHWM", "VmRSS", "RssAnon", "RssFile")):
                figures[line.split(":")[0]] = int(line.split()[1]) / 1024
    return figures


def evict(paths) -> None:
    """Drop these files' pages from the page cache (only ours), for a cold first pass."""
    for path in paths:
        if Path(path).is_file():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


# --- designs ---------------------------------------------------------------------------------------------
# Each design builds from the float16 file, opens the way a server would, and searches one query at a
# time, returning up to C candidate ids that are then re-scored exactly (ours does it inside search()).


def batches(vectors: np.ndarray, rows: int, size: int = 100_000):
    for start in range(0, rows, size):
        yield np.arange(start, min(rows, start + size), dtype=np.int64), vectors[start:min(rows, start + size)]


def nlist_for(rows: int) -> int:
    from spellbook.embeddings.index import _nlist_for

    return _nlist_for(rows)


class Ours:
    """spellbook.embeddings.index.VectorIndex: exact or ivfpq (the chosen design)."""

    def __init__(self, kind: str, **options):
        self.kind, self.options = kind, options

    def build(self, dataset, rows, folder):
        from spellbook.embeddings.index import VectorIndex

        VectorIndex.build(folder / "vectors.index", batches(dataset.vectors(), rows), dataset.dims, count=rows, kind=self.kind, **self.options)

    def open(self, folder):
        from spellbook.embeddings.index import VectorIndex

        self.index = VectorIndex.open(folder / "vectors.index")
        return self

    def configs(self, rows):
        if self.kind == "exact":
            return [{}]
        nlist = self.index.settings["nlist"]
        probes = sorted({max(8, nlist // f) for f in (128, 64, 32, 16)})
        return [{"nprobe": p, "candidates": c} for p in probes for c in (100, 200, 300, 1000)]

    def search(self, query, k, rescore, config):
        return self.index.search(query, k, rescore=rescore, **config)[0]

    def add(self, folder, ids, vectors):
        self.open(folder)
        self.index.add(ids, vectors)
        self.index.save()


class Faiss:
    """A faiss index_factory string ({nlist} filled in), trained on 150k rows, then re-scored."""

    def __init__(self, factory: str):
        self.factory = factory

    def build(self, dataset, rows, folder):
        import faiss

        vectors = dataset.vectors()
        spec = self.factory.format(nlist=nlist_for(rows))
        index = faiss.index_factory(dataset.dims, spec, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(0).choice(rows, min(rows, 150_000), replace=False))
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.niter = 10
        index.train(np.asarray(vectors[sample], dtype=np.float32))
        for ids, chunk in batches(vectors, rows):
            index.add(np.asarray(chunk, dtype=np.float32))
        faiss.write_index(index, str(folder / "index.faiss"))

    def open(self, folder):
        import faiss

        flags = faiss.IO_FLAG_MMAP_IFC if "IVF" in self.factory else 0
        self.index = faiss.read_index(str(folder / "index.faiss"), flags)
        return self

    def configs(self, rows):
        ivf = faiss_ivf(self.index)
        if ivf is None:  # HNSW
            return [{"efSearch": e, "candidates": c} for e in (64, 128, 256) for c in (100, 300)]
        probes = sorted({max(8, ivf.nlist // f) for f in (128, 64, 32, 16)})
        return [{"nprobe": p, "candidates": c} for p in probes for c in (100, 300, 1000)]

    def search(self, query, k, rescore, config):
        import faiss

        space = faiss.ParameterSpace()
        for key in ("nprobe", "efSearch"):
            if key in config and getattr(self, "_" + key, None) != config[key]:
                space.set_index_parameter(self.index, key, config[key])
                setattr(self, "_" + key, config[key])
        _, found = self.index.search(query[None], config["candidates"])
        return rescored(found[0][found[0] >= 0], query, k, rescore)

    def add(self, folder, ids, vectors):
        import faiss

        index = faiss.read_index(str(folder / "index.faiss"))
        index.add(vectors)
        faiss.write_index(index, str(folder / "index.faiss.added"))
        os.replace(folder / "index.faiss.added", folder / "index.faiss")


def faiss_ivf(index):
    import faiss

    return faiss.try_extract_index_ivf(index)


class Binary:
    """Sign bits of (x - mean), 1 bit a dimension (96 bytes at 768), Hamming scan (faiss
    IndexBinaryFlat), top C re-scored."""

    def build(self, dataset, rows, folder):
        import faiss

        vectors = dataset.vectors()
        mean = np.asarray(vectors[: min(rows, 200_000)], dtype=np.float32).mean(axis=0)
        index = faiss.IndexBinaryFlat(dataset.dims)
        for ids, chunk in batches(vectors, rows):
            index.add(np.packbits(np.asarray(chunk, dtype=np.float32) > mean, axis=1))
        faiss.write_index_binary(index, str(folder / "index.faissb"))
        np.save(folder / "mean.npy", mean)

    def open(self, folder):
        import faiss

        self.index = faiss.read_index_binary(str(folder / "index.faissb"))
        self.mean = np.load(folder / "mean.npy")
        return self

    def configs(self, rows):
        return [{"candidates": c} for c in (300, 1000, 3000, 10000)]

    def search(self, query, k, rescore, config):
        _, found = self.index.search(np.packbits(query[None] > self.mean, axis=1), config["candidates"])
        return rescored(found[0][found[0] >= 0], query, k, rescore)

    def add(self, folder, ids, vectors):
        self.open(folder)
        self.index.add(np.packbits(vectors > self.mean, axis=1))
        import faiss

        faiss.write_index_binary(self.index, str(folder / "index.faissb"))


class USearch:
    """usearch HNSW (M=16, ef_construction=128), inner product, vectors stored as int8 or float16,
    in memory or memory-mapped (view)."""

    def __init__(self, dtype: str, view: bool = False):
        self.dtype, self.view = dtype, view

    def build(self, dataset, rows, folder):
        from usearch.index import Index

        index = Index(ndim=dataset.dims, metric="ip", dtype=self.dtype, connectivity=16, expansion_add=128)
        for ids, chunk in batches(dataset.vectors(), rows):
            index.add(ids, np.asarray(chunk, dtype=np.float32), threads=2)
        index.save(str(folder / "index.usearch"))

    def open(self, folder):
        from usearch.index import Index

        self.index = Index.restore(str(folder / "index.usearch"), view=self.view)
        return self

    def configs(self, rows):
        return [{"ef": e, "candidates": c} for e in (64, 128, 256) for c in (100, 300)]

    def search(self, query, k, rescore, config):
        self.index.expansion_search = config["ef"]
        found = self.index.search(query, config["candidates"], threads=1)
        return rescored(np.asarray(found.keys, np.int64), query, k, rescore)

    def add(self, folder, ids, vectors):
        from usearch.index import Index

        index = Index.restore(str(folder / "index.usearch"))
        index.add(ids, vectors, threads=2)
        index.save(str(folder / "index.usearch"))


def rescored(ids, query, k, rescore):
    if not len(ids):
        return ids
    scores = rescore(ids) @ query
    return ids[np.argsort(-scores, kind="stable")[:k]]


DESIGNS = {
    "ivfpq": lambda: Ours("ivfpq"),
    "exact": lambda: Ours("exact", exact_max_rows=10**10),  # stays exact when 1% is added
    "ivf-pq48": lambda: Faiss("IVF{nlist},PQ48"),
    "ivf-pq192x4fs": lambda: Faiss("IVF{nlist},PQ192x4fs"),
    "ivf-pq96x4fs": lambda: Faiss("IVF{nlist},PQ96x4fs"),
    "opq96-ivf-pq96": lambda: Faiss("OPQ96,IVF{nlist},PQ96"),
    "ivf-rabitq": lambda: Faiss("IVF{nlist},RaBitQ"),
    "ivf-sq8": lambda: Faiss("IVF{nlist},SQ8"),
    "binary": Binary,
    "usearch-i8": lambda: USearch("i8"),
    "usearch-i8-view": lambda: USearch("i8", view=True),
    "usearch-f16": lambda: USearch("f16"),
}
SHARED_BUILD = {"usearch-i8-view": "usearch-i8"}  # the same files, opened another way


# --- workers: one process per measurement -------------------------------------------------------------------


def worker_search(dataset: Dataset, name: str, folder: Path, threads: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(threads)
    queries, kinds = dataset.queries()
    truth = dataset.truth()["f32_ids"]
    image = kinds[:TRUTH_QUERIES] == "image"
    evict(folder.iterdir())
    design = DESIGNS[name]()
    started = time.perf_counter()
    design.open(folder)
    opened = time.perf_counter() - started
    rescore = StoredVectors(dataset)
    configs = design.configs(dataset.rows)
    default = default_config(design, configs)

    def run(config, count, store=rescore, k=10):
        found, total, rescoring = [], [], []
        for query in queries[:count]:
            before = store.seconds
            started = time.perf_counter()
            ids = design.search(query, k, store, config)
            total.append((time.perf_counter() - started) * 1000)
            rescoring.append((store.seconds - before) * 1000)
            found.append(np.pad(ids[:k], (0, k - len(ids[:k])), constant_values=-1))
        found = np.array(found[:TRUTH_QUERIES])
        return {"config": config, "recall": recall_at(found, truth), "recall_image": recall_at(found[image], truth[image]),
                "recall_text": recall_at(found[~image], truth[~image]), "p50_ms": median(total), "p99_ms": percentile(total, 99),
                "rescore_p50_ms": median(rescoring)}

    cold = run(default, TRUTH_QUERIES)  # index pages evicted: what a just-started server sees
    results = [run(config, len(queries)) for config in configs]
    precision = {p: run(default, TRUTH_QUERIES, StoredVectors(dataset, p))["recall"] for p in ("f16", "i8", "i8s")}
    return {"open_s": opened, "cold": cold, "results": results, "default": default, "rescored_recall": precision, "rss": rss_now()}


def default_config(design, configs) -> dict:
    if isinstance(design, Ours) and design.kind == "ivfpq":
        return {"nprobe": design.index.settings["nprobe"], "candidates": design.index.settings["candidates"]}
    return configs[len(configs) // 2]


def worker_add(dataset: Dataset, name: str, folder: Path, threads: int) -> dict:
    """Add 1% more rows to a copy of the index and save; then recall on the grown set."""
    import shutil

    import faiss

    faiss.omp_set_num_threads(threads)
    copy = folder.with_name(folder.name + "-add")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy)
    try:
        before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
        ids, vectors = dataset.extra(max(1, dataset.rows // 100))
        design = DESIGNS[name]()
        started = time.perf_counter()
        design.add(copy, ids, vectors)
        seconds = time.perf_counter() - started
        after = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
        rewritten = sorted(n for n in before if n in after and after[n] != before[n])
        written = sum((copy / n).stat().st_size for n in after if n not in before or after[n] != before[n])
        figures = {"added": len(ids), "add_s": seconds, "bytes_written": written, "rewritten": rewritten, "rss": rss_now()}
        if isinstance(design, Ours):
            queries = dataset.queries()[0][:TRUTH_QUERIES]
            truth = dataset.truth()
            extra_scores, extra_ids = faiss.knn(queries, vectors, TRUTH_K, metric=faiss.METRIC_INNER_PRODUCT)
            grown = _merge_top((truth["f32_scores"], truth["f32_ids"]), (extra_scores, extra_ids + dataset.rows), TRUTH_K)[1]
            design.open(copy)
            store = StoredVectors(dataset, extra=(ids, vectors))
            found = np.array([np.pad(r := design.index.search(q, 10, store)[0], (0, 10 - len(r)), constant_values=-1) for q in queries])
            figures["recall_after_add"] = recall_at(found, grown)
            own = [design.index.search(vectors[i], 1, store)[0][:1].tolist() == [ids[i]] for i in range(0, len(ids), max(1, len(ids) // 100))]
            figures["added_found_first"] = float(np.mean(own))
            figures["kind_after_add"] = design.index.kind
        return figures
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def worker_numpy(dataset: Dataset, rows: int) -> dict:
    """Exact float32 search with numpy on the first `rows` rows, in memory: the obvious baseline."""
    vectors = np.empty((rows, dataset.dims), np.float32)
    stored = dataset.vectors()
    for start in range(0, rows, CHUNK):
        vectors[start:start + CHUNK] = stored[start:min(rows, start + CHUNK)]
    queries = dataset.queries()[0]
    times = []
    for query in queries[:100]:
        started = time.perf_counter()
        scores = vectors @ query
        top = np.argpartition(-scores, 10)[:10]
        top[np.argsort(-scores[top])]
        times.append((time.perf_counter() - started) * 1000)
    return {"rows": rows, "p50_ms": median(times), "p99_ms": percentile(times, 99), "rss": rss_now()}


def worker_sqlite_vec(dataset: Dataset, rows: int) -> dict:
    """sqlite-vec vec0 float32 brute-force scan over the first `rows` rows (a temporary database)."""
    import sqlite_vec

    from spellbook.database.connect import sqlite3

    path = CACHE / f"vec0-{rows}-{dataset.vectors_path.stem}.db.tmp"
    for leftover in CACHE.glob(path.name + "*"):
        leftover.unlink()
    try:
        conn = sqlite3.connect(str(path), isolation_level=None)
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.execute(f"CREATE VIRTUAL TABLE vectors USING vec0(embedding float[{dataset.dims}] distance_metric=cosine)")
        started = time.perf_counter()
        stored = dataset.vectors()
        for start in range(0, rows, 20_000):
            chunk = np.asarray(stored[start:min(rows, start + 20_000)], dtype=np.float32)
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO vectors(rowid, embedding) VALUES (?, ?)", ((start + i, row.tobytes()) for i, row in enumerate(chunk)))
            conn.execute("COMMIT")
        load_s = time.perf_counter() - started
        queries, truth = dataset.queries()[0], None
        times, found = [], []
        for query in queries[:20]:
            started = time.perf_counter()
            found.append([r for (r,) in conn.execute("SELECT rowid FROM vectors WHERE embedding MATCH ? AND k = 10", (query.tobytes(),))])
            times.append((time.perf_counter() - started) * 1000)
        return {"rows": rows, "load_s": load_s, "p50_ms": median(times), "p99_ms": percentile(times, 99), "bytes": path.stat().st_size, "rss": rss_now()}
    finally:
        for leftover in CACHE.glob(path.name + "*"):
            leftover.unlink()


def worker_crossover(dataset: Dataset, sizes: list[int]) -> dict:
    """Exact against ivfpq (defaults for each size, re-scored from the float16 file) on the first N rows."""
    import shutil

    from spellbook.embeddings.index import VectorIndex

    queries = dataset.queries()[0][:300]
    store = StoredVectors(dataset)
    figures = []
    for rows in sizes:
        entry = {"rows": rows}
        exact_ids = []
        for kind in ("exact", "ivfpq"):
            folder = CACHE / f"crossover-{kind}-{rows}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            started = time.perf_counter()
            VectorIndex.build(folder / "vectors.index", batches(dataset.vectors(), rows), dataset.dims, count=rows, kind=kind)
            entry[f"{kind}_build_s"] = time.perf_counter() - started
            index = VectorIndex.open(folder / "vectors.index")
            for query in queries[:10]:
                index.search(query, 10, store)
            times, found = [], []
            for query in queries:
                started = time.perf_counter()
                found.append(index.search(query, 10, store)[0])
                times.append((time.perf_counter() - started) * 1000)
            entry[f"{kind}_p50_ms"], entry[f"{kind}_p99_ms"] = median(times), percentile(times, 99)
            if kind == "exact":
                exact_ids = found
            else:
                entry["ivfpq_recall"] = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(found, exact_ids)]))
            del index
            shutil.rmtree(folder, ignore_errors=True)
        print(f"# crossover {json.dumps(entry)}", flush=True)
        figures.append(entry)
    return {"sizes": figures}


def run_worker(args, *extra) -> tuple[float, float, dict]:
    """This script again in a fresh process (niced): (seconds, peak RSS MB, its JSON)."""
    command = ["nice", "-n", "10", sys.executable, __file__, "--rows", str(args.rows), "--dims", str(args.dims),
               "--seed", str(args.seed), "--threads", str(args.threads), *extra]
    seconds, peak_mb, output = _common.timed(command)
    lines = [line for line in output.splitlines() if line.startswith("WORKER ")]
    for line in output.splitlines():
        if line.startswith("# "):
            print(line, flush=True)
    if not lines:
        raise SystemExit(f"{' '.join(command)} printed no result:\n{output}")
    return seconds, peak_mb, json.loads(lines[-1][len("WORKER "):])


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and not p.name.endswith(".json"))


# --- main ------------------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=FULL_ROWS)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--designs", default="ivfpq", help=f"comma-separated, or 'all': {', '.join(DESIGNS)}")
    parser.add_argument("--baseline-rows", type=int, default=1_000_000, help="the slice the numpy and sqlite-vec baselines scan")
    parser.add_argument("--crossover", action="store_true", help="also time exact against ivfpq from 10k rows up to 1M")
    parser.add_argument("--rebuild", action="store_true", help="rebuild indexes found in bench/cache")
    parser.add_argument("--threads", type=int, default=1, help="faiss threads in the search process (single queries)")
    parser.add_argument("--generate-only", action="store_true", help="only write the cached vectors and their exact truth")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--design", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    dataset = Dataset(args.rows, args.dims, args.seed)

    if args.worker:
        folder = Path(args.folder) if args.folder else None
        if args.worker == "build":
            folder.mkdir(parents=True, exist_ok=True)
            DESIGNS[args.design]().build(dataset, args.rows, folder)
            figures = {"bytes": folder_bytes(folder), "rss": rss_now()}
        elif args.worker == "search":
            figures = worker_search(dataset, args.design, folder, args.threads)
        elif args.worker == "add":
            figures = worker_add(dataset, args.design, folder, args.threads)
        elif args.worker == "numpy":
            figures = worker_numpy(dataset, min(args.rows, args.baseline_rows))
        elif args.worker == "sqlite-vec":
            figures = worker_sqlite_vec(dataset, min(args.rows, args.baseline_rows))
        else:
            figures = worker_crossover(dataset, [int(s) for s in args.sizes.split(",")])
        print("WORKER " + json.dumps(figures), flush=True)
        return

    dataset.ensure()
    if args.generate_only:
        return
    shape = describe(dataset)
    print(f"# {args.rows:,} x {args.dims} synthetic CLIP-like vectors: " + ", ".join(f"{k} {v:.3f}" for k, v in shape.items()), flush=True)
    truth = dataset.truth()
    stored = {p: recall_at(truth[f"{p}_ids"], truth["f32_ids"]) for p in ("f16", "i8", "i8s")}
    print("# exact search over stored vectors, recall@10 against float32: " + ", ".join(f"{p} {r:.4f}" for p, r in stored.items()), flush=True)

    slice_rows = min(args.rows, args.baseline_rows)
    _, numpy_peak, numpy_figures = run_worker(args, "--worker", "numpy", "--baseline-rows", str(slice_rows))
    _, _, vec0 = run_worker(args, "--worker", "sqlite-vec", "--baseline-rows", str(slice_rows))
    scale = args.rows / slice_rows
    print(f"  numpy float32 exact, {slice_rows:,} rows: p50 {numpy_figures['p50_ms']:.1f} ms p99 {numpy_figures['p99_ms']:.1f} ms "
          f"(x{scale:.2f} for {args.rows:,} rows: {numpy_figures['p50_ms'] * scale:.0f} ms, {args.rows * args.dims * 4 / 1e9:.1f} GB of float32)", flush=True)
    print(f"  sqlite-vec vec0 float32 scan, {slice_rows:,} rows: p50 {vec0['p50_ms']:.0f} ms p99 {vec0['p99_ms']:.0f} ms, load {vec0['load_s']:.0f}s, "
          f"{vec0['bytes'] / 1e9:.2f} GB (x{scale:.2f}: {vec0['p50_ms'] * scale:.0f} ms)", flush=True)

    names = list(DESIGNS) if args.designs == "all" else args.designs.split(",")
    summary = {}
    for name in names:
        built_name = SHARED_BUILD.get(name, name)
        folder = CACHE / f"index-{built_name}-{dataset.vectors_path.name.split('.')[0]}"
        record = folder / "build.json"
        if args.rebuild or not record.exists():
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            seconds, peak, figures = run_worker(args, "--worker", "build", "--design", built_name, "--folder", str(folder))
            record.write_text(json.dumps({"build_s": seconds, "build_peak_mb": figures["rss"]["VmHWM"], **figures}))
        build = json.loads(record.read_text())
        _, _, search = run_worker(args, "--worker", "search", "--design", name, "--folder", str(folder))
        _, _, added = run_worker(args, "--worker", "add", "--design", name, "--folder", str(folder))
        search_peak = search["rss"]["VmHWM"]  # this process's own high-water mark (ru_maxrss inherits the parent's)
        summary[name] = {"build": build, "search": search, "search_peak_mb": search_peak, "add": added}
        print(f"  {name}: built in {build['build_s']:.0f}s (peak RSS {build['build_peak_mb']:.0f} MB), {build['bytes'] / 1e6:.0f} MB on disk; "
              f"opened in {search['open_s']:.2f}s; search process peak RSS {search_peak:.0f} MB "
              f"(at the end: anon {search['rss'].get('RssAnon', 0):.0f} MB, file {search['rss'].get('RssFile', 0):.0f} MB); "
              f"add {added['added']:,} (1%) + save {added['add_s']:.1f}s, {added['bytes_written'] / 1e6:.1f} MB written, rewritten {added['rewritten']}"
              + (f", recall after add {added['recall_after_add']:.3f}, added found first {added['added_found_first']:.2f}" if "recall_after_add" in added else ""), flush=True)
        cold = search["cold"]
        print(f"    cold (index evicted from the page cache) {cold['config']}: p50 {cold['p50_ms']:.1f} ms p99 {cold['p99_ms']:.1f} ms", flush=True)
        for r in search["results"]:
            mark = " *" if r["config"] == search["default"] else ""
            print(f"    {json.dumps(r['config']):42s} recall@10 {r['recall']:.3f} (image {r['recall_image']:.3f}, text {r['recall_text']:.3f})  "
                  f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  (rescore p50 {r['rescore_p50_ms']:.2f} ms){mark}", flush=True)
        print(f"    re-scored from float16 / int8 per-dimension / int8 x127 (the store's): "
              + " / ".join(f"{search['rescored_recall'][p]:.3f}" for p in ("f16", "i8", "i8s")), flush=True)

    if args.crossover:
        sizes = [s for s in (10_000, 30_000, 100_000, 200_000, 300_000, 1_000_000) if s <= args.rows]
        _, _, crossover = run_worker(args, "--worker", "crossover", "--sizes", ",".join(map(str, sizes)))
        for entry in crossover["sizes"]:
            print(f"  {entry['rows']:>9,} rows: exact p50 {entry['exact_p50_ms']:.1f} ms p99 {entry['exact_p99_ms']:.1f} ms; "
                  f"ivfpq p50 {entry['ivfpq_p50_ms']:.1f} ms p99 {entry['ivfpq_p99_ms']:.1f} ms recall {entry['ivfpq_recall']:.3f} "
                  f"(build {entry['ivfpq_build_s']:.0f}s)", flush=True)

    chosen = summary[names[0]]
    best = next(r for r in chosen["search"]["results"] if r["config"] == chosen["search"]["default"])
    figures = dict(
        rows=args.rows, design=names[0], recall_at_10=best["recall"], recall_image=best["recall_image"], recall_text=best["recall_text"],
        p50_ms=best["p50_ms"], p99_ms=best["p99_ms"], cold_p99_ms=chosen["search"]["cold"]["p99_ms"],
        search_peak_rss_mb=chosen["search_peak_mb"], index_mb=chosen["build"]["bytes"] / 1e6, build_s=chosen["build"]["build_s"],
        add_1pct_s=chosen["add"]["add_s"],
        numpy_slice_p50_ms=numpy_figures["p50_ms"], numpy_extrapolated_ms=numpy_figures["p50_ms"] * scale,
        sqlite_vec_slice_p50_ms=vec0["p50_ms"], sqlite_vec_extrapolated_ms=vec0["p50_ms"] * scale,
        speedup_vs_numpy=numpy_figures["p50_ms"] * scale / best["p50_ms"], speedup_vs_sqlite_vec=vec0["p50_ms"] * scale / best["p50_ms"],
        stored_f16_recall=stored["f16"], stored_i8_recall=stored["i8"], stored_i8x127_recall=stored["i8s"],
        rescored_i8_recall=chosen["search"]["rescored_recall"]["i8"], rescored_i8x127_recall=chosen["search"]["rescored_recall"]["i8s"],
    )
    (CACHE / f"vectors-summary-{args.rows}.json").write_text(json.dumps({"shape": shape, "stored": stored, "numpy": numpy_figures, "sqlite_vec": vec0, "designs": summary}, indent=1))
    print(result_line(**figures))


if __name__ == "__main__":
    main()
