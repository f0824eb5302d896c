"""`spellbook publish`: the published copy holds nothing of what was removed, and the Dockerfile's
command, run from a fresh venv with the wheel it installs, serves the hosted configuration."""
from __future__ import annotations

import os
import shutil
import sqlite3 as stdlib_sqlite3
import subprocess
import sys
from importlib.metadata import version

import httpx
import pytest
from click.testing import CliRunner

from spellbook.cli import cli
from spellbook.ingest.removals import remove
from spellbook.publish import dockerfile_command
from tests.conftest import DATA_DIR, Server, free_port
from tests.test_removals import TAKEN_DOWN, site_db  # noqa: F401  (the fixture)
from tests.test_similarity import TRAINING, url

pytestmark = [pytest.mark.pages, pytest.mark.slow]

UNIQUE = "zorana"  # the removed training rows are the captions naming her (prompts still do)
ONLY_REMOVED = "an orchard, painting"  # text no row but a removed one holds


@pytest.fixture
def published(site_db, tmp_path):
    db, _ = site_db
    ingest_images(db)
    with stdlib_sqlite3.connect(db) as conn:
        conn.execute("UPDATE training_images SET punsafe = 0.97 WHERE url = ?", (url(10),))  # "a grey wall" is predicted unsafe
    remove(db, "url", [url(i) for i, (c, _) in enumerate(TRAINING) if UNIQUE in c], "the artist asked (request 17)")
    out = tmp_path / "build"
    result = CliRunner().invoke(cli, ["publish", "docker", str(db), "--out", str(out), "--hide-unsafe", "0.9", "--title", "Spellbook (test)"])
    assert result.exit_code == 0, result.output
    return db, out


def ingest_images(db):
    from spellbook.ingest.load import ingest_prompt_files

    ingest_prompt_files(db, [DATA_DIR / "image_metadata"])


def test_the_published_copy_holds_no_byte_of_what_was_removed(published):
    db, out = published
    copy = out / db.name
    data = copy.read_bytes()
    assert ONLY_REMOVED.encode() not in data and url(TAKEN_DOWN).encode() not in data
    assert b"a grey wall" not in data  # hidden as predicted unsafe
    assert str(DATA_DIR).encode() not in data  # no local paths
    with stdlib_sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT count(*) FROM training_images").fetchone()[0] == len(TRAINING) - 4
        assert conn.execute("SELECT count(*) FROM generations WHERE image_path IS NOT NULL").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM image_roots").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM training_images_fts_vocab WHERE term = ?", (UNIQUE,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM generations_fts_vocab WHERE term = ?", (UNIQUE,)).fetchone()[0] > 0  # the prompts stay
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert {r[0] for r in conn.execute("SELECT reason FROM removals")} >= {"the artist asked (request 17)", "predicted unsafe: LAION punsafe at or over 0.9"}
    with stdlib_sqlite3.connect(out / f"{db.stem}.vectors.db") as store:
        assert store.execute("SELECT count(*) FROM vector_items WHERE collection = 'training_image'").fetchone()[0] == len(TRAINING) - 4
    for name in ("Dockerfile", "inspect.json", "metadata.json", "datasette.yaml"):
        assert (out / name).exists(), name
    assert list((out / "wheels").glob("spellbook-*.whl"))
    # Query encoding as `spellbook serve` sets it: two torch threads whose idle OpenMP threads sleep.
    assert "ENV SPELLBOOK_QUERY_THREADS=2 OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=10000\n" in (out / "Dockerfile").read_text()
    command = dockerfile_command(out)
    assert command.startswith("datasette serve --immutable") and "--inspect-file inspect.json" in command and "${PORT:-8001}" in command


def test_cloudrun_and_fly_print_what_they_would_run(site_db):
    db, _ = site_db
    result = CliRunner().invoke(cli, ["publish", "cloudrun", str(db), "--service", "spellbook", "--project", "p1", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would run: gcloud builds submit --tag gcr.io/p1/spellbook" in result.output and "gcloud run deploy spellbook" in result.output
    fly = CliRunner().invoke(cli, ["publish", "fly", str(db), "--app", "my-spellbook", "--dry-run"])
    assert fly.exit_code == 0 and "would run: flyctl deploy --remote-only" in fly.output


def test_the_dockerfiles_command_from_a_fresh_venv_serves_the_hosted_configuration(published, tmp_path):
    db, out = published
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    wheel = next((out / "wheels").glob("spellbook-*.whl"))
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q", "install", str(wheel), f"datasette=={version('datasette')}"], check=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "SPELLBOOK_LOCAL_IMAGES", "SPELLBOOK_RUNNER")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    env["PORT"] = str(port)
    server = Server(command=["sh", "-c", "exec " + dockerfile_command(out)], cwd=out, env=env, port=port)
    try:
        home = server.get("/")
        assert "Spellbook (test)" in home.text and "content-security-policy" in home.headers
        assert home.headers["cache-control"] == "public, max-age=3600"
        assert "sb-tile" in server.get("/-/search?q=fox").text
        name = db.stem
        assert httpx.get(f"{server.url}/{name}?sql=select+1", timeout=10, follow_redirects=True).status_code == 403  # arbitrary SQL off (1.0 redirects to /-/query first)
        assert httpx.get(f"{server.url}/{name}.db", timeout=10).status_code in (403, 404)  # no download
        assert server.get(f"/{name}/top_domains.json").json()["rows"]  # the canned queries stay
        assert server.get(f"/{name}/provenance.json").json()
        assert httpx.get(f"{server.url}/-/prompt/1/regenerate", timeout=10).status_code == 404  # no runner
        assert httpx.get(f"{server.url}/-/prompt/1/image", timeout=10).status_code == 404  # no local images
        key = server.get(f"/{name}/training_images.json?_shape=array&_size=1").json()[0]["key"]
        assert httpx.get(f"{server.url}/-/image/{key}", timeout=10).status_code == 302
        with stdlib_sqlite3.connect(out / db.name) as conn:
            (removed_key,), = conn.execute("SELECT key FROM removed_rows WHERE item = 'training_image' LIMIT 1").fetchall()
        gone = httpx.get(f"{server.url}/-/image/{removed_key}", timeout=10)
        assert gone.status_code == 410 and "request 17" in gone.text
    finally:
        server.stop()
