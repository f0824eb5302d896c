"""Load test of the published configuration: N requests at concurrency C over a mix of Spellbook's
pages, and, as the baseline in the same run against the same server, the same count at the same
concurrency over Datasette's stock pages doing the nearest equivalent queries.

    .venv/bin/python bench/load.py                 # 12,096,835 training rows + 2M prompts, 1M vectors, 10,000 requests at 50
    .venv/bin/python bench/load.py --rows 20000 --prompt-rows 5000 --vector-rows 5000 --requests 500

What is served (built once, cached in bench/cache/load-<database>/):
- the training + prompts database of bench/prompts.py (`combined_database`: bench/search.py's
  synthetic training rows plus its 10,000 clustered "zorblax" rows, then --prompt-rows synthetic
  DiffusionDB rows), published by `spellbook.publish.published_copy` with the inspect file, as
  `spellbook publish docker` builds its context;
- beside it, the vector store `spellbook embed` fills: a model record for a random-weights open_clip
  ViT-B-32 saved as a local checkpoint folder (bench/cache/clip-ViT-B-32-random-<seed>/, loaded by
  the server as SPELLBOOK_MODEL=local-dir:PATH: the real architecture, so encoding a text query
  costs what it really costs), and image vectors (bench/vectors.py's Mixture, 512 dimensions) for
  the first --vector-rows training rows only, keyed as the store keys training images (the row's
  stable key); then `build_indexes`.

How it is served: publish.serve_command() with publish.hosted_config() for the published copy (the
command the Dockerfile runs, settings as flags on Datasette 0.65), bound to 127.0.0.1 instead of
0.0.0.0 on a free port, with SPELLBOOK_MODEL set; a subprocess, always stopped at the end.

The mix (drawn with --seed; the stock run gets the same draws, mapped to stock pages):

    kind          share  Spellbook page                         stock page(s)
    search         25%   /-/search?q= (some &domain=)           /DB/training_images?_search= (&domain_id=)
    prompts        15%   /-/prompts?q=                          /DB/generations?_search=
    domains        10%   /-/domains?q= (page or the fragment    /DB/training_images?_search=&_facet=domain_id
                         the search page loads; some no q)      (no q: /DB/domains?_sort_desc=image_count)
    artist         12%   /-/artist/NAME                         in turn: training_images?_search="NAME",
                                                                generations?_search="NAME", the artists row page
    keyword        12%   /-/keyword/KEYWORD                     in turn: generation_keywords?keyword_id=,
                                                                the keywords row page, keywords?_sort_desc=prompt_count
    similar_image  20%   /-/similar?image=ID (more like this)   /DB/training_images/ID (the row page)
    similar_text    6%   /-/similar?q= (hybrid, encoded text)   /DB/training_images?_search=

Query words come from the database's own vocabulary (20,000 captions and prompts at random ids):
the most frequent words, middling and rare ones, two words, phrases, prefixes, the clustered word;
artist names from its artists table, keywords from its keywords table (the most used and any).
Canned queries stay on in the published configuration but arbitrary SQL is off, so the baseline
is table and row pages.

Each request: status and latency (sent to body read) on an httpx.AsyncClient (HTTP/1.1, as many
connections as workers). An error is anything but a 200, a timeout (--timeout, 30 s), a transport
error, or a 200 that is an error page (Spellbook's error message or "not available" note). A stock
table page whose facet timed out is counted apart ("partial"). ~100 warm-up requests of each mix
are not counted. Each run has a deadline (--deadline); requests not sent by then are reported.
Server memory: VmHWM of the server's process tree, its peak reset (clear_refs) before each run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import numpy as np

import _common  # noqa: E402  (bench/_common.py: this script's folder is first on sys.path)
import prompts as prompts_bench  # noqa: E402  (bench/prompts.py: combined_database)
from search import CLUSTER_WORD  # noqa: E402  (bench/search.py: the word only its last file has)
from vectors import Mixture  # noqa: E402  (bench/vectors.py: synthetic CLIP-like vectors)

from spellbook.database.connect import connect_readonly  # noqa: E402

FULL_ROWS = 12_096_835
FULL_PROMPTS = 2_000_000
MODEL = "ViT-B-32"
DIMENSIONS = 512
VECTORS_VERSION = 1  # change when the stored vectors would differ
VECTOR_BATCH = 50_000
MIX = {"search": 0.25, "prompts": 0.15, "domains": 0.10, "artist": 0.12, "keyword": 0.12, "similar_image": 0.20, "similar_text": 0.06}
ERROR_MARKERS = (b'class="sb-error-message', b'class="sb-unavailable"')
PARTIAL_MARKER = b'class="facets-timed-out"'


def log(message: str) -> None:
    print(f"# {message}", flush=True)


class Steps:
    """Seconds per setup step, printed at the end (so that the full run's setup can be estimated)."""

    def __init__(self):
        self.seconds: dict[str, tuple[float, str]] = {}

    def run(self, name: str, function, *args):
        started = time.perf_counter()
        result, note = function(*args)
        self.seconds[name] = (time.perf_counter() - started, note)
        log(f"{name}: {note} in {self.seconds[name][0]:.1f}s")
        return result


# --- what is served -----------------------------------------------------------------------------


def combined(rows: int, prompt_rows: int, seed: int):
    from spellbook.ingest.synth import GENERATOR_VERSION

    parquet = _common.synthetic("prompts", prompt_rows, seed)
    expected = _common.CACHE / f"reports-laion-{rows}-{seed}-g{GENERATOR_VERSION.rsplit('/', 1)[-1]}-{parquet.stem}.db"
    cached = expected.exists()
    db = prompts_bench.combined_database(rows, parquet, prompt_rows, seed)
    return db, f"{'cached' if cached else 'built'} ({db.name}, {_common.database_bytes(db) / 1e9:.2f} GB)"


def published(source: Path, fresh: bool):
    """bench/cache/load-<source stem>/<source name>: the published copy and its inspect file,
    rebuilt when the source changed (or with --fresh)."""
    from spellbook.publish import published_copy

    folder = _common.CACHE / f"load-{source.stem}"
    target = folder / source.name
    marker = folder / "published.json"
    stamp = {"source": source.name, "size": source.stat().st_size, "mtime_ns": source.stat().st_mtime_ns}
    if not fresh and marker.exists() and target.exists() and json.loads(marker.read_text()) == stamp:
        return target, "cached"
    if marker.exists():
        marker.unlink()
    vectors_marker = folder / "vectors.json"  # published_copy replaces the vectors beside the copy too
    if vectors_marker.exists():
        vectors_marker.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    copy = published_copy(source, target)
    inspect = subprocess.run([sys.executable, "-m", "datasette", "inspect", target.name, "--inspect-file", "inspect.json"], cwd=folder, capture_output=True, text=True)
    if inspect.returncode != 0:
        raise SystemExit(f"datasette inspect failed: {inspect.stderr[-2000:]}")
    marker.write_text(json.dumps(stamp))
    return target, f"built ({', '.join(f'{t} {n:,}' for t, n in copy.rows.items())})"


def embedded(db: Path, model_dir: Path, vector_rows: int, seed: int):
    """Image vectors for the first vector_rows training rows, in the store beside the published
    copy, under the checkpoint's model record (as `spellbook embed` stores them); then the index."""
    from spellbook.embeddings.indexing import build_indexes
    from spellbook.embeddings.models import get_model
    from spellbook.embeddings.store import DEFAULT_PRECISION, VectorStore, vectors_path

    marker = db.parent / "vectors.json"
    model = get_model(f"local-dir:{model_dir}", None)
    stamp = {"rows": vector_rows, "seed": seed, "version": VECTORS_VERSION, "fingerprint": model.fingerprint()}
    store_path = vectors_path(db)
    if marker.exists() and store_path.exists():
        made = json.loads(marker.read_text())
        if {k: made.get(k) for k in stamp} == stamp:
            return made, "cached"
    if marker.exists():
        marker.unlink()
    for stale in [*db.parent.glob(store_path.name + "*"), *db.parent.glob(store_path.stem + ".*.index*")]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    mixture = Mixture(DIMENSIONS, seed)
    conn = connect_readonly(db)
    store = VectorStore(store_path)
    stored = 0
    started = time.perf_counter()
    try:
        record = store.model_record(model, DEFAULT_PRECISION)
        after, chunk = 0, 0
        while stored < vector_rows:
            rows = conn.execute("SELECT id, key FROM training_images WHERE id > ? ORDER BY id LIMIT ?", (after, min(VECTOR_BATCH, vector_rows - stored))).fetchall()
            if not rows:
                break
            made = mixture.images(np.random.default_rng([seed, 7, chunk]), len(rows))
            store.put(record, "training_image", [(item_id, key) for item_id, key in rows], {key: made[i] for i, (_, key) in enumerate(rows)})
            stored += len(rows)
            after, chunk = rows[-1][0], chunk + 1
        put_seconds = time.perf_counter() - started
    finally:
        store.close()
        conn.close()
    started = time.perf_counter()
    summaries = build_indexes(db)
    index_seconds = time.perf_counter() - started
    store = VectorStore(store_path)  # as published_copy leaves it: no WAL, so that a read-only open needs nothing beside it
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.conn.execute("PRAGMA journal_mode=DELETE")
    store.close()
    stamp.update(stored=stored, max_id=after, index="; ".join(s.report() for s in summaries), put_s=round(put_seconds, 1), index_s=round(index_seconds, 1))
    marker.write_text(json.dumps(stamp))
    return stamp, f"built: {stored:,} vectors stored in {put_seconds:.1f}s, {stamp['index']} in {index_seconds:.1f}s"


# --- the server ---------------------------------------------------------------------------------


class Server(_common.ServedProcess):
    """The published serve command on 127.0.0.1:PORT, in its own process group, its output in a file."""

    def __init__(self, db: Path, model_dir: Path, start_timeout: float):
        from spellbook.publish import hosted_config, serve_command
        from spellbook.site import datasette_1, merged_metadata, site_metadata

        folder = db.parent
        config = hosted_config([db.stem])
        if datasette_1():
            import yaml

            (folder / "metadata.json").write_text(json.dumps(site_metadata(), indent=1))
            (folder / "datasette.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        else:
            (folder / "metadata.json").write_text(json.dumps(merged_metadata(site_metadata(), config), indent=1))
        port = _common.free_port()
        command = serve_command([db.name], config, port=str(port))
        host = command.index("--host")
        assert command[host + 1] == "0.0.0.0", command
        command[host + 1] = "127.0.0.1"  # the only change: loopback, not every interface
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "SPELLBOOK_LOCAL_IMAGES", "SPELLBOOK_RUNNER", "SPELLBOOK_PRETRAINED")}
        env.update(PATH=f"{_common.BIN}:{env.get('PATH', '')}", PYTHONUNBUFFERED="1", SPELLBOOK_MODEL=f"local-dir:{model_dir}")
        super().__init__(command, port, env, start_timeout, cwd=folder)

    def pids(self) -> list[int]:
        """The server and its children."""
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    todo.extend(int(c) for c in (task / "children").read_text().split())
                except OSError:
                    pass
        return found

    def memory_mb(self) -> tuple[float, float]:
        """(peak RSS since the last reset, RSS now) summed over the process tree, in MB."""
        hwm = rss = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            except OSError:
                pass
        return hwm / 1024, rss / 1024

    def reset_peak(self) -> None:
        for pid in self.pids():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            except OSError:
                pass

    def cpu_seconds(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except OSError:
                pass
        return total / ticks


# --- the mix ------------------------------------------------------------------------------------


WORD = re.compile(r"\w+")


class Vocabulary:
    """What the requests are drawn from: words of the database's own captions and prompts, its
    artists and keywords, its biggest domains, and the ids that have vectors."""

    def __init__(self, db: Path, vector_rows: int, seed: int, sample: int = 20_000):
        conn = connect_readonly(db)
        rng = random.Random(seed)
        try:
            self.training = self._words(conn, "training_images", "caption", sample, rng)
            self.prompts = self._words(conn, "generations", "prompt", sample, rng)
            self.artists = [name for (name,) in conn.execute(
                "SELECT name FROM artists WHERE training_count > 0 OR prompt_count > 0 ORDER BY training_count + prompt_count DESC") if '"' not in name]
            self.keywords = conn.execute("SELECT id, keyword FROM keywords ORDER BY prompt_count DESC, id").fetchall()
            self.domains = conn.execute("SELECT id, domain FROM domains ORDER BY image_count DESC LIMIT 20").fetchall()
            self.vector_ids = np.array([i for (i,) in conn.execute("SELECT id FROM training_images ORDER BY id LIMIT ?", (vector_rows,))], dtype=np.int64)
        finally:
            conn.close()
        if not (self.artists and self.keywords and self.domains and len(self.vector_ids)):
            raise SystemExit(f"{db.name}: no artists, keywords, domains or vectors to draw requests from")

    @staticmethod
    def _words(conn, table: str, column: str, sample: int, rng: random.Random) -> dict:
        top = conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0] or 0
        ids = rng.sample(range(1, top + 1), min(sample, top))
        texts = []
        for start in range(0, len(ids), 900):
            part = ids[start : start + 900]
            texts += [t for (t,) in conn.execute(f"SELECT {column} FROM {table} WHERE id IN ({','.join('?' * len(part))})", part)]
        tokenised = [[w for w in WORD.findall(t.lower())] for t in texts]
        counts = Counter(w for tokens in tokenised for w in set(tokens))
        alpha = [(w, n) for w, n in counts.most_common() if w.isalpha() and len(w) >= 2]
        return {
            "frequent": [w for w, _ in alpha[:40]],
            "middling": [w for w, _ in alpha[100:3000]] or [w for w, _ in alpha],
            "rare": [w for w, n in alpha if n == 1 and len(w) >= 4] or [w for w, _ in alpha[-200:]],
            "prefixes": sorted({w[:4] + "*" for w, _ in alpha[100:1000] if len(w) >= 5}),
            "texts": [tokens for tokens in tokenised if len(tokens) >= 2],
        }

    def query(self, rng: random.Random, side: str) -> tuple[str, str]:
        """(shape, query) from one side's words."""
        words = self.training if side == "training" else self.prompts
        roll = rng.random()
        if roll < 0.25:
            return "frequent", rng.choice(words["frequent"])
        if roll < 0.50:
            return "middling", rng.choice(words["middling"])
        if roll < 0.62:
            return "rare", rng.choice(words["rare"])
        if roll < 0.75:
            return "two words", f"{rng.choice(words['middling'])} {rng.choice(words['frequent'])}"
        if roll < 0.87:
            tokens = rng.choice(words["texts"])
            i = rng.randrange(len(tokens) - 1)
            return "phrase", f'"{tokens[i]} {tokens[i + 1]}"'
        if roll < 0.94 or side != "training":
            return "prefix", rng.choice(words["prefixes"])
        return "clustered", rng.choice([CLUSTER_WORD, f"{CLUSTER_WORD} {rng.choice(words['frequent'])}", CLUSTER_WORD[:5] + "*"])

    def artist(self, rng: random.Random) -> str:
        return rng.choice(self.artists[:50]) if rng.random() < 0.5 else rng.choice(self.artists)

    def keyword(self, rng: random.Random) -> tuple[int, str]:
        return rng.choice(self.keywords[:100]) if rng.random() < 0.5 else rng.choice(self.keywords)


