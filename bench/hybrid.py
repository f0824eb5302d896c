"""Hybrid similarity search end to end: text queries through `spellbook serve`'s /-/similar.json (words
and vectors fused, the default mode) on the synthetic LAION database, with the real open_clip text
tower (random weights of the real architecture: the same cost as the real ones) encoding each query.

    .venv/bin/python bench/hybrid.py                                   # 12,096,835 rows, 200 queries
    .venv/bin/python bench/hybrid.py --rows 100000 --queries 50
    .venv/bin/python bench/hybrid.py --rows 100000 --server-env OMP_NUM_THREADS=1   # a server setting to compare

Goal (12.1M rows, ViT-L-14): p50 < 100 ms, p99 < 250 ms per request.

What is served (each step timed, with its peak RSS; cached by rows, seed, model and precision):
- the database: bench/search.py's `database(rows, seed)` (the synthetic file, then its 10,000
  clustered "zorblax" rows), never modified: it is hard-linked into bench/cache/hybrid-<db stem>/
  and everything new lies beside the link, so that the other benchmarks' database keeps no vector
  store beside it (the search page would look up dead links in one);
- a random-weights open_clip model (--model, ViT-L-14: built from open_clip's own config with
  pretrained=None, torch seed --seed) saved as a checkpoint folder (open_clip_config.json +
  open_clip_model.safetensors, as tests/conftest.py's save_tiny_clip does) in
  bench/cache/clip-<model>-random-<seed>/, served as `spellbook serve DB --model local-dir:PATH`;
- image vectors for every training row in the vector store beside the link, as `spellbook embed`
  stores training images (collection training_image, item = the row's id, content hash = the row's
  stable key), under the checkpoint's model record (its fingerprint: the sha256 of the weights, what
  the server checks the loaded model against), float16 by default (the product's stored precision): bench/vectors.py's Mixture, the same
  100,000-row chunks and seeds as its vector file (row i here is row i there); then
  `build_indexes` (exact up to 200,000 vectors, faiss IVF-PQ above).

What is measured, one request at a time over HTTP (httpx, keep-alive), after 10 warm-up queries that
are not counted (the first one waits for the model the server loads at startup: printed). Each timed
step of the query loop starts after SETTLE_S idle (BLAS/OpenMP threads that spin after a call would
otherwise be measured by the next step, in either process, on a 2-core machine).
- hybrid: /-/similar.json?q=... for --queries distinct queries drawn from the database's own words
  (artist names, frequent words, rare words, quoted two-word phrases, runs of 2-4 caption words);
  every answer must be a 200 with similarity_unavailable null and rows found by similarity, else the
  run stops. Then the same queries again: the server caches encoded queries (512, by lower-cased
  text), so the second pass is what a repeated query costs.
- baselines in the same run, interleaved with it query by query (the order alternates): (a) the same
  query with &mode=keywords (no encoding, no vectors), (b) a plain open_clip encode in this process
  (`model.encode_text(tokenizer([q]))` under torch.inference_mode), (c) the product's encode
  (`OpenClipModel.embed_texts([q])`, which cuts the 77 positions to the query's own length), both on
  a thread of their own as the server encodes (and (c) again on the thread that runs the searches), and the
  other parts of a hybrid search in this process (keyword ranking, index search with re-scoring,
  items_of from vectors to rows, rows of the fused 60: what Similarity.nearest and search do), since
  the JSON carries no timings.
- the text tower's cost (in two fresh processes, after the server has stopped: torch's default OpenMP
  wait policy, and OMP_WAIT_POLICY=PASSIVE) with torch threads 1 and 2, and with dynamic int8
  quantisation of its Linear layers (torch.ao.quantization.quantize_dynamic; the attention's in-projection is not an nn.Linear
  and stays float), with the cosine of the int8 vector to the float one (50 queries). With random
  weights the int8 error is not the real model's (trained CLIP has outlier activations): a figure
  of cost, to be checked on the real weights before adopting it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import warnings
from collections import Counter
from pathlib import Path

from concurrent.futures import ThreadPoolExecutor

import numpy as np

import _common  # noqa: E402  (bench/_common.py: this script's folder is first on sys.path)
CACHE, median, percentile, result_line = _common.CACHE, _common.median, _common.percentile, _common.result_line
from search import CLUSTER_ROWS, CLUSTER_WORD, database  # noqa: E402  (bench/search.py)
from vectors import CHUNK, Mixture  # noqa: E402  (bench/vectors.py: synthetic CLIP-like vectors)

from spellbook.database.connect import connect_readonly  # noqa: E402

FULL_ROWS = 12_096_835
VECTORS_VERSION = 1  # change when the stored vectors would differ
WARMUP = 10
ENCODE_QUERIES = 50  # queries for the thread / int8 figures
BYTES_PER_VECTOR_GUESS = {"int8": 920, "float16": 2_150}  # store bytes a vector at 768 dimensions (measured: 918 and 2,150)
GOAL_P50_MS, GOAL_P99_MS = 100.0, 250.0
# Idle time before each timed step of the query loop: BLAS and OpenMP worker threads spin for a while
# after a call (OpenBLAS ~2^28 cycles), and on 2 cores a step started inside that window, in either
# process, measures the other's spinning threads too.
SETTLE_S = 0.15
WORD = re.compile(r"\w+")


def log(message: str) -> None:
    print(f"# {message}", flush=True)


class Steps:
    """Seconds and peak RSS (this process; children for the database build) of each setup step."""

    def __init__(self):
        self.done: dict[str, dict] = {}

    def run(self, name: str, function, *args):
        _common.reset_peak_rss()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        started = time.perf_counter()
        result, note = function(*args)
        seconds = time.perf_counter() - started
        peak, _ = _common.peak_rss_mb()
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        self.done[name] = {"s": seconds, "peak_mb": peak, "children_peak_mb": children if children > children_before else 0.0, "note": note}
        extra = f", subprocess peak RSS {children:,.0f} MB" if children > children_before else ""
        log(f"{name}: {note} in {seconds:.1f}s (peak RSS {peak:,.0f} MB{extra})")
        return result


# --- what is served -----------------------------------------------------------------------------


def linked_database(rows: int, seed: int):
    """bench/search.py's database, hard-linked into a folder of its own (nothing new beside the original)."""
    source = database(rows, seed)
    folder = CACHE / f"hybrid-{source.stem}"
    folder.mkdir(exist_ok=True)
    link = folder / source.name
    if link.exists() and link.stat().st_ino == source.stat().st_ino:
        return link, f"cached ({source.name}, {_common.database_bytes(source) / 1e9:.2f} GB, hard link)"
    if link.exists():  # the source was rebuilt: what lies beside the old link belongs to the old rows
        shutil.rmtree(folder)
        folder.mkdir()
    os.link(source, link)
    return link, f"linked ({source.name}, {_common.database_bytes(source) / 1e9:.2f} GB)"


