"""Search benchmark on a synthetic LAION-Aesthetics database (default: the full 12,096,835 rows).

Times, per query: our top 100 by rank with highlights (spellbook.queries.search), the domain breakdown, our
results page (/-/search) and, as the baseline in the same run, Datasette's stock table page
(?_search=...&_nosuggest=1), both through Datasette's ASGI client. The stock page gets a 60 s SQL
time limit instead of its default 1 s, so that it is measured rather than cut off.

    .venv/bin/python bench/search.py                 # 12.1M rows (builds bench/cache/search-*.db once)
    .venv/bin/python bench/search.py --rows 1000000
"""
from __future__ import annotations

import argparse
import asyncio
import random
import re
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import _common  # noqa: E402  (bench/_common.py: this script's folder is first on sys.path)
BIN, CACHE, median, percentile, result_line, synthetic = _common.BIN, _common.CACHE, _common.median, _common.percentile, _common.result_line, _common.synthetic

from spellbook.database.connect import connect_readonly  # noqa: E402
from spellbook.queries.domains import domain_breakdown  # noqa: E402
from spellbook.queries.search import count_matches, search_training  # noqa: E402
from spellbook.text.fts import fts_query  # noqa: E402
from spellbook.site import make_datasette  # noqa: E402


CLUSTER_WORD = "zorblax"  # in no synthetic caption: it occurs only in the file ingested last
CLUSTER_ROWS = 10_000


