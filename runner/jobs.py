"""The regeneration queue: jobs the web pages add and the worker (runner/worker.py) runs.

A job is queued, then running (held by one worker under a lease it renews at every step), then
done or failed. A worker that dies stops renewing: once the lease expires another worker (or the
same one restarted) takes the job again, up to max_attempts, after which it is failed with the
reason. Nothing lives in memory: a server restart or a killed worker loses no job.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

from spellbook.database.connect import transaction
from spellbook.runner.store import RunnerStore, utc_now

LEASE_SECONDS = 120.0  # a worker silent this long is taken for dead (a step of SDXL at 2048px on a CPU is far shorter)
MAX_ATTEMPTS = 3
STATUSES = ("queued", "running", "done", "failed")

# The remix fields a page may send, with their bounds (the CLI is not bounded this way).
REMIX_LIMITS = {
    "seed": (0, 2**63 - 1),  # SQLite integers (and the generations table) stop at 2^63 - 1
    "steps": (1, 150),
    "cfg": (0.0, 30.0),
    "width": (64, 2048),
    "height": (64, 2048),
}


class JobError(ValueError):
    """A job request that is refused: a field out of bounds or of the wrong type."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def check_remix(fields: dict) -> dict:
    """The remix fields of a request, typed and bounded; empty fields mean "as recorded"."""
    from spellbook.runner.samplers import known_sampler

    out: dict = {}
    for name, (low, high) in REMIX_LIMITS.items():
        raw = fields.get(name)
        if raw is None or str(raw).strip() == "":
            continue
        try:
            value = float(str(raw).strip()) if name == "cfg" else int(str(raw).strip())
        except ValueError:
            raise JobError(f"{name} must be a number, not {str(raw)[:40]!r}") from None
        if not low <= value <= high:
            raise JobError(f"{name} must be between {low:g} and {high:g}")
        out[name] = value
    sampler = str(fields.get("sampler") or "").strip()
    if sampler:
        if len(sampler) > 60:
            raise JobError("sampler name too long")
        if not known_sampler(sampler):
            raise JobError(f"unknown sampler {sampler!r}")
        out["sampler"] = sampler
    if ("width" in out) != ("height" in out):
        raise JobError("give both width and height, or neither")
    return out


@dataclass
class Job:
    id: int
    generation_id: int
    overrides: dict
    status: str
    attempts: int
    max_attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    worker: str | None
    heartbeat_at: float | None
    lease_expires_at: float | None
    progress: float
    step: int | None
    total_steps: int | None
    message: str | None
    error: str | None
    regeneration_id: int | None

    @classmethod
    def from_row(cls, row: dict) -> "Job":
        row = dict(row)
        row["overrides"] = json.loads(row["overrides"] or "{}")
        return cls(**row)

    def as_json(self) -> dict:
        data = dict(self.__dict__)
        data.pop("worker", None)
        return data


