"""Ingest benchmark: `spellbook ingest laion` against the naive pandas + to_sql + enable_fts
pipeline, on the same synthetic LAION-Aesthetics V2 file, in the same run.

    .venv/bin/python bench/ingest.py --rows 1000000
    .venv/bin/python bench/ingest.py --rows 12096835     # the full LAION-Aesthetics 6+ size
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import _common  # noqa: E402  (bench/_common.py: this script's folder is first on sys.path)
BENCH_DIR, BIN, database_bytes, result_line, synthetic, timed = _common.BENCH_DIR, _common.BIN, _common.database_bytes, _common.result_line, _common.synthetic, _common.timed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-naive", action="store_true", help="only ours (the naive run needs RAM in proportion to N)")
    args = parser.parse_args()

    parquet = synthetic("laion", args.rows, args.seed)
    work = Path(tempfile.mkdtemp(prefix="spellbook-bench-"))
    try:
        ours_db = work / "ours.db"
        seconds, rss, output = timed([str(BIN / "spellbook"), "ingest", "laion", str(ours_db), str(parquet), "--no-progress"])
        print(output.strip().splitlines()[-1])
        ours_bytes = database_bytes(ours_db)
        figures = {
            "rows": args.rows,
            "seconds": seconds,
            "rows_per_s": args.rows / seconds,
            "peak_rss_mb": rss,
            "bytes_per_row": ours_bytes / args.rows,
        }
        print(f"ours:  {seconds:7.1f}s {args.rows / seconds:10,.0f} rows/s  peak RSS {rss:7.0f} MB  {ours_bytes / args.rows:6.1f} bytes/row")
        if not args.skip_naive:
            naive_db = work / "naive.db"
            n_seconds, n_rss, _ = timed([sys.executable, str(BENCH_DIR / "naive_ingest.py"), str(naive_db), str(parquet)])
            naive_bytes = database_bytes(naive_db)
            print(f"naive: {n_seconds:7.1f}s {args.rows / n_seconds:10,.0f} rows/s  peak RSS {n_rss:7.0f} MB  {naive_bytes / args.rows:6.1f} bytes/row")
            figures.update(
                naive_seconds=n_seconds,
                naive_rows_per_s=args.rows / n_seconds,
                naive_peak_rss_mb=n_rss,
                naive_bytes_per_row=naive_bytes / args.rows,
                ratio_vs_naive=seconds / n_seconds,
            )
        print(result_line(**figures))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