def draw(vocabulary: Vocabulary, db_name: str, count: int, seed: int) -> list[tuple[str, str, str]]:
    """(kind, Spellbook path, stock path) for each request, from the same draws."""
    from datasette.utils import tilde_encode

    rng = random.Random(seed)
    kinds, weights = list(MIX), list(MIX.values())
    quote = lambda text: urllib.parse.quote(text, safe="")  # noqa: E731
    table = f"/{db_name}/training_images"
    out = []
    for n in range(count):
        kind = rng.choices(kinds, weights)[0]
        if kind == "search":
            _, q = vocabulary.query(rng, "training")
            ours, stock = {"q": q}, {"_search": q}
            if rng.random() < 0.1:
                domain_id, domain = rng.choice(vocabulary.domains)
                ours["domain"], stock["domain_id"] = domain, domain_id
            paths = ("/-/search?" + urllib.parse.urlencode(ours), f"{table}?" + urllib.parse.urlencode(stock))
        elif kind == "prompts":
            _, q = vocabulary.query(rng, "prompts")
            paths = ("/-/prompts?" + urllib.parse.urlencode({"q": q}), f"/{db_name}/generations?" + urllib.parse.urlencode({"_search": q}))
        elif kind == "domains":
            roll = rng.random()
            if roll < 0.1:
                paths = ("/-/domains", f"/{db_name}/domains?_sort_desc=image_count")
            else:
                _, q = vocabulary.query(rng, "training")
                ours = {"q": q, "top": 10, "fragment": 1} if roll < 0.6 else {"q": q}
                paths = ("/-/domains?" + urllib.parse.urlencode(ours), f"{table}?" + urllib.parse.urlencode({"_search": q, "_facet": "domain_id"}))
        elif kind == "artist":
            name = vocabulary.artist(rng)
            stock = [f"{table}?" + urllib.parse.urlencode({"_search": f'"{name}"'}),
                     f"/{db_name}/generations?" + urllib.parse.urlencode({"_search": f'"{name}"'}),
                     f"/{db_name}/artists/{tilde_encode(name)}"][n % 3]
            paths = (f"/-/artist/{quote(name)}", stock)
        elif kind == "keyword":
            keyword_id, keyword = vocabulary.keyword(rng)
            stock = [f"/{db_name}/generation_keywords?keyword_id={keyword_id}", f"/{db_name}/keywords/{keyword_id}",
                     f"/{db_name}/keywords?_sort_desc=prompt_count"][n % 3]
            paths = (f"/-/keyword/{quote(keyword)}", stock)
        elif kind == "similar_image":
            item = int(vocabulary.vector_ids[rng.randrange(len(vocabulary.vector_ids))])
            paths = (f"/-/similar?image={item}", f"{table}/{item}")
        else:  # similar_text: mostly words never asked before (each one encoded by the model)
            roll = rng.random()
            if roll < 0.3:
                q = vocabulary.artist(rng)
            elif roll < 0.7:
                tokens = rng.choice(vocabulary.training["texts"])
                i = rng.randrange(len(tokens) - 1)
                q = " ".join(tokens[i : i + rng.randint(2, 5)])
            else:
                q = f"{rng.choice(vocabulary.training['middling'])} {rng.choice(vocabulary.training['middling'])}"
            paths = ("/-/similar?" + urllib.parse.urlencode({"q": q}), f"{table}?" + urllib.parse.urlencode({"_search": q}))
        out.append((kind, *paths))
    return out


