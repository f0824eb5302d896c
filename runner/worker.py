"""The worker behind `spellbook serve --enable-runner`: takes queued regenerations from each
database's runner store (DB.runner.db) and runs them, with the pipeline kept loaded between jobs.

    python -m spellbook.runner.worker spellbook.db [--poll 1.0] [--once]

Its settings come from the environment, which `spellbook serve` passes on: SPELLBOOK_RUNNER_MODEL,
SPELLBOOK_MODELS_DIR, SPELLBOOK_LORA_DIR, SPELLBOOK_EMBEDDINGS_DIR, SPELLBOOK_RUNNER_CONFIG,
SPELLBOOK_RUNNER_DEVICE, SPELLBOOK_RUNNER_DTYPE, SPELLBOOK_RUNNER_OUT, SPELLBOOK_RUNNER_DOWNLOAD=1,
SPELLBOOK_RUNNER_COMPILE=1, and SPELLBOOK_RUNNER_LEASE (seconds; runner/jobs.py's default). Each step renews the job's lease; a worker that is killed leaves a
lease that expires, and the job is run again (or failed after its attempts): runner/jobs.py.
On SIGTERM or SIGINT it stops the job it is on and puts it back in the queue.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from spellbook.runner.jobs import JobQueue, worker_name
from spellbook.runner.store import RunnerStore


class Worker:
    def __init__(self, db_paths, options=None, poll: float = 1.0, lease_seconds: float | None = None, log=print):
        from spellbook.runner.regenerate import RunnerOptions

        self.db_paths = [Path(p) for p in db_paths]
        self.options = options or RunnerOptions.from_environment()
        self.poll = poll
        self.name = worker_name()
        self.stopping = False
        self.log = log
        lease_seconds = lease_seconds or float(os.environ.get("SPELLBOOK_RUNNER_LEASE") or 0) or None
        self.stores = {path: RunnerStore.beside(path) for path in self.db_paths}
        self.queues = {path: JobQueue(store, **({"lease_seconds": lease_seconds} if lease_seconds else {})) for path, store in self.stores.items()}

    def stop(self, *_signal) -> None:
        self.stopping = True

    def run_one(self) -> bool:
        """Claim and run one job from any database; False when every queue is empty."""
        for path, queue in self.queues.items():
            job = queue.claim(self.name)
            if job is None:
                continue
            self._run(path, queue, job)
            return True
        return False

    def _run(self, path: Path, queue: JobQueue, job) -> None:
        from spellbook.runner.pipelines import RunnerError
        from spellbook.runner.regenerate import Overrides, regenerate

        self.log(f"job {job.id}: generation {job.generation_id}, attempt {job.attempts} of {job.max_attempts}")
        last = [0.0]

        def progress(step: int, total: int):
            if self.stopping:
                return False
            now = time.monotonic()
            if now - last[0] < 0.25 and step < total:
                return True  # renewing the lease at every step of a fast model would be mostly writes
            last[0] = now
            return queue.heartbeat(job.id, self.name, progress=step / total, step=step, total_steps=total, message=f"step {step} of {total}")

        queue.heartbeat(job.id, self.name, message="loading the model")
        try:
            results = regenerate(path, [job.generation_id], Overrides.from_dict(job.overrides), self.options, progress=progress, job_id=job.id)
        except RunnerError as error:
            queue.fail(job.id, str(error), self.name)
            self.log(f"job {job.id}: failed: {error}")
            return
        except Exception as error:  # out of memory, a driver error: worth another attempt
            queue.fail(job.id, f"{type(error).__name__}: {error}", self.name, retry=True)
            self.log(f"job {job.id}: error, will retry if attempts remain:\n{traceback.format_exc()}")
            return
        result = results[0]
        if self.stopping and result.error:
            self._release(queue, job)
        elif result.error:
            queue.fail(job.id, result.error, self.name)
            self.log(f"job {job.id}: failed: {result.error}")
        else:
            queue.finish(job.id, result.regeneration_id, self.name)
            self.log(f"job {job.id}: done: {result.image_path}")

    def _release(self, queue: JobQueue, job) -> None:
        """Back to the queue at once (this attempt does not count): the worker was asked to stop."""
        queue.conn.execute(
            "UPDATE jobs SET status = 'queued', attempts = max(attempts - 1, 0), lease_expires_at = NULL, progress = 0, "
            "message = 'waiting for the worker (it was stopped)' WHERE id = ? AND worker = ?",
            (job.id, self.name),
        )
        self.log(f"job {job.id}: put back in the queue")

    def serve(self, once: bool = False) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.log(f"worker {self.name}: watching {', '.join(str(p) for p in self.db_paths)}")
        while not self.stopping:
            worked = self.run_one()
            if once and not worked:
                break
            if not worked:
                time.sleep(self.poll)
        for store in self.stores.values():
            store.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spellbook.runner.worker", description="Run queued regenerations.")
    parser.add_argument("dbs", nargs="+", type=Path)
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between looks at an empty queue")
    parser.add_argument("--once", action="store_true", help="stop when the queues are empty")
    args = parser.parse_args(argv)
    Worker(args.dbs, poll=args.poll, log=lambda message: print(message, flush=True)).serve(once=args.once)
    return 0


if __name__ == "__main__":
    sys.exit(main())
