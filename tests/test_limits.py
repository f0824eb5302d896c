"""Bounded work per request, through the real server (`spellbook serve` on a loopback port).

Each test is a regression test for a way one request could occupy the server or leak what it
should not: no time limit on Spellbook's pages, an unbounded `q`, one-letter prefixes, keys beyond
SQLite's integers, CSV exports built in memory and cut silently, permissions ignored by the custom
routes, and a server that would not stop while a request was running.
"""
from __future__ import annotations

import csv
import io
import time

import httpx
import pytest
import yaml

from spellbook.ingest.load import ingest_prompt_files
from spellbook.site import CONFIG
from tests.conftest import DATA_DIR, Server

pytestmark = pytest.mark.pages


def config_file(tmp_path, name: str, **changes) -> str:
    """Spellbook's datasette.yaml with plugin settings changed and extra top-level blocks."""
    config = yaml.safe_load(CONFIG.read_text())
    config["plugins"]["spellbook"].update(changes.pop("spellbook", {}))
    config.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def served(clustered_db):
    """The clustered training set (200,000 matches of one word), served as `spellbook serve` does."""
    server = Server(clustered_db)
    yield server
    server.stop()


def test_a_slow_page_answers_503_and_the_server_stays_responsive(clustered_db, tmp_path):
    config = config_file(tmp_path, "fast.yaml", spellbook={"time_limit_ms": 40})
    served = Server(command=[*Server.spellbook(), "serve", str(clustered_db), "--config", config])
    try:
        _slow_page_answers_503(served)
    finally:
        served.stop()


def _slow_page_answers_503(served):
    started = time.perf_counter()
    response = httpx.get(served.url + "/-/domains?q=quokka&exact=1", timeout=30)  # counts all 200,000 matches
    assert response.status_code == 503 and "took too long" in response.text
    assert response.headers["retry-after"] == "30"
    assert time.perf_counter() - started < 5
    assert served.get("/").status_code == 200  # the other threads kept serving
    data = httpx.get(served.url + "/-/domains.json?q=quokka&exact=1", timeout=30)
    assert data.status_code == 503 and data.json()["title"] == "That took too long"


def test_a_huge_q_is_refused_at_once(served):
    started = time.perf_counter()
    for path in ("/-/search", "/-/search.json", "/-/domains", "/-/prompts"):
        response = httpx.get(served.url + path, params={"q": "the art of " * 300}, timeout=10)
        assert response.status_code == 400 and "too long" in response.text, path
    assert time.perf_counter() - started < 5
    assert httpx.get(served.url + "/-/artist/" + "x" * 5_000, timeout=10).status_code == 400


def test_a_prefix_needs_three_letters(served):
    for q in ("a*", "qu*", "quokka p*"):
        response = httpx.get(served.url + "/-/search", params={"q": q}, timeout=10)
        assert response.status_code == 400 and "at least 3 letters" in response.text, q
    assert served.get("/-/search?q=quo*").status_code == 200


def test_keys_beyond_sqlites_integers_are_not_found(served):
    for key in ("9999999999999999999", "-9999999999999999999", "9223372036854775808"):
        assert httpx.get(served.url + "/-/image/" + key, timeout=10).status_code == 404, key
    assert httpx.get(served.url + "/-/prompt/9999999999999999999.json", timeout=10).status_code == 404


def test_csv_exports_stream_and_say_when_they_were_cut(served):
    with httpx.stream("GET", served.url + "/-/artist/greg%20rutkowski.csv", timeout=60) as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers  # streamed, not built whole
        assert response.headers["x-spellbook-truncated"].startswith("the first 100000 rows")
        assert "first-100000" in response.headers["content-disposition"]
        body = response.read().decode()
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0][:3] == ["id", "key", "url"] and len(rows) == 100_001
    assert len({row[0] for row in rows[1:]}) == 100_000


@pytest.fixture(scope="module")
def both_sides_db(tmp_path_factory):
    from spellbook.ingest.load import ingest_training_files
    from tests.conftest import URL_TEXT

    folder = tmp_path_factory.mktemp("sides")
    db = folder / "sides.db"
    ingest_training_files(db, [URL_TEXT])
    ingest_prompt_files(db, [DATA_DIR / "prompts" / "diffusiondb_sample_metadata_schema.parquet", DATA_DIR / "image_metadata"])
    return db


@pytest.mark.parametrize(
    "locked, paths",
    [
        ("generations", ["/-/prompt/1.json", "/-/prompt/1", "/-/prompts?q=castle", "/-/prompts.json", "/-/keyword/highly%20detailed", "/-/artist/greg%20rutkowski.csv?side=prompts"]),
        ("training_images", ["/-/search?q=cat", "/-/search.json?q=cat", "/-/domains?q=cat", "/-/artist/greg%20rutkowski.json", "/-/image/1", "/-/artist/greg%20rutkowski.csv"]),
    ],
)
def test_custom_routes_check_datasettes_view_permissions(both_sides_db, tmp_path, locked, paths):
    config = config_file(tmp_path, "locked.yaml", databases={both_sides_db.stem: {"tables": {locked: {"allow": False}}}})
    server = Server(command=[*Server.spellbook(), "serve", str(both_sides_db), "--config", config])
    try:
        assert server.get("/").status_code == 200
        for path in paths:
            response = httpx.get(server.url + path, timeout=10)
            assert response.status_code == 403, (path, response.status_code)
            assert "user_hash" not in response.text and "image_path" not in response.text
        assert httpx.get(server.url + f"/{both_sides_db.stem}/{locked}", timeout=10).status_code == 403  # Datasette's own view agrees
    finally:
        server.stop()


def test_the_server_stops_promptly_after_hostile_requests(clustered_db):
    """A 14 kB query (2,000 terms, each a 200,000-long doclist) used to keep a thread busy for half
    a minute (a 100 kB one for twelve), and the server waited for it on SIGTERM."""
    server = Server(command=[*Server.spellbook(), "serve", str(clustered_db)])
    try:
        for q in ("quokka " * 2_000, "quokka quokkas pokémon " * 250):
            try:
                httpx.get(server.url + "/-/search", params={"q": q}, timeout=1)
            except httpx.TimeoutException:
                pass  # the old behaviour: the request is still running
    finally:
        started = time.perf_counter()
        server.stop()  # SIGTERM, then waits up to 10 s before killing
        stopped = time.perf_counter() - started
    assert stopped < 5
