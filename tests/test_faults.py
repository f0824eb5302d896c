"""Faults a hosted or a local Spellbook meets: its database file truncated or replaced while it is
served, the disk filling up during an ingest, a corrupted or missing vector index. (A killed worker
of the runner's queue: tests/test_runner_jobs.py::test_a_killed_worker_leaves_a_job_that_is_retried.)

Real parts throughout: `spellbook serve` in its own process on a loopback port, `spellbook ingest`
in its own process under a real file-size limit (RLIMIT_FSIZE: the kernel refuses the write that
would pass it, as a full disk does), real SQLite files and a real index on disk.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import sqlite3 as stdlib_sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, spellbook_datasette
from tests.test_similarity import TRAINING, colour_db, embedded, ids_by_caption  # noqa: F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SPELLBOOK = str(Path(sys.executable).parent / "spellbook")


def synth(path: Path, rows: int, seed: int) -> Path:
    subprocess.run([SPELLBOOK, "synth", "laion", str(path), "--rows", str(rows), "--seed", str(seed)], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def parquets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    return synth(folder / "first.parquet", 20_000, 1), synth(folder / "second.parquet", 100_000, 2)


@pytest.fixture(scope="module")
def built_db(tmp_path_factory, parquets):
    """120,000 synthetic LAION rows in a database file, built once (tests copy it)."""
    db = tmp_path_factory.mktemp("built") / "built.db"
    for parquet in parquets:
        subprocess.run([SPELLBOOK, "ingest", "laion", str(db), str(parquet)], check=True, capture_output=True)
    return db


def counts(db: Path) -> tuple:
    conn = stdlib_sqlite3.connect(db)
    try:
        return (conn.execute("PRAGMA integrity_check").fetchone()[0], conn.execute("SELECT count(*) FROM training_images").fetchone()[0],
                conn.execute("SELECT count(*) FROM training_images_fts WHERE training_images_fts MATCH 'painting'").fetchone()[0],
                conn.execute("SELECT file_name, status, rows_read, inserted FROM datasets ORDER BY id").fetchall())
    finally:
        conn.close()


# --- the database file changed under a running server ----------------------------------------------

DB_PAGES = ["/-/search?q=painting", "/-/search.json?q=photo", "/-/domains?q=photo", "/-/artist/greg%20rutkowski",
            "/{db}/training_images?_search=portrait", "/{db}/training_images/110000", "/{db}/training_images.json?_search=landscape"]


def served_copy(built_db: Path, folder: Path) -> tuple[Path, Server]:
    db = folder / "site.db"
    shutil.copy(built_db, db)
    return db, Server(db)


def test_a_database_truncated_while_serving_answers_503_and_the_server_stays_up(built_db, tmp_path):
    db, server = served_copy(built_db, tmp_path)
    try:
        pages = [p.format(db=db.stem) for p in DB_PAGES]
        for path in pages:
            server.get(path)
        os.truncate(db, db.stat().st_size // 3)
        statuses = {}
        for path in pages + [p.replace("photo", "tree") for p in pages]:  # uncached queries too
            response = httpx.get(server.url + path, timeout=30)
            statuses[path] = response.status_code
            assert response.status_code in (200, 503), (path, response.status_code, response.text[:300])
            if response.status_code == 503:
                if path.endswith(".json") or ".json?" in path:
                    assert response.json()["title"] == "The database cannot be read"
                else:
                    assert "The database cannot be read" in response.text and "damaged or was changed" in response.text
                    assert "Traceback" not in response.text and "malformed" not in response.text
                assert response.headers["retry-after"] == "30" and "content-security-policy" in response.headers
        assert sum(status == 503 for status in statuses.values()) >= len(pages), statuses  # what reads the lost pages says so
        assert server.process.poll() is None  # the server lives on
        server.get("/-/static-plugins/spellbook/spellbook.css")
        assert "cannot read a database" in server.output()  # and the operator's log says what happened
    finally:
        server.stop()
    shutil.copy(built_db, db)  # restored (or republished), a restarted server answers again
    server = Server(db)
    try:
        for path in DB_PAGES:
            server.get(path.format(db=db.stem))
    finally:
        server.stop()


def test_a_database_replaced_while_serving_keeps_answering_from_the_file_it_opened(built_db, parquets, tmp_path):
    db, server = served_copy(built_db, tmp_path)
    try:
        before = server.get("/-/search.json?q=painting").json()["total"]
        smaller = tmp_path / "smaller.db"
        subprocess.run([SPELLBOOK, "ingest", "laion", str(smaller), str(parquets[0])], check=True, capture_output=True)
        after_total = counts(smaller)[2]
        assert after_total != before
        os.replace(smaller, db)  # what a deploy that swaps the file in place does
        seen = set()
        with httpx.Client(timeout=30) as client:
            for _ in range(30):
                for path in ("/-/search.json?q=painting", f"/{db.stem}/training_images.json?_search=painting&_size=1"):
                    response = client.get(server.url + path)
                    assert response.status_code == 200, (path, response.text[:300])
                seen.add(client.get(server.url + "/-/search.json?q=painting").json()["total"])
        assert seen <= {before, after_total}, seen  # one file or the other, never a mix or an error
        assert server.process.poll() is None
    finally:
        server.stop()


# --- the disk filling up during an ingest -----------------------------------------------------------


def ingest_with_room(db: Path, parquet: Path, room: int | None, *args) -> subprocess.CompletedProcess:
    """`spellbook ingest laion` in its own process; with `room`, no file may grow past the database's
    current size plus room bytes (the kernel refuses the write, as on a full disk)."""
    limit = None if room is None else (db.stat().st_size if db.exists() else 0) + room

    def preexec():
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of killing the process
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([SPELLBOOK, "ingest", "laion", str(db), str(parquet), *args], capture_output=True, text=True, preexec_fn=preexec, timeout=300)


@pytest.mark.parametrize("room", [3_000_000, 14_000_000], ids=["first-batch", "later-batch"])
def test_the_disk_filling_up_during_an_ingest_loses_nothing_and_a_rerun_completes(parquets, built_db, tmp_path, room):
    first, second = parquets
    db = tmp_path / "full.db"
    assert ingest_with_room(db, first, None).returncode == 0
    before = counts(db)

    failed = ingest_with_room(db, second, room, "--batch-size", "20000")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr
    assert f"{db}: cannot write the database" in failed.stderr and "is the disk full?" in failed.stderr and "run the same command again" in failed.stderr
    integrity, rows, _, datasets = counts(db)
    assert integrity == "ok" and datasets[0] == before[3][0]  # the first file is untouched
    assert before[1] <= rows < before[1] + 100_000 and (rows - before[1]) % 20_000 == 0  # whole batches or none
    if room > 10_000_000:
        assert rows > before[1] and datasets[1][1] == "loading"  # some batches went in: the file is marked unfinished

    again = ingest_with_room(db, second, None)
    assert again.returncode == 0, again.stderr
    clean = tmp_path / "clean.db"
    shutil.copy(built_db, clean)
    integrity, rows, painting, datasets = counts(db)
    assert (integrity, rows, painting) == counts(clean)[:3] == ("ok", 120_000, counts(built_db)[2])
    assert [d[1:] for d in datasets] == [("complete", 20_000, 20_000), ("complete", 100_000, 100_000)]
    assert ingest_with_room(db, second, None).returncode == 0 and counts(db)[1] == 120_000  # and again is a no-op


def _full_at_the_next_page(conn) -> None:
    """No page past the file's present size: the next write that grows it fails with SQLITE_FULL,
    as on a full disk (SQLite rolls the transaction back itself)."""
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")


def test_a_failed_write_says_the_disk_is_full_not_that_there_was_nothing_to_roll_back(tmp_path):
    """Regression: a CI run on a full disk printed "cannot rollback - no transaction is active" (the
    ROLLBACK sent after SQLite had already rolled back) instead of "database or disk is full"."""
    from spellbook.database.connect import connect, transaction

    conn = connect(tmp_path / "small.db")
    conn.execute("CREATE TABLE t(x)")
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES ('kept')")
    _full_at_the_next_page(conn)
    with pytest.raises(Exception, match="database or disk is full"):
        with transaction(conn):
            conn.executemany("INSERT INTO t VALUES (?)", [("x" * 4000,)] * 100)
    assert not conn.in_transaction and conn.execute("SELECT x FROM t").fetchall() == [("kept",)]
    with pytest.raises(ValueError, match="mine"):  # an error of the block's own rolls back as before
        with transaction(conn):
            conn.execute("DELETE FROM t")
            raise ValueError("mine")
    assert conn.execute("SELECT x FROM t").fetchall() == [("kept",)]
    conn.close()


def test_the_disk_filling_up_while_counting_artists_says_so_and_a_rerun_counts_them(built_db, parquets, tmp_path):
    """Regression: the same CI run, one step later: the artists' recount after an ingest."""
    from spellbook.database.connect import connect
    from spellbook.database.schema import TRAINING_FTS, TRAINING_FTS_VOCAB
    from spellbook.ingest.artists import refresh_artists

    db = tmp_path / "counted.db"
    shutil.copy(built_db, db)
    conn = connect(db)
    artists = conn.execute("SELECT name, training_count FROM artists ORDER BY name").fetchall()
    assert artists and any(count for _, count in artists)
    conn.execute("DELETE FROM artists")
    conn.execute("VACUUM")  # no free pages left: the recount must grow the file
    _full_at_the_next_page(conn)
    with pytest.raises(Exception, match="database or disk is full"):
        refresh_artists(conn)
    from spellbook.ingest.load import InputError, refresh_counts  # what `spellbook ingest` prints of it

    with pytest.raises(InputError, match="is the disk full") as raised:
        refresh_counts(conn, db, TRAINING_FTS, TRAINING_FTS_VOCAB)
    assert str(db) in str(raised.value) and "Every row is in" in str(raised.value) and "run the same command again" in str(raised.value)
    assert not conn.in_transaction and conn.execute("SELECT count(*) FROM artists").fetchone()[0] == 0
    conn.close()

    again = ingest_with_room(db, parquets[1], None)  # nothing new to load: the counts are brought up to date
    assert again.returncode == 0, again.stderr
    conn = connect(db)
    try:
        assert conn.execute("SELECT name, training_count FROM artists ORDER BY name").fetchall() == artists
    finally:
        conn.close()


