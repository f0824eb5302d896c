"""The baseline a data scientist would write: pandas read_parquet, DataFrame.to_sql,
sqlite-utils enable_fts, domains by a Python function in an UPDATE. (python bench/naive_ingest.py DB PARQUET)"""
import sys

import pandas as pd
import sqlite_utils
from publicsuffixlist import PublicSuffixList
from sqlite_utils.utils import sqlite3

db_path, parquet = sys.argv[1], sys.argv[2]
psl = PublicSuffixList()


def domain_of(url):
    host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower() if url else None
    return psl.privatesuffix(host) or host if host else None


frame = pd.read_parquet(parquet)
conn = sqlite3.connect(db_path)
frame.to_sql("images", conn, index=False, chunksize=100_000)
conn.create_function("domain_of", 1, domain_of)
conn.execute("ALTER TABLE images ADD COLUMN domain TEXT")
conn.execute("UPDATE images SET domain = domain_of(URL)")
conn.commit()
db = sqlite_utils.Database(conn)
db["images"].enable_fts(["TEXT"], tokenize="unicode61")
conn.commit()
print(db["images"].count, "rows")