def clustered_file(seed: int) -> Path:
    """bench/cache/cluster-...parquet: 10,000 more synthetic rows whose captions all carry
    CLUSTER_WORD, ingested after the main file, so that its matches sit at the end of the id range
    (real corpora arrive one after another). Labelled synthetic like the rest."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    source = synthetic("laion", CLUSTER_ROWS, seed + 1000)
    path = CACHE / f"cluster-{source.stem}.parquet"
    if not path.exists():
        table = pq.read_table(source)
        captions = pc.binary_join_element_wise(pa.scalar(CLUSTER_WORD), table.column("TEXT"), " ")
        table = table.set_column(table.schema.get_field_index("TEXT"), "TEXT", captions)
        pq.write_table(table, path.with_suffix(".partial"))
        path.with_suffix(".partial").rename(path)
    return path


def database(rows: int, seed: int) -> Path:
    """bench/cache/search-<synthetic file>.db: the synthetic file, then the clustered one; rebuilt
    whenever the synthetic files are."""
    parquet = synthetic("laion", rows, seed)
    cluster = clustered_file(seed)
    db = CACHE / f"search-{parquet.stem}.db"
    if not db.exists():
        partial = db.with_suffix(".building")
        for leftover in CACHE.glob(partial.name + "*"):
            leftover.unlink()
        started = time.perf_counter()
        subprocess.run([str(BIN / "spellbook"), "ingest", "laion", str(partial), str(parquet), "--no-progress"], check=True)
        subprocess.run([str(BIN / "spellbook"), "ingest", "laion", str(partial), str(cluster), "--no-progress"], check=True)
        print(f"# built {db.name} in {time.perf_counter() - started:.0f}s", flush=True)
        partial.rename(db)
    return db


def queries(conn, count: int, seed: int) -> list[tuple[str, str]]:
    """(kind, query, domain or None): artist names, two-word phrases, the most frequent words,
    prefixes, and a word found only in the last file ingested (alone, with others, within a domain)."""
    rng = random.Random(seed)
    artists = [name for (name,) in conn.execute("SELECT name FROM artists WHERE training_count > 0 ORDER BY training_count DESC")]
    chosen = artists[:40] + rng.sample(artists[40:], min(len(artists) - 40, count // 2 - 40)) if len(artists) > 40 else artists
    sample = [caption for (caption,) in conn.execute("SELECT caption FROM training_images WHERE id % 97 = 0 LIMIT 20000")]
    words = Counter(w for caption in sample for w in set(re.findall(r"\w+", caption.lower())))
    frequent = [w for w, _ in words.most_common(40)]
    phrases = []
    while len(phrases) < count // 4:
        tokens = re.findall(r"\w+", rng.choice(sample).lower())
        if len(tokens) >= 2:
            i = rng.randrange(len(tokens) - 1)
            phrases.append(f'"{tokens[i]} {tokens[i + 1]}"')
    prefixes = [w[:4] + "*" for w, _ in words.most_common(1000)[100:1000:30] if len(w) >= 5][:12]
    # Matches bunched at the end of the id range: the word alone, with a frequent word, in a phrase,
    # as a prefix, and within the cluster's most common domains.
    cluster_domains = [d for (d,) in conn.execute(
        "SELECT d.domain FROM training_images t JOIN domains d ON d.id = t.domain_id WHERE t.id > (SELECT max(id) FROM training_images) - ? "
        "GROUP BY d.id ORDER BY count(*) DESC LIMIT 4", (CLUSTER_ROWS,))]
    clustered = [CLUSTER_WORD, f"{CLUSTER_WORD} {frequent[0]}", f"{CLUSTER_WORD} {frequent[5]}", f'"{CLUSTER_WORD} {frequent[1]}"', CLUSTER_WORD[:5] + "*"]
    picked = [("artist", a, None) for a in chosen] + [("phrase", p, None) for p in phrases] + [("frequent", w, None) for w in frequent]
    picked += [("prefix", p, None) for p in prefixes] + [("clustered", q, None) for q in clustered]
    picked += [("clustered+domain", CLUSTER_WORD, domain) for domain in cluster_domains]
    return picked


def timed_ms(function):
    started = time.perf_counter()
    result = function()
    return (time.perf_counter() - started) * 1000, result


async def pages(db: Path, picked: list[tuple]) -> tuple[list[float], list[float]]:
    ds = make_datasette(db, settings={"sql_time_limit_ms": 60_000, "facet_time_limit_ms": 60_000})
    name = db.stem
    conn = connect_readonly(db)
    ours, stock = [], []
    for _, q, _ in picked[:5]:  # warm both paths
        await ds.client.get("/-/search?" + urllib.parse.urlencode({"q": q}))
    for _, q, domain in picked:
        ours_args, stock_args = {"q": q}, {"_search": q, "_nosuggest": 1}
        if domain:
            ours_args["domain"] = domain
            stock_args["domain_id"] = conn.execute("SELECT id FROM domains WHERE domain = ?", (domain,)).fetchone()[0]
        started = time.perf_counter()
        response = await ds.client.get("/-/search?" + urllib.parse.urlencode(ours_args))
        ours.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (q, response.status_code)
        started = time.perf_counter()
        response = await ds.client.get(f"/{name}/training_images?" + urllib.parse.urlencode(stock_args))
        stock.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (q, response.status_code, response.text[:300])
    return ours, stock


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=12_096_835)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    db = database(args.rows, args.seed)
    conn = connect_readonly(db)
    if args.queries == 0:  # only build the database (bench/prompts.py uses it)
        return
    picked = queries(conn, args.queries, args.seed)
    print(f"# {len(picked)} queries on {args.rows:,} rows: " + ", ".join(f"{k} {v}" for k, v in Counter(k for k, _, _ in picked).items()))
    # Two passes over the same queries: the first finds what the page cache holds (printed as
    # "cold"), the second is the steady state of a server that has been up for a while.
    for attempt in ("cold", "warm"):
        search_ms, domains_ms, domains_small_ms, by_kind = [], [], [], {}
        for kind, q, domain in picked:
            ms, result = timed_ms(lambda: search_training(conn, q, domain=domain))
            search_ms.append(ms)
            by_kind.setdefault(kind, []).append(ms)
            if domain:
                continue  # a breakdown by domain of a search within one domain says nothing
            d_ms, _ = timed_ms(lambda: domain_breakdown(conn, q))
            domains_ms.append(d_ms)
            if count_matches(conn, fts_query(q), 100_000) <= 100_000:
                domains_small_ms.append(d_ms)
        if attempt == "cold":
            cold = {"cold_search_p99_ms": percentile(search_ms, 99), "cold_domains_p99_ms": percentile(domains_ms, 99)}
            print(f"  first pass: search p50 {median(search_ms):.1f} ms p99 {percentile(search_ms, 99):.1f} ms; domains p99 {percentile(domains_ms, 99):.1f} ms")
    for kind, values in by_kind.items():
        print(f"  search {kind:16s} p50 {median(values):7.1f} ms  p99 {percentile(values, 99):7.1f} ms  max {max(values):7.1f} ms")
    ours, stock = asyncio.run(pages(db, picked))
    print(f"  our page   p50 {median(ours):7.1f} ms  p99 {percentile(ours, 99):7.1f} ms")
    print(f"  stock page p50 {median(stock):7.1f} ms  p99 {percentile(stock, 99):7.1f} ms")
    print(
        result_line(
            rows=args.rows,
            queries=len(picked),
            search_p50_ms=median(search_ms),
            search_p99_ms=percentile(search_ms, 99),
            domains_p50_ms=median(domains_ms),
            domains_p99_ms=percentile(domains_ms, 99),
            domains_upto_100k_p99_ms=percentile(domains_small_ms, 99),
            page_p50_ms=median(ours),
            page_p99_ms=percentile(ours, 99),
            stock_p50_ms=median(stock),
            stock_p99_ms=percentile(stock, 99),
            page_vs_stock=median(ours) / median(stock),
            page_vs_stock_p99=percentile(ours, 99) / percentile(stock, 99),
            clustered_p99_ms=max(by_kind["clustered"] + by_kind["clustered+domain"]),
            **cold,
        )
    )


if __name__ == "__main__":
    main()