class _Identity:
    """What VectorStore.model_record reads of a model (id, fingerprint, dimensions), without loading
    its weights: the fingerprint is the checkpoint's, computed by the product itself."""

    def __init__(self, model, dimensions: int):
        self.model_id, self._fingerprint, self.dimensions = model.model_id, model.fingerprint(), dimensions

    def fingerprint(self) -> str:
        return self._fingerprint


def dimensions_of(model_dir: Path) -> int:
    return int(json.loads((model_dir / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"])


def check_disk(db: Path, rows: int, precision: str) -> None:
    need = rows * BYTES_PER_VECTOR_GUESS[precision] * 1.2 + 2e9
    free = shutil.disk_usage(db.parent).free
    log(f"vector store for {rows:,} rows: about {rows * BYTES_PER_VECTOR_GUESS[precision] / 1e9:.1f} GB expected ({precision}); {free / 1e9:.1f} GB free")
    if free < need:
        raise SystemExit(f"not enough disk for the vector store: {need / 1e9:.1f} GB wanted with a margin, {free / 1e9:.1f} GB free on {db.parent}")


def stored_vectors(db: Path, model_dir: Path, seed: int, precision: str):
    """Image vectors for every training row, stored as `spellbook embed` stores training images."""
    from spellbook.embeddings.models import OpenClipModel
    from spellbook.embeddings.store import VectorStore, vectors_path

    store_path = vectors_path(db)
    marker = db.parent / "hybrid-vectors.json"
    conn = connect_readonly(db)
    rows = conn.execute("SELECT count(*) FROM training_images").fetchone()[0]
    fingerprint_started = time.perf_counter()
    model = OpenClipModel(f"local-dir:{model_dir}", None)  # nothing loaded: only its identity
    identity = _Identity(model, dimensions_of(model_dir))
    fingerprint_s = time.perf_counter() - fingerprint_started
    stamp = {"rows": rows, "seed": seed, "version": VECTORS_VERSION, "fingerprint": identity.fingerprint(), "precision": precision}
    if marker.exists() and store_path.exists() and json.loads(marker.read_text()).get("stamp") == stamp:
        conn.close()
        saved = json.loads(marker.read_text())
        return saved, f"cached ({saved['stored']:,} vectors, {saved['store_bytes'] / 1e9:.2f} GB; fingerprint {identity.fingerprint()} in {fingerprint_s:.1f}s)"
    if marker.exists():
        marker.unlink()
    for stale in [*db.parent.glob(store_path.name + "*"), *db.parent.glob(store_path.stem + ".*.index*")]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    check_disk(db, rows, precision)
    mixture = Mixture(identity.dimensions, seed)
    store = VectorStore(store_path)
    generate_s = put_s = 0.0
    stored, after, chunk = 0, 0, 0
    started = time.perf_counter()
    try:
        record = store.model_record(identity, precision)
        while True:
            items = conn.execute("SELECT id, key FROM training_images WHERE id > ? ORDER BY id LIMIT ?", (after, CHUNK)).fetchall()
            if not items:
                break
            t0 = time.perf_counter()
            made = mixture.images(np.random.default_rng([seed, 1, chunk]), CHUNK)[: len(items)]  # bench/vectors.py's chunk
            t1 = time.perf_counter()
            store.put(record, "training_image", [(item_id, key) for item_id, key in items], {key: made[i] for i, (_, key) in enumerate(items)})
            t2 = time.perf_counter()
            generate_s, put_s = generate_s + t1 - t0, put_s + t2 - t1
            stored += len(items)
            after, chunk = items[-1][0], chunk + 1
            if chunk % 10 == 0:
                log(f"stored {stored:,} / {rows:,} vectors ({time.perf_counter() - started:.0f}s)")
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
        conn.close()
    store_bytes = sum(p.stat().st_size for p in db.parent.glob(store_path.name + "*"))
    saved = {"stamp": stamp, "stored": stored, "store_bytes": store_bytes, "generate_s": generate_s, "put_s": put_s, "model_record": record.fingerprint}
    marker.write_text(json.dumps(saved))
    return saved, (f"built: {stored:,} vectors ({precision}), generated in {generate_s:.1f}s, stored (VectorStore.put) in {put_s:.1f}s "
                   f"({stored / put_s:,.0f}/s), {store_bytes / 1e9:.2f} GB ({store_bytes / stored:,.0f} bytes a vector)")


def indexes(db: Path):
    from spellbook.embeddings.indexing import build_indexes, index_path
    from spellbook.embeddings.store import VectorStore

    summaries = build_indexes(db)
    store = VectorStore.beside(db, readonly=True)
    try:
        record = store.only_model()
        path = index_path(db, record, "training_image")
    finally:
        store.close()
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    note = "; ".join(s.report() for s in summaries)
    return {"kind": summaries[0].kind, "bytes": size, "total": summaries[0].total}, f"{note} ({size / 1e6:,.1f} MB)"


# --- the queries --------------------------------------------------------------------------------


def query_key(text: str) -> str:
    """What the server's query cache keys on (spellbook.queries.similar.Similarity.text_vector)."""
    return " ".join(text.split()).lower()


def draw_queries(db: Path, count: int, seed: int, sample: int = 20_000) -> list[tuple[str, str]]:
    """(kind, query), all distinct by the server's cache key: artist names, frequent words, rare words,
    quoted two-word phrases and runs of 2-4 words from captions, in the database's own words."""
    conn = connect_readonly(db)
    rng = random.Random(seed)
    try:
        top = conn.execute("SELECT max(id) FROM training_images").fetchone()[0]
        ids = rng.sample(range(1, top + 1), min(sample, top))
        captions = []
        for start in range(0, len(ids), 900):
            part = ids[start : start + 900]
            captions += [c for (c,) in conn.execute(f"SELECT caption FROM training_images WHERE id IN ({','.join('?' * len(part))})", part)]
        artists = [n for (n,) in conn.execute("SELECT name FROM artists WHERE training_count > 0 ORDER BY training_count DESC") if '"' not in n]
    finally:
        conn.close()
    tokenised = [WORD.findall(c.lower()) for c in captions]
    counts = Counter(w for tokens in tokenised for w in set(tokens))
    alpha = [(w, n) for w, n in counts.most_common() if w.isalpha() and len(w) >= 2]
    pools = {
        "artist": artists,
        "frequent": [w for w, _ in alpha[:300]],
        "rare": [w for w, n in alpha if n == 1 and len(w) >= 4] or [w for w, _ in alpha[-500:]],
    }
    texts = [tokens for tokens in tokenised if len(tokens) >= 4]
    shares = [("artist", 0.25), ("frequent", 0.2), ("rare", 0.2), ("phrase", 0.15), ("words", 0.2)]
    out, seen = [], set()
    for kind, share in shares:
        want, tries = max(1, round(count * share)), 0
        while want and tries < 100 * count:
            tries += 1
            if kind in pools:
                q = rng.choice(pools[kind])
            else:
                tokens = rng.choice(texts)
                n = 2 if kind == "phrase" else rng.randint(2, 4)
                i = rng.randrange(len(tokens) - n + 1)
                q = " ".join(tokens[i : i + n])
                q = f'"{q}"' if kind == "phrase" else q
            if query_key(q) in seen:
                continue
            seen.add(query_key(q))
            out.append((kind, q))
            want -= 1
    rng.shuffle(out)
    return out[:count] if len(out) >= count else out


# --- the server ---------------------------------------------------------------------------------


class Server(_common.ServedProcess):
    """`spellbook serve DB --port P --model local-dir:PATH` in its own process group, output to a file."""

    def __init__(self, db: Path, model_dir: Path, start_timeout: float, extra_env: dict[str, str] | None = None):
        port = _common.free_port()
        command = [str(_common.BIN / "spellbook"), "serve", str(db), "--port", str(port), "--model", f"local-dir:{model_dir}"]
        env = {k: v for k, v in os.environ.items() if k not in ("SPELLBOOK_MODEL", "SPELLBOOK_PRETRAINED", "SPELLBOOK_DEVICE", "SPELLBOOK_RUNNER")}
        env.update(PYTHONUNBUFFERED="1", **(extra_env or {}))
        try:
            super().__init__(command, port, env, start_timeout)
        except RuntimeError as error:
            raise SystemExit(str(error)) from None

    def memory_mb(self) -> tuple[float, float]:
        return _common.peak_rss_mb(self.process.pid)  # `spellbook serve` execs datasette: one process


def ask(client, q: str, mode: str | None = None) -> tuple[float, dict | None, str]:
    """(ms, JSON, problem or ''): one /-/similar.json request, sent to body read."""
    args = {"q": q} if mode is None else {"q": q, "mode": mode}
    started = time.perf_counter()
    response = client.get("/-/similar.json?" + urllib.parse.urlencode(args))
    body = response.content
    ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return ms, None, f"HTTP {response.status_code}: {body[:300].decode(errors='replace')}"
    data = json.loads(body)
    if data.get("similarity_unavailable") is not None:
        return ms, data, f"similarity_unavailable: {data['similarity_unavailable']}"
    if mode is None and not any(row.get("similarity") is not None for row in data.get("rows", [])):
        return ms, data, f"no row found by similarity ({len(data.get('rows', []))} rows)"
    return ms, data, ""


def stats(values: list[float]) -> str:
    return f"p50 {median(values):7.1f} ms  p99 {percentile(values, 99):7.1f} ms  max {max(values, default=float('nan')):7.1f} ms"


# --- the text tower -----------------------------------------------------------------------------


def timed_ms(function) -> float:
    started = time.perf_counter()
    function()
    return (time.perf_counter() - started) * 1000


def encode_figures(ours, queries: list[str]) -> dict:
    """The text tower per query: torch threads 1 and 2, float and dynamic int8 (nn.Linear), plain
    open_clip (77 positions) and the product's path (the query's own length)."""
    import torch

    from spellbook.embeddings.models import _encode_text

    model, _, tokenizer = ours.load()
    threads_before = torch.get_num_threads()

    def plain(q):
        with torch.inference_mode():
            return model.encode_text(tokenizer([q]))

    def product(q):
        return ours.embed_texts([q])

    figures = {}
    float_vectors = np.stack([product(q)[0] for q in queries])
    started = time.perf_counter()
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated (for torchao's quantize_): said in the output
        warnings.simplefilter("ignore")
        quantised = torch.ao.quantization.quantize_dynamic(model.transformer, {torch.nn.Linear}, dtype=torch.qint8)
    # open_clip asks the first block's c_fc.weight for its dtype, a method on a quantised Linear:
    # encode_text (and the product's _encode_text) fail with AttributeError without this.
    quantised.get_cast_dtype = lambda: torch.float32
    quantise_s = time.perf_counter() - started
    linear = sum(1 for m in model.transformer.modules() if isinstance(m, torch.nn.Linear))
    original = model.transformer
    try:
        for precision in ("float", "int8"):
            model.transformer = original if precision == "float" else quantised
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for _ in range(3):  # warm this configuration
                    plain(queries[0]), product(queries[0])
                plain_ms, product_ms = [], []
                for i, q in enumerate(queries):  # alternate which goes first
                    if i % 2:
                        plain_ms.append(timed_ms(lambda: plain(q)))
                        product_ms.append(timed_ms(lambda: product(q)))
                    else:
                        product_ms.append(timed_ms(lambda: product(q)))
                        plain_ms.append(timed_ms(lambda: plain(q)))
                figures[f"{precision}_t{threads}_plain_ms"] = median(plain_ms)
                figures[f"{precision}_t{threads}_product_ms"] = median(product_ms)
                print(f"  text tower {precision:5s} threads {threads}: plain encode_text p50 {median(plain_ms):6.1f} ms, "
                      f"product embed_texts p50 {median(product_ms):6.1f} ms", flush=True)
            if precision == "int8":
                torch.set_num_threads(threads_before)
                int8_vectors = np.stack([product(q)[0] for q in queries])
                cosines = np.einsum("ij,ij->i", float_vectors, int8_vectors)
                figures["int8_cosine_mean"] = float(cosines.mean())
                figures["int8_cosine_min"] = float(cosines.min())
    finally:
        model.transformer = original
        torch.set_num_threads(threads_before)
    quantised_linear = sum(1 for m in quantised.modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__)
    print(f"  int8: quantize_dynamic of the text transformer in {quantise_s:.1f}s ({quantised_linear} of {linear} nn.Linear quantised; "
          f"attention in-projections are not nn.Linear and stay float; torch.ao.quantization is deprecated in torch {torch.__version__}); "
          f"cosine int8 vs float over {len(queries)} queries: mean {figures['int8_cosine_mean']:.4f}, min {figures['int8_cosine_min']:.4f} (random weights)", flush=True)
    assert np.allclose(product(queries[0])[0], float_vectors[0], atol=1e-5), "the float model was not restored"
    return figures


def encode_child(model_dir: Path, queries: list[str], env: dict[str, str]) -> dict:
    """encode_figures in a fresh process with these environment variables (OpenMP reads them once, at start)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"model_dir": str(model_dir), "queries": queries}, handle)
    try:
        done = subprocess.run([sys.executable, __file__, "--encode-only", handle.name], env={**os.environ, **env}, capture_output=True, text=True)
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        raise SystemExit(f"the encode child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    lines = done.stdout.splitlines()
    print("\n".join(line for line in lines if not line.startswith("ENCODE ")), flush=True)
    return json.loads(next(line for line in lines if line.startswith("ENCODE "))[len("ENCODE "):])


def encode_only(path: str) -> None:
    from spellbook.embeddings.models import get_model

    job = json.loads(Path(path).read_text())
    ours = get_model(f"local-dir:{job['model_dir']}", None)
    ours.load()
    print("ENCODE " + json.dumps(encode_figures(ours, job["queries"])), flush=True)


# --- main ---------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=FULL_ROWS, help="synthetic training rows (bench/search.py's database; +10,000 clustered)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default="ViT-L-14", help="open_clip architecture (random weights)")
    parser.add_argument("--precision", default="float16", choices=["int8", "float16"], help="the vector store's")
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server only (e.g. OMP_NUM_THREADS=1, OMP_WAIT_POLICY=PASSIVE); repeatable")
    parser.add_argument("--encode-only", help=argparse.SUPPRESS)  # the child process of encode_child
    args = parser.parse_args()
    if args.encode_only:
        return encode_only(args.encode_only)
    server_env = dict(item.split("=", 1) for item in args.server_env)
    total_started = time.perf_counter()
    import torch

    from spellbook.embeddings.models import get_model
    from spellbook.queries import similar
    from spellbook.queries.search import TRAINING

    log(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    steps = Steps()
    db = steps.run("database", linked_database, args.rows, args.seed)
    model_dir = steps.run(f"random-weights {args.model} checkpoint", _common.random_clip_checkpoint, args.model, args.seed)
    made = steps.run(f"vectors ({args.precision})", stored_vectors, db, model_dir, args.seed, args.precision)
    index = steps.run("index (build_indexes)", indexes, db)
    picked = steps.run("queries", lambda: (draw_queries(db, args.queries + WARMUP, args.seed), "drawn"))
    warmup, picked = picked[:WARMUP], picked[WARMUP:]
    log(f"{len(picked)} queries: " + ", ".join(f"{k} {n}" for k, n in Counter(k for k, _ in picked).items()) + "; e.g. "
        + ", ".join(repr(q) for _, q in picked[:6]))

    # This process: the same checkpoint through the product (one model instance for (b), (c) and the parts).
    started = time.perf_counter()
    ours = get_model(f"local-dir:{model_dir}", None)
    ours.load()
    sim = similar.Similarity(db, f"local-dir:{model_dir}", None)
    sim.record()
    steps.done["model load (this process)"] = {"s": time.perf_counter() - started, "peak_mb": _common.peak_rss_mb()[0], "children_peak_mb": 0, "note": "loaded"}
    log(f"model load in this process (fingerprint + weights): {steps.done['model load (this process)']['s']:.1f}s, RSS {_common.peak_rss_mb()[1]:,.0f} MB")
    model, _, tokenizer = ours.load()
    conn = connect_readonly(db)

    import httpx

    server = None
    hybrid_ms, keywords_ms, repeat_ms, plain_ms, product_ms, product_main_ms = [], [], [], [], [], []
    encoder = ThreadPoolExecutor(1)

    def plain_encode(q):
        with torch.inference_mode():
            return model.encode_text(tokenizer([q]))

    encoder.submit(plain_encode, "warm").result()
    parts = {"keyword ranking": [], "index search + re-score": [], "items_of (vector -> rows)": [], "rows of the fused 60": []}
    by_kind: dict[str, list[float]] = {}
    try:
        started = time.perf_counter()
        server = Server(db, model_dir, args.start_timeout, server_env)
        server_start_s = time.perf_counter() - started
        log(f"serving: {' '.join(f'{k}={v}' for k, v in server_env.items())}{' ' if server_env else ''}{' '.join(server.command)}; answering in {server_start_s:.1f}s, RSS {server.memory_mb()[1]:,.0f} MB")
        with httpx.Client(base_url=server.url, timeout=120) as client:
            warm, keys, warm_failures = [], None, 0
            for n, (_, q) in enumerate(warmup):
                ms, data, problem = ask(client, q)
                warm.append(ms)
                warm_failures += bool(problem)
                if problem:
                    log(f"warm-up query {n + 1} {q!r}: {problem} after {ms:,.0f} ms (not counted)")
                if n == 0:
                    first_problem = problem
                    log(f"first hybrid request (the server loads the model: fingerprint + weights): {ms:,.0f} ms, {'failed' if problem else 'ok'}")
                if keys is None and data is not None and not problem:
                    keys = sorted(data)
                    log(f"JSON keys: {keys} (no timings)")
                ask(client, q, "keywords")
            first_request_ms = warm[0]
            log(f"warm-up: {len(warm)} hybrid queries, then {', '.join(f'{ms:.0f}' for ms in warm[1:])} ms; server RSS {server.memory_mb()[1]:,.0f} MB")
            _common.reset_peak_rss(server.process.pid)
            for n, (kind, q) in enumerate(picked):
                for side in (("hybrid", "keywords") if n % 2 == 0 else ("keywords", "hybrid")):
                    time.sleep(SETTLE_S)
                    ms, data, problem = ask(client, q, None if side == "hybrid" else "keywords")
                    if problem:
                        raise SystemExit(f"{side} query {q!r}: {problem}\n{server.output()[-3000:]}")
                    (hybrid_ms if side == "hybrid" else keywords_ms).append(ms)
                    if side == "hybrid":
                        by_kind.setdefault(kind, []).append(ms)
                # (b) and (c) in this process, alternating, on a thread of their own (the server
                # encodes on an asyncio worker thread, not the one that searches); (c) once more on
                # the main thread, which also runs the searches below; then the other parts.
                holder = {}
                for which in (("plain", "product", "main") if n % 2 == 0 else ("main", "product", "plain")):
                    time.sleep(SETTLE_S)
                    if which == "plain":
                        plain_ms.append(encoder.submit(lambda: timed_ms(lambda: plain_encode(q))).result())
                    elif which == "product":
                        product_ms.append(encoder.submit(lambda: timed_ms(lambda: holder.setdefault("v", ours.embed_texts([q])[0]))).result())
                    else:
                        product_main_ms.append(timed_ms(lambda: ours.embed_texts([q])))
                vector = holder["v"]
                holder = {}
                time.sleep(SETTLE_S)
                parts["keyword ranking"].append(timed_ms(lambda: holder.setdefault("k", similar.keyword_ranking(conn, TRAINING, q, 100))))
                # sim.nearest(collection, vector, k=100) in its two steps
                record = sim.record()
                parts["index search + re-score"].append(timed_ms(lambda: holder.setdefault("found", sim._search(record, "training_image", vector, 105))))
                found_ids, found_scores = holder["found"]
                parts["items_of (vector -> rows)"].append(timed_ms(lambda: holder.setdefault("items", sim.store().items_of("training_image", found_ids))))
                nearest = [similar.Hit(item, float(score)) for vector_id, score in zip(found_ids.tolist(), found_scores.tolist())
                           for item in holder["items"].get(vector_id, [])][:100]
                hits = similar.fuse(holder["k"], nearest, 60)
                parts["rows of the fused 60"].append(timed_ms(lambda: similar.rows_for(conn, TRAINING, hits, q)))
            hybrid_peak_mb, hybrid_rss_mb = server.memory_mb()
            for kind, q in picked:  # the same queries again: the server's query cache answers the encoding
                time.sleep(SETTLE_S)
                ms, data, problem = ask(client, q)
                if problem:
                    raise SystemExit(f"repeated query {q!r}: {problem}")
                repeat_ms.append(ms)
    finally:
        if server is not None:
            server.close()
        conn.close()
        encoder.shutdown()

    print(f"\nhybrid, {len(picked)} distinct queries, {made['stored']:,} vectors ({args.precision}, {index['kind']} index), one request at a time:")
    print(f"  hybrid (cold: each query encoded)  {stats(hybrid_ms)}")
    for kind, values in by_kind.items():
        print(f"    {kind:9s} ({len(values):3d})               {stats(values)}")
    print(f"  hybrid repeated (query cache)      {stats(repeat_ms)}")
    print(f"  (a) keywords only (mode=keywords)  {stats(keywords_ms)}")
    print(f"  (b) plain encode_text, in-process  {stats(plain_ms)}")
    print(f"  (c) product embed_texts, in-proc.  {stats(product_ms)}")
    print(f"      (c) on the searching thread    {stats(product_main_ms)}")
    for name, values in parts.items():
        print(f"      {name:30s} {stats(values)}")
    in_process = median(product_ms) + sum(median(v) for v in parts.values())
    ratio = median(hybrid_ms) / (median(keywords_ms) + median(plain_ms))
    print(f"  encoding inside the server, hybrid p50 - repeated p50: {median(hybrid_ms) - median(repeat_ms):.1f} ms")
    print(f"  sum of the in-process p50s (encode + parts) {in_process:.1f} ms against hybrid p50 {median(hybrid_ms):.1f} ms over HTTP")
    print(f"  ratio hybrid p50 / (keywords p50 + plain encode p50) = {median(hybrid_ms):.1f} / ({median(keywords_ms):.1f} + {median(plain_ms):.1f}) = {ratio:.2f}")
    print(f"  server: first hybrid request {first_request_ms:,.0f} ms (model load); peak RSS over the measured run {hybrid_peak_mb:,.0f} MB")

    encode_queries = [q for _, q in picked[:ENCODE_QUERIES]]
    from spellbook.embeddings.models import forget_models

    del ours, model, sim  # the children load their own
    forget_models()
    gc.collect()
    print(f"\ntext tower, {len(encode_queries)} queries, one at a time, a fresh process with torch's defaults (OpenMP {os.environ.get('OMP_WAIT_POLICY', 'default wait policy')}):", flush=True)
    encode = encode_child(model_dir, encode_queries, {})
    print("text tower, a fresh process with OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep instead of spinning between operations):", flush=True)
    passive = encode_child(model_dir, encode_queries, {"OMP_WAIT_POLICY": "PASSIVE"})
    encode.update({f"passive_{k}": v for k, v in passive.items() if not k.startswith("int8_cosine")})

    print("\nsetup: " + "; ".join(f"{name} {d['s']:.1f}s, peak RSS {max(d['peak_mb'], d['children_peak_mb']):,.0f} MB ({d['note'].split(' (')[0].split(':')[0]})"
                              for name, d in steps.done.items()))
    if "built" in steps.done[f"vectors ({args.precision})"]["note"] and made["stored"] < FULL_ROWS:
        full = FULL_ROWS + CLUSTER_ROWS
        scale = full / made["stored"]
        print(f"linear estimate at {full:,} vectors: generate {made['generate_s'] * scale / 60:.0f} min, store {made['put_s'] * scale / 60:.0f} min "
              f"(if the put rate held; the store's unique index on a random hash grows past the page cache), "
              f"store {made['store_bytes'] * scale / 1e9:.1f} GB on disk")
    total = time.perf_counter() - total_started
    print(f"total {total:.0f}s; load average at the end {os.getloadavg()[0]:.1f} (1 min), {os.getloadavg()[2]:.1f} (15 min) on {os.cpu_count()} CPUs")
    print(
        result_line(
            rows=args.rows,
            vectors=made["stored"],
            precision=args.precision,
            index=index["kind"],
            model=args.model,
            queries=len(picked),
            hybrid_p50_ms=median(hybrid_ms),
            hybrid_p99_ms=percentile(hybrid_ms, 99),
            repeat_p50_ms=median(repeat_ms),
            repeat_p99_ms=percentile(repeat_ms, 99),
            keywords_p50_ms=median(keywords_ms),
            keywords_p99_ms=percentile(keywords_ms, 99),
            plain_encode_p50_ms=median(plain_ms),
            product_encode_p50_ms=median(product_ms),
            product_encode_main_thread_p50_ms=median(product_main_ms),
            keyword_ranking_p50_ms=median(parts["keyword ranking"]),
            index_search_p50_ms=median(parts["index search + re-score"]),
            items_of_p50_ms=median(parts["items_of (vector -> rows)"]),
            rows_p50_ms=median(parts["rows of the fused 60"]),
            hybrid_vs_keywords_plus_encode=ratio,
            goal_p50=median(hybrid_ms) < GOAL_P50_MS,
            goal_p99=percentile(hybrid_ms, 99) < GOAL_P99_MS,
            first_request_ms=first_request_ms,
            first_request_ok=not first_problem,
            warmup_failures=warm_failures,
            server_peak_rss_mb=hybrid_peak_mb,
            **encode,
            load_avg=os.getloadavg()[2],
            total_s=total,
        )
    )


if __name__ == "__main__":
    main()
