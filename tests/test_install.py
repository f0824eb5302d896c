"""A non-editable install in a fresh venv, used from outside the checkout: one `spellbook` package
with its templates, static files, metadata and vocabulary, and nothing else of ours in site-packages.

The source is copied and the copy deleted after `pip install`, so nothing can be imported from a
checkout. The venv gets the same Datasette line as the one running the tests (0.65 under
`make test`, the 1.0 alpha under `make test-datasette-1`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR, REPO, Server

pytestmark = [pytest.mark.slow, pytest.mark.pages]

_NOT_SOURCE = shutil.ignore_patterns(".venv*", ".git", "build", "*.egg-info", "__pycache__", "cache", "*.db", "*.db-*", ".screens", ".pytest_cache")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("installed")
    source, venv = root / "source", root / "venv"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-warn-script-location"]
    subprocess.run([*pip, str(source), f"datasette=={version('datasette')}"], check=True, cwd=root)
    shutil.rmtree(source)
    work = root / "work"  # a folder with nothing of Spellbook in it
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    db = work / "demo.db"
    run = dict(check=True, cwd=work, env=env, capture_output=True, text=True)
    # The demo database, built by the installed package from the checkout's bundled samples.
    built = subprocess.run([str(python), "-m", "spellbook.ingest.demo", str(db), str(DATA_DIR)], **run)
    assert "built" in built.stdout
    site_packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], **run).stdout.strip())
    return {"venv": venv, "python": python, "db": db, "work": work, "env": env, "site": site_packages, "run": run}


def test_site_packages_holds_one_package_with_its_data(installed):
    site = installed["site"]
    ours = {"ingest", "plugins", "runner", "queries", "database", "text", "templates", "tests", "bench", "data"}
    assert not ours & {path.name for path in site.iterdir()}
    package = site / "spellbook"
    for data in ["metadata.yml", "datasette.yaml", "templates/index.html", "templates/_spellbook_macros.html",
                 "plugins/static/spellbook.css", "plugins/static/spellbook.js", "text/unicode61.json", "text/vocab/artists.txt"]:
        assert (package / data).is_file(), data
    assert not any((package / folder).exists() for folder in ("tests", "bench", "data", "docs"))
    modules = subprocess.run([str(installed["python"]), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"], **installed["run"]).stdout
    assert modules.strip() == "True"  # serving needs no torch: the clip and runner extras are not installed
    where = subprocess.run([str(installed["python"]), "-c", "import spellbook.queries.search as m; print(m.__file__)"], **installed["run"]).stdout
    assert where.startswith(str(package))


def test_installed_commands_work_outside_the_checkout(installed):
    spellbook = str(installed["venv"] / "bin" / "spellbook")
    db = installed["work"] / "more.db"
    result = subprocess.run([spellbook, "ingest", "laion", str(db), str(DATA_DIR / "laion" / "laion_url_text_10000.parquet"), "--no-progress"], **installed["run"])
    assert "inserted 9,999" in result.stdout
    result = subprocess.run([spellbook, "ingest", "prompts", str(db), str(DATA_DIR / "prompts" / "diffusiondb_sample_metadata_schema.parquet"), "--no-progress"], **installed["run"])
    assert "inserted 999" in result.stdout  # keyword extraction found the packaged vocabulary
    failed = subprocess.run([spellbook, "synth", "laion", str(installed["work"] / "s.parquet"), "--rows", "10"], cwd=installed["work"], env=installed["env"], capture_output=True, text=True)
    assert failed.returncode == 1 and "checkout's data/ folder" in failed.stderr


PAGES = {
    "/": 'class="sb-search"',
    "/-/search?q=painting": "sb-tile",
    "/-/domains?q=painting": "sb-bars",
    "/-/prompts?q=portrait": "sb-tile",
    "/-/artist/greg%20rutkowski": "In the training data",
    "/-/static-plugins/spellbook/spellbook.css": ".sb-tile",
    "/-/similar?q=painting": "Similarity search is not available here",  # no torch here, and no vectors: said plainly
}


@pytest.mark.parametrize("command", ["spellbook serve", "datasette serve"])
def test_installed_package_serves_its_pages(installed, command):
    """`spellbook serve` and plain `datasette serve` (the entry points alone) show the same pages."""
    program, verb = command.split()
    server = Server(command=[str(installed["venv"] / "bin" / program), verb, str(installed["db"])], cwd=installed["work"], env=installed["env"])
    try:
        for path, marker in PAGES.items():
            assert marker in server.get(path).text, path
        assert "/-/static-plugins/spellbook/spellbook.css" in server.get("/").text
    finally:
        server.stop()