# --- a corrupted or missing vector index ------------------------------------------------------------


@pytest.fixture
def indexed(embedded, stand_in):
    from spellbook.embeddings.indexing import build_indexes, index_path
    from spellbook.embeddings.store import VectorStore

    build_indexes(embedded)
    store = VectorStore.beside(embedded)
    try:
        record = store.models()[0]
    finally:
        store.close()
    return embedded, index_path(embedded, record, "training_image")


async def keyword_search_keeps_working(ds, db):
    ids = ids_by_caption(db)
    data = (await ds.client.get("/-/similar.json?q=red+fox")).json()
    assert data["mode"] == "keywords" and data["rows"][0]["id"] == ids["a red fox in the snow"], data
    assert (await ds.client.get("/-/search?q=fox")).status_code == 200
    page = await ds.client.get("/-/similar?q=red+fox")
    assert page.status_code == 200 and "<mark>fox</mark> in the snow" in page.text
    return data["similarity_unavailable"], page.text


async def test_a_corrupted_index_is_a_clear_error_and_keyword_search_keeps_working(indexed, stand_in):
    db, path = indexed
    ds = spellbook_datasette(db)
    assert (await ds.client.get("/-/similar.json?q=red+fox")).json()["similarity_unavailable"] is None  # sound, it is used
    path.write_text(path.read_text()[:40])  # the manifest cut short
    ds = spellbook_datasette(db)  # a new server process opens it
    unavailable, page = await keyword_search_keeps_working(ds, db)
    assert "The vector index cannot be read" in unavailable and "truncated or corrupted" in unavailable and "spellbook index DB --rebuild" in unavailable
    assert "The vector index cannot be read" in page
    only = await ds.client.get("/-/similar.json?q=red+fox&mode=similarity")
    assert only.status_code == 503 and "cannot be read" in only.json()["error"]
    more = await ds.client.get(f"/-/similar.json?image={ids_by_caption(db)['a red fox in the snow']}")
    assert more.status_code == 503 and "cannot be read" in more.json()["error"]

    from spellbook.embeddings.indexing import build_indexes

    build_indexes(db, rebuild=True)  # what the message says to do mends it
    ds = spellbook_datasette(db)
    assert (await ds.client.get("/-/similar.json?q=red+fox")).json()["similarity_unavailable"] is None


async def test_a_missing_index_over_many_vectors_is_a_clear_error_not_a_slow_scan(indexed, stand_in, monkeypatch):
    db, path = indexed
    for part in path.parent.glob(path.name + "*"):
        part.unlink()
    ds = spellbook_datasette(db)
    data = (await ds.client.get("/-/similar.json?q=red+fox")).json()
    assert data["similarity_unavailable"] is None  # a few vectors: scanned exactly, no index needed

    from spellbook.embeddings import index

    monkeypatch.setattr(index, "EXACT_MAX_ROWS", len(TRAINING) - 1)  # as if the store held more than a scan can serve
    ds = spellbook_datasette(db)
    unavailable, _ = await keyword_search_keeps_working(ds, db)
    assert f"{len(TRAINING):,} vectors and no index" in unavailable and "spellbook index DB" in unavailable
