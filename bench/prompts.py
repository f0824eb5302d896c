"""Prompt-side benchmark.

1. Ingest a synthetic DiffusionDB-shaped file (2M rows by default) with `spellbook ingest prompts`,
   and in the same run the pandas + to_sql + enable_fts baseline.
2. On a database of 12.1M synthetic training rows plus those prompts (bench/search.py's database,
   copied, plus the prompts): the artist report for 50 artists from the vocabulary, and the keyword
   page for 50 keywords (p50/p99).

    .venv/bin/python bench/prompts.py
    .venv/bin/python bench/prompts.py --rows 200000 --training-rows 1000000
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: E402  (bench/_common.py: this script's folder is first on sys.path)

from spellbook.database.connect import connect_readonly  # noqa: E402
from spellbook.queries.reports import artist_report, keyword_report  # noqa: E402


def ingest_figures(parquet: Path, rows: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="spellbook-bench-"))
    try:
        ours_db = work / "ours.db"
        seconds, rss, output = _common.timed([str(_common.BIN / "spellbook"), "ingest", "prompts", str(ours_db), str(parquet), "--no-progress"])
        print("\n".join(output.strip().splitlines()[-2:]))
        n_seconds, n_rss, _ = _common.timed([sys.executable, str(_common.BENCH_DIR / "naive_prompts.py"), str(work / "naive.db"), str(parquet)])
        print(f"ours:  {seconds:7.1f}s {rows / seconds:10,.0f} rows/s  peak RSS {rss:7.0f} MB")
        print(f"naive: {n_seconds:7.1f}s {rows / n_seconds:10,.0f} rows/s  peak RSS {n_rss:7.0f} MB")
        return {
            "ingest_rows_per_s": rows / seconds,
            "ingest_peak_rss_mb": rss,
            "naive_rows_per_s": rows / n_seconds,
            "naive_peak_rss_mb": n_rss,
            "ratio_vs_naive": seconds / n_seconds,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def combined_database(training_rows: int, prompts: Path, rows: int, seed: int) -> Path:
    laion = _common.synthetic("laion", training_rows, seed)
    db = _common.CACHE / f"reports-{laion.stem}-{prompts.stem}.db"
    if not db.exists():
        training = _common.CACHE / f"search-{laion.stem}.db"  # built by bench/search.py
        if not training.exists():
            subprocess.run([sys.executable, str(_common.BENCH_DIR / "search.py"), "--rows", str(training_rows), "--queries", "0"], check=True)
        partial = db.with_suffix(".building")
        shutil.copyfile(training, partial)
        started = time.perf_counter()
        subprocess.run([str(_common.BIN / "spellbook"), "ingest", "prompts", str(partial), str(prompts), "--no-progress"], check=True)
        print(f"# added {rows:,} prompts to {training_rows:,} training rows in {time.perf_counter() - started:.0f}s")
        partial.rename(db)
    return db


def report_figures(db: Path, seed: int) -> dict:
    conn = connect_readonly(db)
    rng = random.Random(seed)
    artists = [name for (name,) in conn.execute("SELECT name FROM artists WHERE prompt_count > 0 OR training_count > 0 ORDER BY prompt_count DESC")]
    names = artists[:25] + rng.sample(artists[25:], min(25, len(artists) - 25))
    keywords = [k for (k,) in conn.execute("SELECT keyword FROM keywords ORDER BY prompt_count DESC LIMIT 200")]
    chosen = keywords[:25] + rng.sample(keywords[25:], min(25, len(keywords) - 25))
    # Two passes: the first finds what the page cache holds ("cold"), the second is a warm server.
    cold = {}
    for attempt in ("cold", "warm"):
        artist_ms, keyword_ms = [], []
        for name in names:
            started = time.perf_counter()
            artist_report(conn, name)
            artist_ms.append((time.perf_counter() - started) * 1000)
        for keyword in chosen:
            started = time.perf_counter()
            keyword_report(conn, keyword)
            keyword_ms.append((time.perf_counter() - started) * 1000)
        if attempt == "cold":
            cold = {"cold_artist_p99_ms": _common.percentile(artist_ms, 99), "cold_keyword_p50_ms": _common.median(keyword_ms)}
            print(f"  first pass: artist report p50 {_common.median(artist_ms):.1f} ms p99 {_common.percentile(artist_ms, 99):.1f} ms")
    print(f"  artist report p50 {_common.median(artist_ms):7.1f} ms  p99 {_common.percentile(artist_ms, 99):7.1f} ms  ({len(names)} artists)")
    print(f"  keyword page  p50 {_common.median(keyword_ms):7.1f} ms  p99 {_common.percentile(keyword_ms, 99):7.1f} ms  ({len(chosen)} keywords)")
    return {
        "artists": len(names),
        "artist_p50_ms": _common.median(artist_ms),
        "artist_p99_ms": _common.percentile(artist_ms, 99),
        "keyword_p50_ms": _common.median(keyword_ms),
        "keyword_p99_ms": _common.percentile(keyword_ms, 99),
        **cold,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="synthetic DiffusionDB rows")
    parser.add_argument("--training-rows", type=int, default=12_096_835)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-ingest", action="store_true", help="only the report timings (on the cached database)")
    args = parser.parse_args()
    parquet = _common.synthetic("prompts", args.rows, args.seed)
    figures = {"rows": args.rows, "training_rows": args.training_rows}
    if not args.skip_ingest:
        figures.update(ingest_figures(parquet, args.rows))
    figures.update(report_figures(combined_database(args.training_rows, parquet, args.rows, args.seed), args.seed))
    print(_common.result_line(**figures))


if __name__ == "__main__":
    main()
