"""kill -9 at any moment leaves a database that passes integrity checks, and re-running the same
command completes with exactly the right row count."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spellbook.database.connect import connect, connect_readonly
from tests.conftest import write_v2

ROWS = 60_000


def spellbook(*args) -> list[str]:
    return [str(Path(sys.executable).parent / "spellbook"), *map(str, args)]


def check_consistent(db: Path) -> int:
    conn = connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.execute("INSERT INTO training_images_fts(training_images_fts) VALUES ('integrity-check')")
        rows = conn.execute("SELECT count(*) FROM training_images").fetchone()[0]
        # Counts committed with each batch agree with the rows themselves.
        assert conn.execute("SELECT coalesce(sum(image_count), 0) FROM domains").fetchone()[0] == rows
        inserted = conn.execute("SELECT coalesce(sum(inserted), 0) FROM datasets").fetchone()[0]
        assert inserted == rows
        return rows
    finally:
        conn.close()


def committed_rows(db: Path) -> int:
    """How far the running ingest has committed, read as another process would see it."""
    if not db.exists():
        return 0
    try:
        conn = connect_readonly(db)
        try:
            return conn.execute("SELECT coalesce(sum(rows_read), 0) FROM datasets").fetchone()[0]
        finally:
            conn.close()
    except Exception:  # schema not created yet, or the file is being set up
        return 0


@pytest.mark.slow
def test_kill_minus_nine_then_resume(tmp_path):
    path = write_v2(
        tmp_path / "big.parquet",
        [{"URL": f"https://img{i % 97}.example{i % 13}.com/{i}.jpg", "TEXT": f"caption number {i} by artist {i % 101}"} for i in range(ROWS)],
    )
    db = tmp_path / "killed.db"
    command = spellbook("ingest", "laion", db, path, "--batch-size", "1000", "--no-progress")
    seen = []
    # Kill when the committed progress passes each mark (watched, not timed: machines differ).
    for mark in (5_000, 25_000, 45_000):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while process.poll() is None and time.time() < deadline:
            if committed_rows(db) >= mark:
                break
            time.sleep(0.01)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        seen.append(check_consistent(db))
    assert any(0 < n < ROWS for n in seen), f"never killed mid-ingest: {seen}"
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "resumed after row" in finished.stdout or "already ingested" in finished.stdout
    assert check_consistent(db) == ROWS
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert "inserted 0" in again.stdout and check_consistent(db) == ROWS


@pytest.mark.slow
def test_a_second_concurrent_ingest_is_refused(tmp_path):
    path = write_v2(tmp_path / "big.parquet", [{"URL": f"https://a.example.com/{i}.jpg", "TEXT": f"caption {i}"} for i in range(ROWS)])
    db = tmp_path / "busy.db"
    first = subprocess.Popen(spellbook("ingest", "laion", db, path, "--batch-size", "1000", "--no-progress"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while committed_rows(db) == 0 and first.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, "the first ingest finished before the second could start"
        second = subprocess.run(spellbook("ingest", "laion", db, path, "--no-progress"), capture_output=True, text=True, timeout=120)
        assert second.returncode != 0
        assert "another `spellbook ingest` is writing to this database" in second.stderr + second.stdout
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0
    assert check_consistent(db) == ROWS
