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
- Measured on the 1M file (printed by every run): pairwise cosine of random pairs p10-p90 ~0.17-0.41
  (median ~0.29); nearest-neighbour cosine median ~0.8; the top 100 principal axes hold ~50% of the
  variance. Uniform random vectors would instead have all pairwise cosines near 0 and make every
  quantiser look broken (see NOTES.md).

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

GENERATOR_VERSION = 1
CHUNK = 100_000
TRUTH_QUERIES = 200  # the first 200 queries: 160 image, 40 text-like
TRUTH_K = 100
FULL_ROWS = 12_096_835


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

        topics = structured(supers, 0.20)
        self.centers = topics[rng.integers(0, supers, clusters)] + structured(clusters, 0.15)
        self.mean_weight = np.sqrt(0.30 * rng.uniform(0.4, 1.6, clusters)).astype(np.float32)
        sizes = rng.lognormal(0, 1.2, clusters)
        self.weights = sizes / sizes.sum()
        self.spread = np.sqrt(0.35 * rng.lognormal(0, 0.35, clusters)).astype(np.float32)
        # each cluster spreads along its own axes of the shared basis (the spectrum permuted)
        self.noise_scales = np.stack([np.sqrt(self.spectrum[rng.permutation(dims)]) for _ in range(clusters)]).astype(np.float32)

    def _noise(self, rng, labels) -> np.ndarray:
        noise = np.empty((len(labels), self.dims), np.float32)
        for start in range(0, len(labels), 8192):  # blocks that stay in cache
            block = rng.standard_normal((min(8192, len(labels) - start), self.dims), dtype=np.float32)
            block *= self.noise_scales[labels[start:start + len(block)]]
            noise[start:start + len(block)] = block
        return noise @ self.basis.T

    def images(self, rng, n: int, duplicates: float = 0.03) -> np.ndarray:
        labels = rng.choice(len(self.weights), n, p=self.weights)
        noise = self._noise(rng, labels)
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
        x = self._noise(rng, labels) * np.float32(np.sqrt(0.8))
        x += self.centers[labels]
        x += np.float32(1.4) * self.text_mean
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
        best = {p: (np.full((len(queries), 0), -np.inf, np.float32), np.zeros((len(queries), 0), np.int64)) for p in ("f32", "f16", "i8")}
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
                as_int8 = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
                for precision, values in (("f32", x), ("f16", stored.astype(np.float32)), ("i8", as_int8 * scale.astype(np.float32))):
                    scores, ids = faiss.knn(queries, np.ascontiguousarray(values, dtype=np.float32), min(TRUTH_K, n), metric=faiss.METRIC_INNER_PRODUCT)
                    best[precision] = _merge_top(best[precision], (scores, ids + start), TRUTH_K)
                if chunk % 10 == 0:
                    print(f"# generated {start + n:,} / {self.rows:,} rows ({time.perf_counter() - started:.0f}s)", flush=True)
        np.savez(self.truth_path.with_suffix(".partial.npz"), int8_scale=scale.astype(np.float32),
                 **{f"{p}_scores": s for p, (s, _) in best.items()}, **{f"{p}_ids": i for p, (_, i) in best.items()})
        os.replace(partial, self.vectors_path)
        os.replace(self.truth_path.with_suffix(".partial.npz"), self.truth_path)
        print(f"# generated {self.vectors_path.name} ({self.vectors_path.stat().st_size / 1e9:.1f} GB) in {time.perf_counter() - started:.0f}s", flush=True)


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
