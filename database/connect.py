"""Opening databases with the same sqlite3 module that Datasette and sqlite-utils chose.

The pyenv Python here has a sqlite3 without extension loading; sqlite-utils switches to
pysqlite3 (SQLite 3.51 with FTS5) when it is importable, and so does Datasette. Our code must use
that very module, or the two would disagree about what the file can do.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from sqlite_utils.utils import sqlite3  # the module sqlite-utils picked: pysqlite3 where installed

__all__ = ["sqlite3", "connect", "connect_readonly", "transaction"]


def connect(path: str | Path, cache_mb: int = 256) -> "sqlite3.Connection":
    """A read-write connection tuned for bulk loading: WAL, so readers never see half a batch."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    # Only takes effect on a new file (before WAL is set): 16 KiB pages waste less of each page's
    # tail on ~250-byte rows (310 -> 303 bytes a row at 1M rows) and load slightly faster.
    conn.execute("PRAGMA page_size=16384")
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode is durable up to the last checkpoint and never corrupts on kill -9.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{cache_mb * 1024}")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA wal_autocheckpoint=10000")  # 40 MB: fewer checkpoints during bulk loads
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def connect_readonly(path: str | Path) -> "sqlite3.Connection":
    """A connection that cannot write, for benchmarks and reports."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


@contextmanager
def transaction(conn, begin: str = "BEGIN IMMEDIATE"):
    """One transaction on an autocommit connection: committed when the block ends, rolled back if it raises.

    A write or COMMIT that fails for want of space or on an I/O error (SQLITE_FULL, SQLITE_IOERR) may
    already have rolled the transaction back; a ROLLBACK then would fail too ("no transaction is
    active") and hide the error that says why, so it is only sent while a transaction is open.
    """
    conn.execute(begin)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
