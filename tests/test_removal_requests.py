"""/-/request-removal: a hosted site takes removal requests into a small database of their own,
never the published one; the operator lists, applies and rejects them with the CLI."""
from __future__ import annotations

import copy
import hashlib
import json
import re
import sqlite3 as stdlib_sqlite3
import time

import pytest
from click.testing import CliRunner

from spellbook.cli import cli
from spellbook.database.connect import sqlite3
from spellbook.database.removal_requests import add_request, list_requests
from spellbook.plugins.removal_requests import extra_template_vars
from spellbook.site import datasette_1, default_config
from tests.conftest import Server, spellbook_datasette

pytestmark = pytest.mark.pages

PAGE = "/-/request-removal"
URL = "https://i.pinimg.com/originals/aa/bb/cc.jpg"  # a crafted row of training_db


def site(db, requests_db=None, **settings):
    config = copy.deepcopy(default_config())  # the packaged one is cached: never change it
    spellbook = config.setdefault("plugins", {}).setdefault("spellbook", {})
    if requests_db is not None:
        spellbook["removal_requests_db"] = str(requests_db)
    spellbook.update(settings)
    return spellbook_datasette(db, config=config)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def form_post(ds, data: dict, headers: dict | None = None):
    """A post as the form makes it: the token from the page, and the cookie where Datasette sets one (0.65)."""
    page = await ds.client.get(PAGE)
    token = re.search(r'name="csrftoken" value="([^"]*)"', page.text).group(1)
    cookies = {"ds_csrftoken": page.cookies["ds_csrftoken"]} if "ds_csrftoken" in page.cookies else None
    return await ds.client.post(PAGE, data={"csrftoken": token, **data}, cookies=cookies, headers=headers)


def request_fields(value=URL, reason="This is a photo of me, posted without my consent.", **more) -> dict:
    return {"kind": "url", "value": value, "reason": reason, **more}


@pytest.fixture
def requests_db(tmp_path):
    (tmp_path / "volume").mkdir()
    return tmp_path / "volume" / "removal-requests.db"


@pytest.fixture
def ds(training_db, requests_db, monkeypatch):
    monkeypatch.delenv("SPELLBOOK_REMOVAL_REQUESTS_DB", raising=False)
    return site(training_db, requests_db)


async def test_the_form_carries_a_csrf_token_and_is_never_cached(ds):
    page = await ds.client.get(PAGE + "?kind=domain&value=example.com")
    assert page.status_code == 200
    assert re.search(r'<input type="hidden" name="csrftoken" value="[^"]+">', page.text)
    assert '<option value="domain" selected>' in page.text and 'value="example.com"' in page.text
    assert "no-store" in page.headers["cache-control"] and "content-security-policy" in page.headers


async def test_a_post_without_the_token_is_refused_and_writes_nothing(ds, requests_db):
    if datasette_1():  # Datasette 1.0 has no token: it refuses what a browser says came from another site
        for headers in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"}):
            assert (await ds.client.post(PAGE, data=request_fields(), headers=headers)).status_code == 403, headers
    else:
        assert (await ds.client.post(PAGE, data=request_fields())).status_code == 403  # no cookie: asgi-csrf lets it through, the page does not
        forged = await ds.client.post(PAGE, data={**request_fields(), "csrftoken": "x"}, cookies={"ds_csrftoken": "y"})
        assert forged.status_code == 403  # Datasette's own
    assert (await form_post(ds, request_fields(), headers={"origin": "https://evil.example"})).status_code == 403
    assert not requests_db.exists() or list_requests(requests_db) == []


