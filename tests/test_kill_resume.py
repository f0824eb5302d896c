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

from ingest.db import connect
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


@pytest.mark.slow
def test_kill_minus_nine_then_resume(tmp_path):
    path = write_v2(
        tmp_path / "big.parquet",
        [{"URL": f"https://img{i % 97}.example{i % 13}.com/{i}.jpg", "TEXT": f"caption number {i} by artist {i % 101}"} for i in range(ROWS)],
    )
    db = tmp_path / "killed.db"
    command = spellbook("ingest", "laion", db, path, "--batch-size", "1000", "--no-progress")
    seen = []
    for delay in (0.8, 1.2, 1.6, 2.0):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(delay)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if db.exists():
            seen.append(check_consistent(db))
    assert any(0 < n < ROWS for n in seen), f"never killed mid-ingest: {seen}"
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "resumed after row" in finished.stdout or "already ingested" in finished.stdout
    assert check_consistent(db) == ROWS
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert "inserted 0" in again.stdout and check_consistent(db) == ROWS
