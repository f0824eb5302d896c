"""The runner in Datasette: absent by default, and with --enable-runner a Regenerate button and remix
form that queue jobs, a job page that follows them, and the result beside the original."""
from __future__ import annotations

import os
import re
import time

import pytest

from tests.conftest import spellbook_datasette
from tests.tiny_diffusion import generation_id, one_thread, runner_db, runner_db_template, tiny_models  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.pages, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

ROUTES = ["/-/regenerate/1", "/-/regenerate/1.json", "/-/regenerate/1/image"]


@pytest.fixture
def enabled(monkeypatch):
    """What `spellbook serve --enable-runner` sets for Datasette (local images are on in `spellbook serve`)."""
    monkeypatch.setenv("SPELLBOOK_RUNNER", "1")
    monkeypatch.setenv("SPELLBOOK_LOCAL_IMAGES", "1")


@pytest.fixture
def sample_db(tmp_path):
    """The bundled images with their metadata (files on disk): no model needed, so these pages are
    also tested where torch is not installed (`make test-datasette-1`)."""
    from spellbook.ingest.load import ingest_prompt_files
    from tests.conftest import DATA_DIR

    db = tmp_path / "spellbook.db"
    assert not ingest_prompt_files(db, [DATA_DIR / "image_metadata"]).failed
    return db


def sample_id(db) -> int:
    from spellbook.database.connect import connect_readonly

    conn = connect_readonly(db)
    try:
        return conn.execute("SELECT id FROM generations WHERE prompt = 'a circle'").fetchone()[0]
    finally:
        conn.close()


async def test_disabled_by_default(sample_db, monkeypatch):
    monkeypatch.delenv("SPELLBOOK_RUNNER", raising=False)
    ds = spellbook_datasette(sample_db)
    circle = sample_id(sample_db)
    page = (await ds.client.get(f"/-/prompt/{circle}")).text
    assert "Regenerate" not in page and "sb-regenerate-form" not in page
    for path in ROUTES + [f"/-/prompt/{circle}/regenerate"]:
        assert (await ds.client.get(path)).status_code == 404, path
    assert (await ds.client.post(f"/-/prompt/{circle}/regenerate", data={})).status_code in (403, 404)  # CSRF or 404: never queued
    from spellbook.runner.store import runner_path

    assert not runner_path(sample_db).exists()
    from spellbook.site import default_config

    assert not (default_config().get("plugins") or {}).get("spellbook", {}).get("runner")  # and the packaged settings leave it off


async def csrf_post(ds, page_path, post_path, data, headers=None):
    """A post as the prompt page's form makes it: its token, and the cookie where Datasette sets one (0.65)."""
    page = await ds.client.get(page_path)
    token = re.search(r'name="csrftoken" value="([^"]*)"', page.text).group(1)
    cookies = {"ds_csrftoken": page.cookies["ds_csrftoken"]} if "ds_csrftoken" in page.cookies else None
    return await ds.client.post(post_path, data={"csrftoken": token, **data}, cookies=cookies, headers=headers)


