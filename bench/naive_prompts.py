"""Baseline for the prompt ingest: pandas read_parquet, DataFrame.to_sql, sqlite-utils enable_fts.
(python bench/naive_prompts.py DB PARQUET)"""
import sys

import pandas as pd
import sqlite_utils
from sqlite_utils.utils import sqlite3

db_path, parquet = sys.argv[1], sys.argv[2]
frame = pd.read_parquet(parquet)
conn = sqlite3.connect(db_path)
frame.to_sql("generations", conn, index=False, chunksize=100_000)
conn.commit()
db = sqlite_utils.Database(conn)
db["generations"].enable_fts(["prompt"], tokenize="unicode61")
conn.commit()
print(db["generations"].count, "rows")
