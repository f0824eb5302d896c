"""Opt-out signals: `spellbook check-optout` against real HTTP servers on loopback (headers, the
sites' tdmrep.json and ai.txt, a registry standing in for Spawning's), stored with their dates,
shown per row and per domain, and the "opted out" filter on search, the artist report and the
evidence file."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from spellbook.embeddings.fetch import FetchLimits
from spellbook.ingest.load import ingest_training_files
from spellbook.ingest.optout import (
    ai_txt_signals,
    check_optout,
    origin_of,
    parse_ai_txt,
    parse_tdmrep,
    tdmrep_signals,
    x_robots_signals,
)
from spellbook.ingest.records import InputError
from spellbook.ingest.removals import remove
from spellbook.queries import optout as optout_queries
from tests.conftest import spellbook_datasette, write_v2

pytestmark = pytest.mark.pages

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
TDMREP = [
    {"location": "/open/*", "tdm-reservation": 0},
    {"location": "/reserved/*", "tdm-reservation": 1, "tdm-policy": "https://example.com/policy.json"},
    {"location": "/*", "tdm-reservation": 0},
]
AI_TXT = "# Spawning AI\n# Prevent datasets from using the following file types\n\nUser-Agent: *\nDisallow: *.png\nAllow: /ok/*.png\n"
HEADERS = {
    "/img/noai.jpg": {"X-Robots-Tag": "noindex, noai"},
    "/img/scoped.jpg": {"X-Robots-Tag": "spawningbot: noimageai"},
    "/img/tdm.jpg": {"tdm-reservation": "1", "tdm-policy": "https://example.com/p"},
    "/img/plain.jpg": {},
    "/img/spawned.jpg": {},
    "/reserved/r.jpg": {},
    "/open/o.jpg": {},
    "/img/a.png": {},
    "/ok/b.png": {},
}


class Site(BaseHTTPRequestHandler):
    files: dict = {}
    log: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.log.append((self.server.server_address[0], self.path))
        path = self.path.split("?")[0]
        if path in self.files:
            status, body, ctype = self.files[path]
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path in HEADERS:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            for name, value in HEADERS[path].items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)
            return
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):  # the registry standing in for Spawning's bulk endpoint
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        if self.headers.get("Authorization") != "API test-key":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        Registry.bodies.append(body)
        answer = json.dumps({"urls": [{"url": u, "optOut": "spawned" in u} for u in body.split("\n") if u]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


class Registry:
    bodies: list = []


def serve(address: str, files: dict):
    handler = type("Handler", (Site,), {"files": files, "log": []})
    server = ThreadingHTTPServer((address, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


@pytest.fixture
def sites():
    a, a_handler = serve("127.0.0.1", {
        "/.well-known/tdmrep.json": (200, json.dumps(TDMREP).encode(), "application/json"),
        "/ai.txt": (200, AI_TXT.encode(), "text/plain"),
    })
    b, b_handler = serve("127.0.0.2", {"/.well-known/tdmrep.json": (200, b"{not json", "application/json")})
    Registry.bodies = []
    yield {"a": f"http://127.0.0.1:{a.server_address[1]}", "b": f"http://127.0.0.2:{b.server_address[1]}", "a_log": a_handler.log, "b_log": b_handler.log}
    a.shutdown()
    b.shutdown()


LOCAL = FetchLimits(concurrency=4, retries=0, total_timeout=5, allow_private=True)


@pytest.fixture
def db(tmp_path, sites):
    rows = [{"URL": sites["a"] + path, "TEXT": f"painting by zorana velk {path}", "hash": 500 + i} for i, path in enumerate(HEADERS)]
    rows += [
        {"URL": sites["a"] + "/img/missing.jpg", "TEXT": "painting by zorana velk, gone", "hash": 600},
        {"URL": sites["b"] + "/img/noai.jpg", "TEXT": "a harbour at dawn", "hash": 601},
        {"URL": sites["b"] + "/img/plain.jpg", "TEXT": "a harbour at noon", "hash": 602},
    ]
    path = tmp_path / "optout.db"
    summary = ingest_training_files(path, [write_v2(tmp_path / "rows.parquet", rows)])
    assert not summary.failed
    return path


def checks(db):
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT t.url, o.opted_out, o.signals, o.status, o.checked_at FROM optout_checks o JOIN training_images t ON t.id = o.image_id"
        ).fetchall()
    return {url.split("/", 3)[2].split(":")[0] + "/" + url.split("/", 3)[3]: (opted, json.loads(signals), status, when)
            for url, opted, signals, status, when in rows}


# --- the signals as the formats define them ---------------------------------------------------------


def test_x_robots_tag_directives_and_crawler_scopes():
    assert [s["value"] for s in x_robots_signals("noindex, noai")] == ["noai"]
    assert x_robots_signals("googlebot: noindex, otherbot: noimageai") == [{"source": "x-robots-tag", "value": "noimageai", "agent": "otherbot"}]
    assert [s["value"] for s in x_robots_signals("unavailable_after: 25 Jun 2010 15:00:00 PST, NoAI")] == ["noai"]
    assert x_robots_signals("noindex, nofollow") == [] and x_robots_signals(None) == []
    assert [s["value"] for s in x_robots_signals("noai noimageai")] == ["noai", "noimageai"]


def test_tdmrep_first_matching_rule_decides():
    rules = parse_tdmrep(json.dumps(TDMREP))
    assert tdmrep_signals(rules, "/reserved/r.jpg")[0]["policy"] == "https://example.com/policy.json"
    assert tdmrep_signals(rules, "/open/o.jpg") == [] and tdmrep_signals(rules, "/img/x.jpg") == []
    assert tdmrep_signals([{"location": "/", "tdm-reservation": 1}], "/anything/deep.png")  # a directory: all below it
    assert tdmrep_signals([{"location": "/a.png", "tdm-reservation": "1"}], "/a.png") and not tdmrep_signals([{"location": "/a.png", "tdm-reservation": 1}], "/a.png.html")
    with pytest.raises(ValueError):
        parse_tdmrep('{"location": "/"}')


def test_ai_txt_longest_rule_wins_and_only_the_star_group_counts():
    rules = parse_ai_txt(AI_TXT + "\nUser-Agent: somebot\nDisallow: /\n")
    assert ai_txt_signals(rules, "/img/a.png")[0]["rule"] == "*.png"
    assert ai_txt_signals(rules, "/ok/b.png") == []  # the longer Allow wins
    assert ai_txt_signals(rules, "/img/a.jpg") == []  # somebot's Disallow: / is not for everyone
    assert ai_txt_signals(parse_ai_txt("User-agent: *\nDisallow: /\n"), "/x.jpg")
    assert ai_txt_signals(parse_ai_txt("User-agent: *\nDisallow: /photos/$\n"), "/photos/x.jpg") == []
    assert origin_of("HTTPS://Example.com:443/a.jpg") == "https://example.com" and origin_of("http://example.com:8080/x") == "http://example.com:8080"
    assert origin_of("data:image/png;base64,xx") is None


# --- a run against real servers ----------------------------------------------------------------------


def test_a_run_reads_every_signal_and_stores_it_with_its_date(db, sites):
    summary = check_optout(db, limits=LOCAL, spawning_key="test-key", spawning_url=sites["a"] + "/spawning")
    found = checks(db)
    assert summary.checked == len(found) == 12
    signals = {path: {s["source"] for s in v[1]} for path, v in found.items()}
    a = "127.0.0.1/"
    assert signals[a + "img/noai.jpg"] == {"x-robots-tag"}
    assert signals[a + "img/scoped.jpg"] == {"x-robots-tag"} and found[a + "img/scoped.jpg"][1][0]["agent"] == "spawningbot"
    assert signals[a + "img/tdm.jpg"] == {"tdm-reservation"}
    assert signals[a + "reserved/r.jpg"] == {"tdmrep.json"}
    assert signals[a + "img/a.png"] == {"ai.txt"}
    assert signals[a + "img/spawned.jpg"] == {"spawning"}
    for path in ("img/plain.jpg", "open/o.jpg", "ok/b.png"):
        assert found[a + path][0] == 0 and signals[a + path] == set(), path
    # A 404 image: its own headers are unknown, but its site's rules were read: no signal, known
    assert found[a + "img/missing.jpg"][2] == "http_error" and found[a + "img/missing.jpg"][0] == 0
    # Site B: an invalid tdmrep.json and no ai.txt; its image headers still count
    b = "127.0.0.2/"
    assert found[b + "img/noai.jpg"][0] == 1 and found[b + "plain.jpg" if False else b + "img/plain.jpg"][0] == 0
    assert summary.opted_out == 7 and summary.origins == 2
    assert all(when.endswith("Z") and when.startswith("20") for _, _, _, when in found.values())
    with sqlite3.connect(db) as conn:
        origins = dict(conn.execute("SELECT origin, tdmrep_status || '/' || ai_txt_status FROM optout_origins"))
    assert origins == {sites["a"]: "found/found", sites["b"]: "invalid/none"}
    # The registry was asked once, with every URL, and with the key
    assert len(Registry.bodies) == 1 and len(Registry.bodies[0].split("\n")) == 12
    # Site-wide files were fetched once per site, not once per image
    assert [p for _, p in sites["a_log"]].count("/ai.txt") == 1


def test_rerun_goes_on_with_the_rest_and_recheck_replaces(db, sites):
    first = check_optout(db, sample=5, limits=LOCAL, seed=3)
    assert first.checked == 5
    again = check_optout(db, limits=LOCAL)
    assert again.checked == 7 and len(checks(db)) == 12
    before = {p for _, p in sites["a_log"]}.__len__()
    assert check_optout(db, limits=LOCAL).checked == 0  # nothing left to check: no request made
    assert len({p for _, p in sites["a_log"]}) == before
    HEADERS["/img/plain.jpg"] = {"X-Robots-Tag": "noimageai"}
    try:
        assert check_optout(db, limits=LOCAL, recheck=True, domain="127.0.0.1").checked == 10
    finally:
        HEADERS["/img/plain.jpg"] = {}
    assert checks(db)["127.0.0.1/img/plain.jpg"][0] == 1


def test_private_addresses_are_refused_by_default(db):
    summary = check_optout(db, limits=FetchLimits(retries=0, total_timeout=5))
    found = checks(db)
    assert {status for _, _, status, _ in found.values()} == {"blocked"}
    assert summary.unknown == 12 and {opted for opted, *_ in found.values()} == {None}


def test_bad_arguments_name_what_is_wrong(db, sites):
    with pytest.raises(InputError, match="--domain"):
        check_optout(db, domain="nowhere.example", limits=LOCAL)
    with pytest.raises(InputError, match="API key"):
        check_optout(db, limits=LOCAL, spawning_key="wrong", spawning_url=sites["a"] + "/spawning")
    assert checks(db) == {}  # the registry is asked before anything is written
    result = subprocess.run([sys.executable, "-m", "spellbook.cli", "check-optout", str(db), "--allow-network", "not-a-network"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "--allow-network" in result.stderr


def test_the_command_line(db, sites):
    result = subprocess.run([sys.executable, "-m", "spellbook.cli", "check-optout", str(db), "--allow-network", "127.0.0.0/8", "--retries", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "checked 12 images on 2 sites" in result.stdout and "6 opted out" in result.stdout
    assert "x-robots-tag 3" in result.stdout


# --- on the pages ------------------------------------------------------------------------------------


async def test_search_filter_badges_and_the_domain_page(db, sites, monkeypatch):
    ds = spellbook_datasette(db)
    none = (await ds.client.get("/-/search.json?q=zorana&opted_out=1")).json()
    assert none["total"] == 0 and none["rows"] == []  # nothing checked yet
    assert "No image in this database has been checked" in (await ds.client.get("/-/optout")).text
    check_optout(db, limits=LOCAL)
    ds = spellbook_datasette(db)
    data = (await ds.client.get("/-/search.json?q=zorana&opted_out=1")).json()
    urls = {row["url"].split("/", 3)[3] for row in data["rows"]}
    assert urls == {"img/noai.jpg", "img/scoped.jpg", "img/tdm.jpg", "reserved/r.jpg", "img/a.png"} and data["total"] == 5 and data["total_exact"]
    # The same through the other strategy (the matches walked, each probed for its check)
    monkeypatch.setattr(optout_queries, "OPTED_OUT_LIST_LIMIT", 0)
    walked = (await ds.client.get("/-/search.json?q=zorana&opted_out=1")).json()
    assert {row["url"] for row in walked["rows"]} == {row["url"] for row in data["rows"]} and walked["total"] == 5
    monkeypatch.undo()
    browse = (await ds.client.get("/-/search.json?opted_out=1&domain=127.0.0.2")).json()
    assert [row["url"].split("/", 3)[3] for row in browse["rows"]] == ["img/noai.jpg"] and browse["total"] == 1
    page = (await ds.client.get("/-/search?q=zorana")).text
    assert page.count('class="sb-optout"') == 5 and "only opted out" in page
    filtered = (await ds.client.get("/-/search?q=zorana&opted_out=1")).text
    assert filtered.count('class="sb-optout"') == 5 and 'name="opted_out" value="1"' in filtered and "opted out of AI training" in filtered
    summary = (await ds.client.get("/-/optout.json")).json()
    assert summary["checked"] == 12 and summary["opted_out"] == 6
    local = {d["domain"]: d for d in summary["domains"]}
    assert local["127.0.0.1"]["opted_out"] == 5 and local["127.0.0.1"]["checked"] == 10
    assert local["127.0.0.1"]["sources"] == {"ai.txt": 1, "tdm-reservation": 1, "tdmrep.json": 1, "x-robots-tag": 2}
    detail = (await ds.client.get("/-/optout?domain=127.0.0.1")).text
    assert "Disallow: *.png" in detail and "found" in detail
    assert (await ds.client.get("/-/optout.json?domain=127.0.0.2")).json()["sites"][0]["tdmrep"] == "invalid"


async def test_artist_report_and_evidence_with_the_filter(db):
    check_optout(db, limits=LOCAL)
    ds = spellbook_datasette(db)
    report = (await ds.client.get("/-/artist/zorana%20velk.json")).json()["training"]
    assert report["optout"]["checked"] == 10 and report["optout"]["opted_out"] == 5
    assert report["optout"]["domains"] == [{"domain": "127.0.0.1", "count": 5}]
    only = (await ds.client.get("/-/artist/zorana%20velk.json?opted_out=1")).json()["training"]
    assert len(only["examples"]) == 5 and all(row["optout"]["opted_out"] for row in only["examples"])
    page = (await ds.client.get("/-/artist/zorana%20velk")).text
    assert "of the 10 checked images opted out" in page and "Only opted-out examples" in page
    evidence = (await ds.client.get("/-/artist/zorana%20velk/evidence.json?opted_out=1")).json()
    assert evidence["opted_out_only"] and len(evidence["rows"]) == 5
    assert all(row["opted_out"] is True and row["optout_signals"] and row["optout_checked_at"] for row in evidence["rows"])
    everything = (await ds.client.get("/-/artist/zorana%20velk/evidence.json")).json()["rows"]
    assert len(everything) == 10 and {row["opted_out"] for row in everything} == {True, False}


async def test_a_removed_image_takes_its_check_with_it(db):
    check_optout(db, limits=LOCAL)
    with sqlite3.connect(db) as conn:
        url = conn.execute("SELECT url FROM training_images WHERE url LIKE '%/img/noai.jpg' AND url LIKE '%127.0.0.1%'").fetchone()[0]
    remove(db, "url", [url], reason="owner's request")
    assert "127.0.0.1/img/noai.jpg" not in checks(db)
    ds = spellbook_datasette(db)
    assert (await ds.client.get("/-/optout.json")).json()["opted_out"] == 5
    assert url not in (await ds.client.get("/-/search.json?q=zorana&opted_out=1")).text