async def test_queue_follow_and_show_a_job(sample_db, enabled, tmp_path):
    from PIL import Image

    from spellbook.runner.jobs import JobQueue
    from spellbook.runner.metadata import infotext, save_png
    from spellbook.runner.store import RunnerStore
    from spellbook.site import datasette_1

    ds = spellbook_datasette(sample_db)
    circle = sample_id(sample_db)
    page = (await ds.client.get(f"/-/prompt/{circle}")).text
    assert 'class="sb-regenerate-form"' in page and 'name="csrftoken"' in page and '<option value="DPM++ 2M Karras">' in page
    post = f"/-/prompt/{circle}/regenerate"
    for headers in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"}):
        assert (await csrf_post(ds, f"/-/prompt/{circle}", post, {"remix": "0"}, headers=headers)).status_code == 403, headers
    if not datasette_1():  # asgi-csrf lets cookie-less posts through: the runner does not
        assert (await ds.client.post(post, data={"remix": "0"})).status_code == 403
        forged = await ds.client.post(post, data={"remix": "0", "csrftoken": "x"}, cookies={"ds_csrftoken": "y"})
        assert forged.status_code == 403

    bad = await csrf_post(ds, f"/-/prompt/{circle}", post, {"remix": "1", "steps": "500"})
    assert bad.status_code == 400 and "steps must be between 1 and 150" in bad.text
    plain = await csrf_post(ds, f"/-/prompt/{circle}", post, {"remix": "0", "steps": "500"})  # the plain button ignores the fields
    assert plain.status_code == 302
    remixed = await csrf_post(ds, f"/-/prompt/{circle}", post, {"remix": "1", "seed": "77", "steps": "3", "cfg": "", "sampler": "Euler a",
                                                                 "width": "", "height": ""})
    job_url = remixed.headers["location"]
    assert re.fullmatch(r"/-/regenerate/\d+", job_url)
    queue = JobQueue(RunnerStore.beside(sample_db))
    assert [(job.generation_id, job.overrides) for job in queue.jobs()] == [(circle, {}), (circle, {"seed": 77, "steps": 3, "sampler": "Euler a"})]

    waiting = (await ds.client.get(job_url)).text
    assert 'class="sb-job-progress"' in waiting and "Queued behind 1 job" in waiting and "the original image" in waiting
    state = (await ds.client.get(job_url + ".json")).json()
    assert state["job"]["status"] == "queued" and state["queue_position"] == 1 and state["regeneration"] is None
    assert (await ds.client.get(job_url + "/image")).status_code == 404

    # What a worker leaves when it is done (test_runner_jobs.py runs a real one): a PNG and its row.
    job = queue.claim("test-worker")
    queue.claim("test-worker")
    png = tmp_path / "regenerations" / "regeneration-000001.png"
    png.parent.mkdir()
    save_png(Image.new("RGB", (64, 64), (10, 200, 30)), png, infotext("a circle", None, {"Steps": 3, "Seed": 77, "Size": "64x64"}))
    regeneration = queue.store.add_regeneration({
        "generation_id": circle, "job_id": job.id, "prompt": "a circle", "seed": 77, "steps": 3, "cfg": 7.0, "sampler": "k_euler_ancestral",
        "scheduler_class": "EulerAncestralDiscreteScheduler", "scheduler_config": {}, "width": 64, "height": 64, "batch_size": 1,
        "model": "tiny-sd1", "model_source": "folder", "model_family": "sd1", "model_reason": "given with --model",
        "not_honoured": [f"LoRA x: {tmp_path}/loras/x.safetensors could not be loaded"], "diffusers_version": "0", "torch_version": "0",
        "device": "cpu", "dtype": "float32", "seconds": 0.1, "image_path": str(png), "source_image": 1, "phash_distance": 30,
        "score_note": "regenerated with the same settings, not an exact reproduction: perceptual-hash distance 30 of 64"})
    queue.finish(job.id, regeneration, "test-worker")
    queue.fail(job.id + 1, f"cannot load {tmp_path}/models/x.safetensors: gone", "test-worker")

    done = (await ds.client.get(f"/-/regenerate/{job.id}.json")).json()
    assert done["job"]["status"] == "done" and done["regeneration"]["seed"] == 77 and done["regeneration"]["sampler_a1111"] == "Euler a"
    assert "image_path" not in done["regeneration"] and str(tmp_path) not in str(done)  # no path on this machine is ever shown
    assert "…/x.safetensors could not be loaded" in done["regeneration"]["not_honoured"][0]
    result = (await ds.client.get(f"/-/regenerate/{job.id}")).text
    assert 'class="sb-result-image"' in result and "Download the PNG" in result and "regenerated with the same settings" in result
    assert "<th>Seed</th><td>77</td>" in result and "<td>Euler a <span" in result and str(tmp_path) not in result
    image = await ds.client.get(done["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png" and image.content == png.read_bytes()
    download = await ds.client.get(done["download_url"])
    assert download.headers["content-disposition"] == f'attachment; filename="spellbook-{circle}-regeneration-{regeneration}.png"'
    failed = (await ds.client.get(f"/-/regenerate/{job.id + 1}")).text
    assert "Failed: cannot load …/x.safetensors: gone" in failed and str(tmp_path) not in failed
    assert (await ds.client.get("/-/regenerate/999999.json")).status_code == 404


async def test_a_real_worker_result_on_the_page(runner_db, tiny_models, enabled, one_thread):
    from spellbook.runner.jobs import JobQueue
    from spellbook.runner.regenerate import RunnerOptions
    from spellbook.runner.store import RunnerStore
    from spellbook.runner.worker import Worker

    ds = spellbook_datasette(runner_db)
    castle = generation_id(runner_db, "castle.png")
    queued = await csrf_post(ds, f"/-/prompt/{castle}", f"/-/prompt/{castle}/regenerate", {"remix": "1", "seed": "5", "steps": "3"})
    job_url = queued.headers["location"]
    worker = Worker([runner_db], RunnerOptions(model=str(tiny_models["sd1"]), device="cpu", lora_dir=str(tiny_models["loras"]),
                                               embeddings_dir=str(tiny_models["embeddings"])), log=lambda *_: None)
    assert worker.run_one()
    done = (await ds.client.get(job_url + ".json")).json()
    assert done["job"]["status"] == "done" and done["regeneration"]["seed"] == 5 and done["regeneration"]["loras"][0]["name"] == "tinyStyle"
    result = (await ds.client.get(job_url)).text
    assert "tinyStyle (0.8)" in result and "hires fix" in result and "Clip skip" in result
    job = JobQueue(RunnerStore.beside(runner_db)).get(int(job_url.rsplit("/", 1)[1]))
    assert (await ds.client.get(done["image_url"])).content == open(RunnerStore.beside(runner_db).regeneration(job.regeneration_id)["image_path"], "rb").read()


# --- the browser, against `spellbook serve --enable-runner` and its worker ----------------------------


def _children(pid: int) -> set[int]:
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            found |= {int(child) for child in open(f"/proc/{pid}/task/{task}/children").read().split()}
        except OSError:
            pass
    return found


@pytest.mark.browser
def test_regenerate_in_the_browser(browser, runner_db, tiny_models):
    from tests.conftest import Server

    env = {**os.environ, "SPELLBOOK_RUNNER_MODEL": str(tiny_models["sd1"]), "SPELLBOOK_RUNNER_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "SPELLBOOK_LORA_DIR": str(tiny_models["loras"])}
    env.pop("SPELLBOOK_RUNNER", None)
    server = Server(command=[*Server.spellbook(), "serve", str(runner_db), "--enable-runner"], env=env)
    try:
        children = _children(server.process.pid)
        assert len(children) == 2  # Datasette and the worker
        castle = generation_id(runner_db, "castle.png")
        page = browser.new_page(accept_downloads=True)
        page.goto(f"{server.url}/-/prompt/{castle}")
        page.click("button.sb-regenerate")
        page.wait_for_url("**/-/regenerate/*")
        assert page.locator(".sb-original img").count() == 1
        page.wait_for_selector(".sb-result-image", timeout=60_000)  # the page follows the job and shows the result
        page.wait_for_function("document.querySelector('.sb-result-image').naturalWidth === 64")
        params = page.locator(".sb-result-params").inner_text()
        assert "12345" in params and "tinySD1" not in params and "tiny-sd1" in params
        assert "hires fix" in page.locator(".sb-not-honoured").inner_text()
        with page.expect_download() as download:
            page.click("a.sb-download")
        assert download.value.suggested_filename.startswith(f"spellbook-{castle}-regeneration-")

        # Remix: another seed and fewer steps
        page.goto(f"{server.url}/-/prompt/{castle}")
        page.click(".sb-remix summary")
        page.fill("input[name=seed]", "4242")
        page.fill("input[name=steps]", "2")
        page.select_option("select[name=sampler]", "Euler a")
        page.click("button.sb-remix-submit")
        page.wait_for_selector(".sb-result-image", timeout=60_000)
        remixed = page.locator(".sb-result-params").inner_text()
        assert "4242" in remixed and "Euler a" in remixed and "EulerAncestralDiscreteScheduler" in remixed
    finally:
        server.stop()
    deadline = time.time() + 20
    while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in children):
        time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z" for pid in children), \
        "the worker and Datasette stop with the server"
