"""The regeneration queue: leases, retries, failures, a restart, and a worker killed mid-job."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from spellbook.runner.jobs import JobError, JobQueue, check_remix
from spellbook.runner.store import RunnerStore, runner_path
from tests.tiny_diffusion import generation_id, one_thread, runner_db, runner_db_template, tiny_models  # noqa: F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def test_runner_db_sits_beside_the_database(tmp_path):
    assert runner_path(tmp_path / "spellbook.db") == tmp_path / "spellbook.runner.db"
    assert runner_path(tmp_path / "demo") == tmp_path / "demo.runner.db"
    store = RunnerStore.beside(tmp_path / "spellbook.db")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_lease_expiry_retries_then_fails_with_the_reason(tmp_path):
    clock = Clock()
    queue = JobQueue(RunnerStore(tmp_path / "x.runner.db", clock=clock), lease_seconds=10)
    job = queue.add(5, {"seed": 1}, max_attempts=2)
    assert (job.status, job.attempts, job.overrides) == ("queued", 0, {"seed": 1})
    claimed = queue.claim("worker-a")
    assert (claimed.id, claimed.status, claimed.attempts) == (job.id, "running", 1)
    assert queue.claim("worker-b") is None  # held
    clock.now += 8
    assert queue.heartbeat(job.id, "worker-a", progress=0.5, step=5, total_steps=10)  # renews the lease
    clock.now += 8
    assert queue.claim("worker-b") is None  # 16 s after the claim, 8 after the heartbeat: still held
    assert not queue.heartbeat(job.id, "worker-b")  # only its holder renews it
    clock.now += 11  # worker-a died
    retried = queue.claim("worker-b")
    assert (retried.id, retried.attempts, retried.worker, retried.progress) == (job.id, 2, "worker-b", 0)
    clock.now += 11  # worker-b died too: no attempts left
    assert queue.claim("worker-c") is None
    failed = queue.get(job.id)
    assert failed.status == "failed" and "stopped without finishing, 2 time(s) (last: worker-b); given up after 2 attempts" in failed.error


def test_done_failed_and_transient_errors(tmp_path):
    queue = JobQueue(RunnerStore(tmp_path / "x.runner.db"))
    first, second, third = queue.add(1), queue.add(2), queue.add(3)
    assert queue.position(third) == 2
    assert queue.claim("w").id == first.id
    queue.finish(first.id, regeneration_id=42, worker="w")
    assert (queue.get(first.id).status, queue.get(first.id).regeneration_id, queue.get(first.id).progress) == ("done", 42, 1)
    assert queue.claim("w").id == second.id
    queue.fail(second.id, "CUDA out of memory", worker="w", retry=True)
    assert queue.get(second.id).status == "queued" and "retrying after: CUDA out of memory" in queue.get(second.id).message
    assert queue.claim("w").id == second.id
    queue.fail(second.id, "no checkpoint matches", worker="w")
    assert (queue.get(second.id).status, queue.get(second.id).error) == ("failed", "no checkpoint matches")


def test_the_queue_survives_a_restart(tmp_path):
    path = tmp_path / "spellbook.runner.db"
    store = RunnerStore(path)
    queue = JobQueue(store)
    started, waiting = queue.add(1, {"steps": 4}), queue.add(2)
    assert queue.claim("old-worker").id == started.id
    store.close()  # the server and its worker stop: nothing but the file remains
    clock = Clock()
    clock.now = time.time() + 10_000  # ...and come back after the old lease ran out
    reopened = JobQueue(RunnerStore(path, clock=clock))
    assert {job.id: job.status for job in reopened.jobs()} == {started.id: "running", waiting.id: "queued"}
    first, second = reopened.claim("new-worker"), reopened.claim("new-worker")
    assert (first.id, first.attempts, first.overrides) == (started.id, 2, {"steps": 4})
    assert (second.id, second.attempts) == (waiting.id, 1)


def test_remix_fields_are_checked_and_bounded():
    assert check_remix({"seed": "42", "steps": "30", "cfg": "7.5", "sampler": "DPM++ 2M Karras", "width": "512", "height": "768"}) == {
        "seed": 42, "steps": 30, "cfg": 7.5, "sampler": "DPM++ 2M Karras", "width": 512, "height": 768}
    assert check_remix({"seed": "", "steps": " ", "sampler": ""}) == {}
    assert check_remix({"seed": str(2**63 - 1)}) == {"seed": 2**63 - 1}
    with pytest.raises(JobError, match="seed must be between"):
        check_remix({"seed": str(2**63)})
    for fields, message in (({"steps": "151"}, "steps must be between 1 and 150"), ({"width": "4096", "height": "512"}, "width must be between"),
                            ({"cfg": "abc"}, "cfg must be a number"), ({"sampler": "DPM fast"}, "unknown sampler"),
                            ({"width": "512"}, "both width and height"), ({"seed": "-1"}, "seed must be between")):
        with pytest.raises(JobError, match=message):
            check_remix(fields)


def test_worker_runs_jobs_with_the_pipeline_kept_loaded(runner_db, tiny_models, one_thread):
    from spellbook.runner.regenerate import RunnerOptions
    from spellbook.runner.worker import Worker

    castle = generation_id(runner_db, "castle.png")
    queue = JobQueue(RunnerStore.beside(runner_db))
    good = queue.add(castle, {"steps": 3, "seed": 11})
    missing = queue.add(999_999)
    worker = Worker([runner_db], RunnerOptions(model=str(tiny_models["sd1"]), device="cpu", score=False), log=lambda *_: None)
    assert worker.run_one() and worker.run_one() and not worker.run_one()
    done, failed = queue.get(good.id), queue.get(missing.id)
    assert (done.status, done.progress, done.step, done.total_steps) == ("done", 1.0, 3, 3)
    record = queue.store.regeneration(done.regeneration_id)
    assert (record["seed"], record["steps"], record["job_id"], record["generation_id"]) == (11, 3, good.id, castle)
    assert failed.status == "failed" and "no generation 999999" in failed.error


def test_a_killed_worker_leaves_a_job_that_is_retried(runner_db, tiny_models):
    """kill -9 in the middle of a job: its lease runs out and the next worker runs it to the end."""
    castle = generation_id(runner_db, "castle.png")
    queue = JobQueue(RunnerStore.beside(runner_db))
    job = queue.add(castle, {"steps": 150, "width": 256, "height": 256, "seed": 3})
    env = {**os.environ, "SPELLBOOK_RUNNER_MODEL": str(tiny_models["sd1"]), "SPELLBOOK_RUNNER_DEVICE": "cpu", "SPELLBOOK_RUNNER_LEASE": "2",
           "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "spellbook.runner.worker", str(runner_db), "--poll", "0.2"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (queue.get(job.id).step or 0) < 2:
            time.sleep(0.1)
        assert (queue.get(job.id).step or 0) >= 2, "the worker never got going"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    interrupted = queue.get(job.id)
    assert interrupted.status == "running" and interrupted.attempts == 1 and interrupted.progress < 1
    time.sleep(2.2)  # the dead worker's lease runs out
    queue.reap()
    assert queue.get(job.id).status == "queued" and "retrying" in queue.get(job.id).message

    from spellbook.runner.regenerate import RunnerOptions
    from spellbook.runner.worker import Worker

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = Worker([runner_db], RunnerOptions(model=str(tiny_models["sd1"]), device="cpu", score=False), log=lambda *_: None)
        queue.store.conn.execute("UPDATE jobs SET overrides = ? WHERE id = ?", ('{"steps": 3, "seed": 3}', job.id))  # finish it quickly
        assert again.run_one()
    finally:
        torch.set_num_threads(threads)
    finished = queue.get(job.id)
    assert (finished.status, finished.attempts) == ("done", 2)