async def test_a_request_is_stored_apart_and_the_published_database_does_not_change(ds, training_db, requests_db):
    before = sha256(training_db)
    response = await form_post(ds, request_fields(contact="me@example.org"))
    assert response.status_code == 201, response.text
    assert "Removal request #1 received" in response.text and "no-store" in response.headers["cache-control"]
    second = await form_post(ds, {"kind": "key", "value": " 123 ", "reason": "mine"})
    assert second.status_code == 201 and "#2" in second.text
    first, key = list_requests(requests_db)
    assert (first["kind"], first["value"], first["status"], first["contact"]) == ("url", URL, "pending", "me@example.org")
    assert (key["kind"], key["value"]) == ("key", "123")
    assert re.fullmatch(r"[0-9a-f]{32}", first["client"]) and first["client"] == key["client"]  # a keyed hash, never the address
    assert b"127.0.0.1" not in requests_db.read_bytes()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["created_at"])
    assert sha256(training_db) == before and not list(training_db.parent.glob(training_db.name + "-*"))
    assert str(requests_db) not in [str(d.path) for d in ds.databases.values()]  # Datasette never serves it
    with stdlib_sqlite3.connect(requests_db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_bad_fields_are_a_400_and_every_value_shown_back_is_escaped(ds, requests_db):
    hostile = '"><script>alert(1)</script>'
    bad = await form_post(ds, request_fields(value=hostile))
    assert bad.status_code == 400 and "starts with http://" in bad.text
    assert "<script>alert(1)" not in bad.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in bad.text
    for fields in (request_fields(reason="  "), request_fields(reason="x" * 2001), request_fields(contact="c" * 201),
                   {"kind": "key", "value": "12a", "reason": "r"}, {"kind": "domain", "value": "https://example.com/", "reason": "r"},
                   {"kind": "hash", "value": "1", "reason": "r"}):
        assert (await form_post(ds, fields)).status_code == 400, fields
    assert list_requests(requests_db) == []
    sent = await form_post(ds, request_fields(value=URL + "?q=" + hostile, reason=hostile, contact=hostile))
    assert sent.status_code == 201
    assert "<script>alert(1)" not in sent.text and sent.text.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 3


async def test_a_body_over_16_kib_is_a_413(ds, requests_db):
    response = await form_post(ds, request_fields(reason="x" * 17_000))
    assert response.status_code == 413 and "16 KiB" in response.text
    assert not requests_db.exists() or list_requests(requests_db) == []


async def test_the_sixth_request_in_an_hour_is_a_429_with_retry_after(training_db, requests_db, monkeypatch):
    monkeypatch.delenv("SPELLBOOK_REMOVAL_REQUESTS_DB", raising=False)
    untrusting = site(training_db, requests_db)
    for i in range(5):
        assert (await form_post(untrusting, request_fields(reason=f"request {i}"))).status_code == 201
    for spoofed in (None, "198.51.100.7"):  # X-Forwarded-For means nothing unless the site says its proxy sets it
        limited = await form_post(untrusting, request_fields(), headers={"x-forwarded-for": spoofed} if spoofed else None)
        assert limited.status_code == 429 and "5 requests in the last hour" in limited.text
        assert 3500 <= int(limited.headers["retry-after"]) <= 3601
    assert len(list_requests(requests_db)) == 5
    behind_proxy = site(training_db, requests_db, trust_forwarded_for=True)
    assert (await form_post(behind_proxy, request_fields(), headers={"x-forwarded-for": "203.0.113.5, 10.0.0.1"})).status_code == 201
    appending = site(training_db, requests_db, trust_forwarded_for=2, removal_requests_per_hour=1)  # Fly.io: client, then the app's address
    assert (await form_post(appending, request_fields(), headers={"x-forwarded-for": "1.1.1.1, 203.0.113.9, 10.0.0.1"})).status_code == 201
    assert (await form_post(appending, request_fields(), headers={"x-forwarded-for": "2.2.2.2, 203.0.113.9, 10.0.0.1"})).status_code == 429


async def test_a_full_queue_is_a_503(training_db, requests_db):
    ds = site(training_db, requests_db, removal_requests_max_pending=2, trust_forwarded_for=True)
    for i in range(2):
        assert (await form_post(ds, request_fields(), headers={"x-forwarded-for": f"203.0.113.{i}"})).status_code == 201
    full = await form_post(ds, request_fields(), headers={"x-forwarded-for": "203.0.113.99"})
    assert full.status_code == 503 and "The queue is full" in full.text and full.headers["retry-after"]
    assert len(list_requests(requests_db)) == 2


async def test_a_locked_requests_database_is_a_503_not_a_hang(ds, requests_db):
    list_requests(requests_db)  # creates it
    holder = sqlite3.connect(str(requests_db), isolation_level=None)  # the module the site uses: locks are per SQLite library
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        response = await form_post(ds, request_fields())
        assert response.status_code == 503 and "busy" in response.text and time.monotonic() - started < 6
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (await form_post(ds, request_fields())).status_code == 201


async def test_off_unless_configured(training_db, requests_db, monkeypatch):
    monkeypatch.delenv("SPELLBOOK_REMOVAL_REQUESTS_DB", raising=False)
    off = spellbook_datasette(training_db)
    page = await off.client.get(PAGE)
    assert page.status_code == 404 and "Removal requests are off" in page.text
    assert (await off.client.post(PAGE, data=request_fields())).status_code == 404
    assert not requests_db.exists()
    assert extra_template_vars(off) == {"spellbook_request_removal_url": None}
    monkeypatch.setenv("SPELLBOOK_REMOVAL_REQUESTS_DB", str(requests_db))  # what `spellbook serve --removal-requests` sets
    on = spellbook_datasette(training_db)
    assert (await on.client.get(PAGE)).status_code == 200
    assert extra_template_vars(on) == {"spellbook_request_removal_url": PAGE}
    unmounted = site(training_db, requests_db.parent / "no-such-volume" / "requests.db")  # a volume that is not there
    missing = await form_post(unmounted, request_fields())
    assert missing.status_code == 503 and "cannot store requests" in missing.text and "no-such-volume" not in missing.text


async def test_the_cli_lists_applies_and_rejects(training_db, tmp_path, monkeypatch):
    monkeypatch.delenv("SPELLBOOK_REMOVAL_REQUESTS_DB", raising=False)
    requests = tmp_path / "requests.db"
    with stdlib_sqlite3.connect(training_db) as conn:
        (row_id,), = conn.execute("SELECT id FROM training_images WHERE url = ?", (URL,)).fetchall()
    add_request(requests, "url", URL, "my photo", "me@example.org", client_address="203.0.113.1")
    add_request(requests, "domain", "blogspot.com", "spam", client_address="203.0.113.2")
    runner = CliRunner()

    listed = runner.invoke(cli, ["removals", str(training_db), "--requests", str(requests)])
    assert listed.exit_code == 0, listed.output
    assert "#1 " in listed.output and f"[pending]  url {URL}: my photo" in listed.output and "domain blogspot.com: spam" in listed.output
    rows = json.loads(runner.invoke(cli, ["removals", str(training_db), "--requests", str(requests), "--json"]).output)
    assert [(r["id"], r["kind"], r["status"]) for r in rows] == [(1, "url", "pending"), (2, "domain", "pending")]

    # A removal that fails leaves the request pending
    import spellbook.ingest.removal_requests as module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(module, "remove", broken)
    with pytest.raises(RuntimeError):
        module.apply_request(requests, training_db, 1, by="alice")
    assert list_requests(requests, "pending")[0]["id"] == 1
    monkeypatch.undo()

    applied = runner.invoke(cli, ["removals", str(training_db), "--requests", str(requests), "--apply", "1", "--by", "alice"])
    assert applied.exit_code == 0 and "request #1 applied: removed 1 rows" in applied.output, applied.output
    gone = await spellbook_datasette(training_db).client.get(f"/{training_db.stem}/training_images/{row_id}")
    assert gone.status_code == 410 and "my photo" in gone.text
    rejected = runner.invoke(cli, ["removals", str(training_db), "--requests", str(requests), "--reject", "2", "--by", "alice"])
    assert rejected.exit_code == 0 and "request #2 rejected" in rejected.output
    assert [(r["status"], r["decided_by"], r["rows_removed"]) for r in list_requests(requests)] == [("applied", "alice", 1), ("rejected", "alice", None)]
    again = runner.invoke(cli, ["removals", str(training_db), "--requests", str(requests), "--apply", "1"])
    assert again.exit_code != 0 and "already applied" in again.output
    assert runner.invoke(cli, ["removals", str(training_db), "--requests", str(requests), "--reject", "9"]).exit_code != 0
    assert runner.invoke(cli, ["removals", str(training_db), "--apply", "1"]).exit_code == 2  # --apply needs --requests
    plain = runner.invoke(cli, ["removals", str(training_db)])  # as before: what was removed
    assert plain.exit_code == 0 and "1 rows; my photo (by removal request #1, applied by alice)" in plain.output


def test_publishing_keeps_the_form_off_unless_asked(tmp_path):
    from spellbook.publish import PublishError, hosted_config

    assert "removal_requests_db" not in hosted_config(["spellbook"])["plugins"]["spellbook"]
    on = hosted_config(["spellbook"], removal_requests="/data/removal-requests.db")["plugins"]["spellbook"]
    assert on["removal_requests_db"] == "/data/removal-requests.db" and on["trust_forwarded_for"] is True
    for bad in ("removal-requests.db", "/app/removal-requests.db"):
        with pytest.raises(PublishError):
            hosted_config(["spellbook"], removal_requests=bad)
    db = tmp_path / "x.db"
    db.touch()
    result = CliRunner().invoke(cli, ["publish", "docker", str(db), "--out", str(tmp_path / "out"), "--removal-requests", "requests.db"])
    assert result.exit_code != 0 and "absolute path" in result.output and not (tmp_path / "out").exists()


@pytest.mark.browser
def test_a_browser_fills_in_and_sends_the_form(browser, training_db, tmp_path):
    requests = tmp_path / "requests.db"
    before = sha256(training_db)
    server = Server(command=[*Server.spellbook(), "serve", str(training_db), "--removal-requests", str(requests)])
    try:
        page = browser.new_page()
        page.goto(server.url + PAGE)
        page.select_option('form.sb-request-removal select[name="kind"]', "url")
        page.fill('form.sb-request-removal input[name="value"]', URL)
        page.fill('form.sb-request-removal textarea[name="reason"]', "It is <b>my</b> photo")
        page.click('form.sb-request-removal button[type="submit"]')
        page.wait_for_selector(".sb-request-id")
        assert page.inner_text(".sb-request-id") == "#1" and page.inner_text(".sb-request-reason") == "It is <b>my</b> photo"
    finally:
        server.stop()
    (stored,) = list_requests(requests)
    assert (stored["value"], stored["reason"], stored["status"]) == (URL, "It is <b>my</b> photo", "pending")
    assert sha256(training_db) == before