# --- the client ---------------------------------------------------------------------------------


def judge(response) -> tuple[str, str]:
    """(outcome, detail): ok, partial, or error."""
    if response.status_code != 200:
        return "error", f"HTTP {response.status_code}: {error_text(response.content)}"
    if "html" in response.headers.get("content-type", ""):
        body = response.content
        for marker in ERROR_MARKERS:
            if marker in body:
                return "error", f"200 with an error page: {error_text(body)}"
        if PARTIAL_MARKER in body:
            return "partial", "facets timed out"
    return "ok", ""


def error_text(body: bytes) -> str:
    text = body.decode(errors="replace")
    for pattern in (r'class="sb-error-message">(.*?)</p>', r'class="sb-unavailable">(.*?)</p>', r"<h1>(.*?)</h1>", r'class="message-error">(.*?)</'):
        found = re.search(pattern, text, re.S)
        if found:
            return " ".join(re.sub(r"<[^>]+>", "", found.group(1)).split())[:300]
    return " ".join(re.sub(r"<[^>]+>", " ", text).split())[:300]


async def load(base: str, requests: list[tuple[str, str]], concurrency: int, timeout: float, deadline: float) -> list[tuple]:
    """(kind, path, outcome, detail, ms) per request sent, by `concurrency` workers on one client."""
    import httpx

    results: list[tuple] = []
    queue = iter(requests)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, http1=True, http2=False, limits=limits, timeout=httpx.Timeout(timeout), follow_redirects=False) as client:

        async def worker():
            for kind, path in queue:  # one iterator shared by the workers: each request is sent once
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                try:
                    response = await asyncio.wait_for(client.get(path), timeout)
                    outcome, detail = judge(response)
                except asyncio.TimeoutError:
                    outcome, detail = "error", f"timeout after {timeout:g}s"
                except httpx.HTTPError as error:
                    outcome, detail = "error", f"{type(error).__name__}: {error}"
                results.append((kind, path, outcome, detail, (time.perf_counter() - started) * 1000))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_phase(name: str, server: Server, requests: list[tuple[str, str]], warmup: list[tuple[str, str]], args) -> dict:
    log(f"{name}: warm-up of {len(warmup)} requests (not counted), then {len(requests):,} at concurrency {args.concurrency}; load average {os.getloadavg()[0]:.1f}")
    warm = asyncio.run(load(server.url, warmup, args.concurrency, args.timeout, time.monotonic() + args.deadline))
    warm_errors = [r for r in warm if r[2] == "error"]
    if warm_errors:  # not counted, but said: a cold server's first requests are what a deploy meets first
        log(f"{name}: {len(warm_errors)} of the {len(warm)} warm-up requests failed (not counted): "
            + "; ".join(f"{kind} {path} {ms:.0f} ms -> {detail[:120]}" for kind, path, _, detail, ms in warm_errors[:3]))
    server.reset_peak()
    cpu, client_before = server.cpu_seconds(), client_cpu()
    started = time.perf_counter()
    results = asyncio.run(load(server.url, requests, args.concurrency, args.timeout, time.monotonic() + args.deadline))
    seconds = time.perf_counter() - started
    hwm, rss = server.memory_mb()
    ms = [r[4] for r in results]
    errors = [r for r in results if r[2] == "error"]
    phase = {
        "name": name, "results": results, "seconds": seconds, "sent": len(results), "unsent": len(requests) - len(results),
        "errors": len(errors), "partial": sum(r[2] == "partial" for r in results), "rps": len(results) / seconds if seconds else 0.0,
        "p50": _common.median(ms), "p99": _common.percentile(ms, 99), "max": max(ms, default=float("nan")),
        "hwm_mb": hwm, "rss_mb": rss, "server_cpu_s": server.cpu_seconds() - cpu, "client_cpu_s": client_cpu() - client_before,
        "load": os.getloadavg()[0], "warmup_errors": len(warm_errors),
    }
    log(f"{name}: {phase['sent']:,} requests in {seconds:.1f}s, {phase['errors']} errors, p50 {phase['p50']:.0f} ms, p99 {phase['p99']:.0f} ms")
    return phase


