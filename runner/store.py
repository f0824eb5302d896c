"""The runner's own database, DB.runner.db beside the Spellbook database (never the database
itself: that one is served --immutable and published without any local runs).

It holds every regeneration (every parameter actually used), the job queue the web pages feed and
the worker drains, and the checkpoint hash cache. WAL mode and short transactions let the web
process and the worker use it at once; all state is in the file, so a restart loses nothing.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from spellbook.database.connect import sqlite3, transaction

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS regenerations (
    id INTEGER PRIMARY KEY,
    generation_id INTEGER,            -- the source row in the Spellbook database (generations.id)
    job_id INTEGER,                   -- the queued job it answered, if any
    created_at TEXT NOT NULL,         -- ISO 8601 UTC
    prompt TEXT NOT NULL,             -- as given to the tool (A1111 syntax, LoRA tags and all)
    negative_prompt TEXT,
    seed INTEGER NOT NULL,
    steps INTEGER NOT NULL,
    cfg REAL NOT NULL,
    sampler TEXT NOT NULL,            -- canonical name actually run (text/samplers.py), schedule folded in
    schedule TEXT,                    -- karras, exponential, beta, sgm_uniform or NULL (the scheduler's default)
    sampler_requested TEXT,           -- what the row (or the user) asked for
    scheduler_class TEXT NOT NULL,    -- the diffusers scheduler
    scheduler_config TEXT NOT NULL,   -- JSON: its whole config
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    clip_skip INTEGER,
    batch_size INTEGER NOT NULL,      -- images in the pipeline call that made this one
    init_image TEXT,                  -- img2img: the file or "generation:ID" it started from
    strength REAL,
    model TEXT NOT NULL,              -- hub id, folder name or checkpoint file name
    model_source TEXT NOT NULL,       -- hub, folder, single-file
    model_family TEXT NOT NULL,       -- sd1, sd2, sdxl
    model_hash TEXT,                  -- A1111's Model hash (sha256, 10 hex) of a checkpoint file
    model_sha256 TEXT,
    model_revision TEXT,              -- the hub commit
    model_reason TEXT,                -- why this model
    loras TEXT NOT NULL DEFAULT '[]',       -- JSON: [{name, weight, file, hash}]
    embeddings TEXT NOT NULL DEFAULT '[]',  -- JSON: [{name, file, hash}]
    overrides TEXT NOT NULL DEFAULT '{}',   -- JSON: the fields the user changed ("remix")
    not_honoured TEXT NOT NULL DEFAULT '[]',-- JSON: what could not be done as recorded, and what was done instead
    notes TEXT NOT NULL DEFAULT '[]',       -- JSON: defaults filled in, sizes rounded, ...
    diffusers_version TEXT NOT NULL,
    torch_version TEXT NOT NULL,
    compel_version TEXT,
    device TEXT NOT NULL,
    dtype TEXT NOT NULL,
    attention TEXT,
    seconds REAL NOT NULL,            -- this image's share of its pipeline call
    image_path TEXT NOT NULL,         -- the PNG on this machine (pages serve it by id, never by path)
    image_sha256 TEXT,
    source_image INTEGER NOT NULL DEFAULT 0,  -- 1 when the source image was at hand to compare with
    clip_similarity REAL,             -- cosine of CLIP image embeddings, source vs regenerated
    clip_model TEXT,
    phash_distance INTEGER,           -- Hamming distance of 64-bit perceptual hashes (0 = alike, 32 = unrelated)
    score_note TEXT
);
CREATE INDEX IF NOT EXISTS idx_regenerations_generation ON regenerations(generation_id);

CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    generation_id INTEGER NOT NULL,
    overrides TEXT NOT NULL DEFAULT '{}',   -- JSON: seed, steps, cfg, sampler, width, height
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    worker TEXT,                      -- host:pid of the worker that holds it
    heartbeat_at REAL,                -- unix time of the worker's last sign of life
    lease_expires_at REAL,            -- a running job whose lease has expired is retried (or failed)
    progress REAL NOT NULL DEFAULT 0, -- 0..1
    step INTEGER,
    total_steps INTEGER,
    message TEXT,                     -- what the worker is doing ("loading the model", "step 3 of 20")
    error TEXT,
    regeneration_id INTEGER REFERENCES regenerations(id)
);
CREATE INDEX IF NOT EXISTS idx_jobs_status ON jobs(status, id);

CREATE TABLE IF NOT EXISTS checkpoint_hashes (
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
) WITHOUT ROWID;
"""

REGENERATION_JSON = ("scheduler_config", "loras", "embeddings", "overrides", "not_honoured", "notes")


def runner_path(db_path: str | Path) -> Path:
    """spellbook.db -> spellbook.runner.db"""
    db_path = Path(db_path)
    return db_path.with_name(db_path.stem + ".runner" + (db_path.suffix or ".db"))


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunnerStore:
    """DB.runner.db, created on first use. Each method is one short transaction."""

    def __init__(self, path: str | Path, clock=time.time):
        self.path = Path(path)
        self.clock = clock
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=30000")
        if self.conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            with transaction(self.conn):
                statement = ""
                for line in _SCHEMA.splitlines(keepends=True):
                    statement += line
                    if sqlite3.complete_statement(statement):
                        self.conn.execute(statement)
                        statement = ""
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @classmethod
    def beside(cls, db_path, **options) -> "RunnerStore":
        return cls(runner_path(db_path), **options)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _rows(self, sql: str, params=()) -> list[dict]:
        cursor = self.conn.execute(sql, params)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    # --- regenerations ---------------------------------------------------------------------------

    def add_regeneration(self, record: dict) -> int:
        row = {key: (json.dumps(value, ensure_ascii=False) if key in REGENERATION_JSON else value) for key, value in record.items()}
        row.setdefault("created_at", utc_now())
        columns = ", ".join(row)
        cursor = self.conn.execute(f"INSERT INTO regenerations ({columns}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
        return cursor.lastrowid

    def regeneration(self, regeneration_id: int) -> dict | None:
        rows = self._rows("SELECT * FROM regenerations WHERE id = ?", (regeneration_id,))
        if not rows:
            return None
        record = rows[0]
        for key in REGENERATION_JSON:
            record[key] = json.loads(record[key]) if record.get(key) else ([] if key not in ("scheduler_config", "overrides") else {})
        return record

    def regenerations_of(self, generation_id: int, limit: int = 20) -> list[dict]:
        ids = [row["id"] for row in self._rows("SELECT id FROM regenerations WHERE generation_id = ? ORDER BY id DESC LIMIT ?", (generation_id, limit))]
        return [self.regeneration(i) for i in ids]

    # --- the hash cache (checkpoints.find_checkpoint's `cache`) -----------------------------------

    def get(self, path: str, size: int, mtime_ns: int) -> str | None:
        row = self.conn.execute("SELECT sha256 FROM checkpoint_hashes WHERE path = ? AND size = ? AND mtime_ns = ?", (path, size, mtime_ns)).fetchone()
        return row[0] if row else None

    def put(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO checkpoint_hashes VALUES (?, ?, ?, ?)", (path, size, mtime_ns, sha256))