class JobQueue:
    def __init__(self, store: RunnerStore, lease_seconds: float = LEASE_SECONDS):
        self.store = store
        self.lease_seconds = lease_seconds

    @property
    def conn(self):
        return self.store.conn

    def now(self) -> float:
        return self.store.clock()

    def add(self, generation_id: int, overrides: dict | None = None, max_attempts: int = MAX_ATTEMPTS) -> Job:
        cursor = self.conn.execute(
            "INSERT INTO jobs (generation_id, overrides, status, max_attempts, created_at, message) VALUES (?, ?, 'queued', ?, ?, 'waiting for the worker')",
            (int(generation_id), json.dumps(overrides or {}), max_attempts, utc_now()),
        )
        return self.get(cursor.lastrowid)

    def get(self, job_id: int) -> Job | None:
        rows = self.store._rows("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def jobs(self, status: str | None = None) -> list[Job]:
        sql, params = "SELECT * FROM jobs", ()
        if status:
            sql, params = sql + " WHERE status = ?", (status,)
        return [Job.from_row(row) for row in self.store._rows(sql + " ORDER BY id", params)]

    def position(self, job: Job) -> int:
        """How many jobs are ahead of this queued one."""
        return self.conn.execute("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running') AND id < ?", (job.id,)).fetchone()[0]

    def reap(self) -> list[int]:
        """Running jobs whose worker went silent: back to the queue, or failed after max_attempts."""
        now = self.now()
        with transaction(self.conn):
            expired = self.conn.execute(
                "SELECT id, attempts, max_attempts, worker FROM jobs WHERE status = 'running' AND lease_expires_at < ?", (now,)
            ).fetchall()
            for job_id, attempts, max_attempts, worker in expired:
                if attempts >= max_attempts:
                    self.conn.execute(
                        "UPDATE jobs SET status = 'failed', finished_at = ?, lease_expires_at = NULL, message = NULL, error = ? WHERE id = ?",
                        (utc_now(), f"the worker stopped without finishing, {attempts} time(s) (last: {worker}); given up after {max_attempts} attempts", job_id),
                    )
                else:
                    self.conn.execute(
                        "UPDATE jobs SET status = 'queued', lease_expires_at = NULL, progress = 0, step = NULL, "
                        "message = ? WHERE id = ?",
                        (f"retrying: the worker stopped during attempt {attempts}", job_id),
                    )
        return [row[0] for row in expired]

    def claim(self, worker: str | None = None) -> Job | None:
        """The oldest queued job, now running under this worker's lease (or None)."""
        self.reap()
        now = self.now()
        with transaction(self.conn):
            row = self.conn.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            self.conn.execute(
                """UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = ?, started_at = ?, heartbeat_at = ?,
                   lease_expires_at = ?, progress = 0, message = 'starting' WHERE id = ?""",
                (worker or worker_name(), utc_now(), now, now + self.lease_seconds, row[0]),
            )
        return self.get(row[0])

    def heartbeat(self, job_id: int, worker: str | None = None, progress: float | None = None, step: int | None = None,
                  total_steps: int | None = None, message: str | None = None) -> bool:
        """Renew the lease and record progress; False when the job is no longer this worker's."""
        now = self.now()
        cursor = self.conn.execute(
            """UPDATE jobs SET heartbeat_at = ?, lease_expires_at = ?, progress = coalesce(?, progress), step = coalesce(?, step),
               total_steps = coalesce(?, total_steps), message = coalesce(?, message)
               WHERE id = ? AND status = 'running' AND worker = ?""",
            (now, now + self.lease_seconds, progress, step, total_steps, message, job_id, worker or worker_name()),
        )
        return cursor.rowcount == 1

    def finish(self, job_id: int, regeneration_id: int, worker: str | None = None) -> None:
        self.conn.execute(
            """UPDATE jobs SET status = 'done', finished_at = ?, progress = 1, regeneration_id = ?, lease_expires_at = NULL,
               message = 'done', error = NULL WHERE id = ? AND worker = ?""",
            (utc_now(), regeneration_id, job_id, worker or worker_name()),
        )

    def fail(self, job_id: int, error: str, worker: str | None = None, retry: bool = False) -> None:
        """A job that failed in the worker: failed for good (a bad model, a bad request), or back
        in the queue when `retry` and attempts remain (a transient error)."""
        job = self.get(job_id)
        if job is None:
            return
        if retry and job.attempts < job.max_attempts:
            self.conn.execute(
                "UPDATE jobs SET status = 'queued', lease_expires_at = NULL, progress = 0, message = ? WHERE id = ? AND worker = ?",
                (f"retrying after: {error[:300]}", job_id, worker or worker_name()),
            )
            return
        self.conn.execute(
            "UPDATE jobs SET status = 'failed', finished_at = ?, lease_expires_at = NULL, message = NULL, error = ? WHERE id = ? AND worker = ?",
            (utc_now(), error[:2000], job_id, worker or worker_name()),
        )