def by_kind(results: list[tuple]) -> dict[str, list[float]]:
    kinds: dict[str, list[float]] = {}
    for kind, _, _, _, ms in results:
        kinds.setdefault(kind, []).append(ms)
    return kinds


def report(ours: dict, stock: dict) -> None:
    ours_kinds, stock_kinds = by_kind(ours["results"]), by_kind(stock["results"])
    ours_errors = Counter(r[0] for r in ours["results"] if r[2] == "error")
    stock_errors = Counter(r[0] for r in stock["results"] if r[2] == "error")
    print(f"\n{'':14s} {'n':>6s} | {'Spellbook p50':>13s} {'p99':>8s} {'max':>8s} {'err':>4s} | {'stock p50':>9s} {'p99':>8s} {'max':>8s} {'err':>4s}")
    for kind in MIX:
        a, b = ours_kinds.get(kind, []), stock_kinds.get(kind, [])
        print(f"{kind:14s} {len(a):6d} | {_common.median(a):10.1f} ms {_common.percentile(a, 99):8.1f} {max(a, default=float('nan')):8.1f} {ours_errors[kind]:4d} |"
              f" {_common.median(b):6.1f} ms {_common.percentile(b, 99):8.1f} {max(b, default=float('nan')):8.1f} {stock_errors[kind]:4d}")
    for phase in (ours, stock):
        notes = [f"{phase['errors']} errors"]
        if phase["partial"]:
            notes.append(f"{phase['partial']} partial (facets timed out)")
        if phase["unsent"]:
            notes.append(f"{phase['unsent']} not sent (deadline)")
        print(f"{'all ' + phase['name']:14s} {phase['sent']:6d} | p50 {phase['p50']:.1f} ms, p99 {phase['p99']:.1f} ms, max {phase['max']:.1f} ms; {', '.join(notes)};"
              f" {phase['rps']:.1f} requests/s over {phase['seconds']:.1f}s; server peak RSS {phase['hwm_mb']:.0f} MB (now {phase['rss_mb']:.0f}),"
              f" server CPU {phase['server_cpu_s']:.1f}s, client CPU {phase['client_cpu_s']:.1f}s; load average {phase['load']:.1f}")
    for phase in (ours, stock):
        failed = [r for r in phase["results"] if r[2] == "error"]
        if failed:
            print(f"\nfirst errors of the {phase['name']} run ({len(failed)} in all; by detail: "
                  + "; ".join(f"{n}x {d[:60]}" for d, n in Counter(r[3] for r in failed).most_common(5)) + "):")
            for kind, path, _, detail, ms in failed[:8]:
                print(f"  {kind:13s} {ms:8.0f} ms  {path}  ->  {detail}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=FULL_ROWS, help="synthetic training rows (bench/search.py's database)")
    parser.add_argument("--prompt-rows", type=int, default=None, help=f"synthetic prompts (default {FULL_PROMPTS:,} scaled by --rows / {FULL_ROWS:,})")
    parser.add_argument("--vector-rows", type=int, default=None, help="training rows with image vectors, the first by id (default 1,000,000, at most --rows)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=100, help="requests of each mix sent first and not counted")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds one request may take (then it is an error)")
    parser.add_argument("--deadline", type=float, default=1800.0, help="seconds each run may take; what is not sent by then is reported")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds the server may take to answer its first request")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="publish the copy (and its vectors) again even if cached")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` and `kill`: the server is stopped on the way out
    if args.prompt_rows is None:
        args.prompt_rows = max(1_000, round(FULL_PROMPTS * args.rows / FULL_ROWS))
    if args.vector_rows is None:
        args.vector_rows = min(1_000_000, args.rows)
    total_started = time.perf_counter()

    steps = Steps()
    source = steps.run("training + prompts database", combined, args.rows, args.prompt_rows, args.seed)
    db = steps.run("published copy + inspect file", published, source, args.fresh)
    model_dir = steps.run(f"random-weights {MODEL} checkpoint", _common.random_clip_checkpoint, MODEL, args.seed)
    made = steps.run("vectors + index", embedded, db, model_dir, args.vector_rows, args.seed)
    vocabulary = steps.run("vocabulary", lambda: (Vocabulary(db, args.vector_rows, args.seed), "drawn"))
    mix = draw(vocabulary, db.stem, args.requests, args.seed)
    warm = draw(vocabulary, db.stem, max(args.warmup, 1_000), args.seed + 1_000)
    # Every kind at least once in the warm-up (the first text query loads the model, the first
    # similarity request opens the index): those one-off costs are a cold start, not the load.
    firsts = {kind: request for request in reversed(warm) for kind in [request[0]]}
    warm = list(firsts.values()) + [r for r in warm if r not in firsts.values()][: max(0, args.warmup - len(firsts))]
    log(f"only the first {made['stored']:,} training rows (ids up to {made['max_id']:,}) have image vectors: ?image= requests draw from them, "
        f"?q= similarity searches only them; index: {made['index']}")
    log("mix: " + ", ".join(f"{k} {n}" for k, n in Counter(k for k, _, _ in mix).most_common()))

    server = None
    try:
        started = time.perf_counter()
        server = Server(db, model_dir, args.start_timeout)
        steps.seconds["server start"] = (time.perf_counter() - started, "answering")
        log(f"serving: {' '.join(server.command)} (cwd {db.parent}, SPELLBOOK_MODEL=local-dir:{model_dir})")
        hwm, rss = server.memory_mb()
        log(f"server up in {steps.seconds['server start'][0]:.1f}s, RSS {rss:.0f} MB")
        ours = run_phase("spellbook", server, [(k, a) for k, a, _ in mix], [(k, a) for k, a, _ in warm], args)
        stock = run_phase("stock", server, [(k, b) for k, _, b in mix], [(k, b) for k, _, b in warm], args)
    finally:
        if server is not None:
            server.close()

    report(ours, stock)
    print("\nsetup: " + "; ".join(f"{name} {seconds:.1f}s ({note.split(':')[0]})" for name, (seconds, note) in steps.seconds.items()))
    total = time.perf_counter() - total_started
    print(f"total {total:.0f}s")
    ours_kinds = by_kind(ours["results"])
    print(
        _common.result_line(
            rows=args.rows,
            prompt_rows=args.prompt_rows,
            vector_rows=made["stored"],
            requests=args.requests,
            concurrency=args.concurrency,
            p50_ms=ours["p50"],
            p99_ms=ours["p99"],
            max_ms=ours["max"],
            errors=ours["errors"],
            rps=ours["rps"],
            stock_p50_ms=stock["p50"],
            stock_p99_ms=stock["p99"],
            stock_errors=stock["errors"],
            stock_partial=stock["partial"],
            stock_rps=stock["rps"],
            p99_vs_stock=ours["p99"] / stock["p99"] if stock["p99"] else float("nan"),
            unsent=ours["unsent"] + stock["unsent"],
            server_peak_rss_mb=ours["hwm_mb"],
            stock_server_peak_rss_mb=stock["hwm_mb"],
            warmup_errors=ours["warmup_errors"],
            stock_warmup_errors=stock["warmup_errors"],
            **{f"{kind}_p99_ms": _common.percentile(values, 99) for kind, values in ours_kinds.items()},
            total_s=total,
        )
    )


if __name__ == "__main__":
    main()
