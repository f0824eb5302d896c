"""`spellbook serve --enable-runner`: Datasette and the regeneration worker as two child processes.

The server stays light (no torch in it); the worker holds the pipeline. SIGTERM and SIGINT go to
both; when Datasette exits the worker is stopped (SIGTERM: it puts its job back in the queue),
and a worker that dies on its own is started again (its job's lease expires and the job is retried).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

RESTART_PAUSE = 2.0  # seconds before a dead worker is started again
STOP_GRACE = 15.0  # seconds a child has to exit after SIGTERM


def worker_command(db_paths) -> list[str]:
    return [sys.executable, "-m", "spellbook.runner.worker", *[str(p) for p in db_paths]]


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def serve_with_worker(datasette_command: list[str], db_paths) -> int:
    """Run Datasette until it exits (or this process is told to stop); the worker beside it."""
    stopping = []

    def forward(signum, _frame):
        stopping.append(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    worker = subprocess.Popen(worker_command(db_paths))
    server = subprocess.Popen(datasette_command)
    try:
        while not stopping:
            code = server.poll()
            if code is not None:
                return code
            if worker.poll() is not None:
                print(f"spellbook: the regeneration worker exited ({worker.returncode}); starting it again", file=sys.stderr, flush=True)
                time.sleep(RESTART_PAUSE)
                worker = subprocess.Popen(worker_command(db_paths))
            time.sleep(0.2)
        _stop(server)
        return 0 if stopping[0] == signal.SIGTERM else 130
    finally:
        _stop(server)
        _stop(worker)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
