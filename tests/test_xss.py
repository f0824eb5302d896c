"""Hostile text on every page: a database whose every text is an attack, served by `spellbook serve`,
visited page by page in headless Chromium with a trap that records any script a payload manages to
run, and read raw to check that no payload comes back as markup.

Everything on a Spellbook site is untrusted: captions and URLs scraped by LAION, prompts typed by
strangers, the metadata in someone's PNG, removal reasons pasted from an e-mail, and the query
string. The database below is built by the project's own ingest code (training parquet, Lexica
JSON, DiffusionDB parquet, a folder of A1111 PNGs), with hostile domains (the registered domain of
a hostile host), keywords and artist names (extracted from hostile prompts), removal reasons,
vectors (the stand-in model, so the similarity pages have results) and regeneration jobs. Every
payload, when it runs, calls alert() or __xss.push(): the acceptance is zero calls.

Two passes in Chromium: with the site's Content-Security-Policy (no violation may be reported: one
on our own scripts means a broken page, one on a payload means an escaping bug that CSP caught),
and with CSP bypassed (escaping alone must hold; CSP is the second line, not the first).
"""
from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image, PngImagePlugin

from spellbook.site import CONFIG
from tests.conftest import REPO, Server, StandInModel, write_v2

pytestmark = [pytest.mark.pages]

# --- the payloads -----------------------------------------------------------------------------------
# Each one, if it ever runs, calls alert("XSSn") or __xss.push("XSSn"): the trap records it.

PAYLOADS = [
    '<script>alert("XSS1")</script>',
    '<img src=x onerror=alert("XSS2")>',
    '<svg onload=alert("XSS3")>',
    '"><script>__xss.push("XSS4")</script>',
    "'><img src=x onerror=__xss.push('XSS5')>",
    '" autofocus onfocus="__xss.push(\'XSS6\')" x="',
    "' autofocus onfocus='__xss.push(\"XSS7\")' x='",
    "`><img src=x onerror=alert`XSS8`>",
    '</textarea><script>alert("XSS9")</script>',
    '</title><script>alert("XSS10")</script>',
    '</style><script>alert("XSS11")</script>',
    '</script><script>alert("XSS12")</script>',
    '${alert("XSS13")}`;alert("XSS13");`',
    '"};alert("XSS14");//\u2028\u2029</script>',
    'javascript:alert("XSS15")',
    "<a href=\"javascript:alert('XSS16')\">click</a>",
    "<iframe srcdoc=\"<script>parent.alert('XSS17')</script>\"></iframe>",
    '\uff1cscript\uff1ealert("XSS18")\uff1c/script\uff1e \u202egnp.exe <scr\u200bipt>alert("XSS18")</scr\u200bipt>',
    '&lt;script&gt;alert("XSS19")&lt;/script&gt; &#60;img src=x onerror=alert("XSS19")&#62;',
    "{{7*7}} {% raw %} ${7*7} #{7*7} <%= 7*7 %>",
    '<math><mtext><table><mglyph><style><img src=x onerror=alert("XSS21")>',
    '<details open ontoggle=alert("XSS22")>',
    '<body onload=alert("XSS23")>',
    "<object data=\"javascript:alert('XSS24')\"></object>",
    "<base href=\"javascript:alert('XSS25')//\">",
    "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert('XSS26')\">",
    '\x00\x01<img src=x onerror=alert("XSS27")>\x00\x02',
    '<svg><script>alert("XSS28")</script></svg><img src=x onerror=eval(atob("YWxlcnQoIlhTUzI4Iik="))>',
    '<input autofocus onfocus=__xss.push("XSS29")>',
    "<img src=x onerror=setTimeout('alert(\"XSS30\")')><img src=x onerror=document.write(\"XSS30\")>",
    "<a href=\"&#106;avascript:alert('XSS31')\">x</a> <a href=\"jav&#x09;ascript:alert('XSS31')\">y</a>",
    "<link rel=stylesheet href=\"javascript:alert('XSS32')\"><style>@import 'javascript:alert(\"XSS32\")';</style>",
    "<form action=\"javascript:alert('XSS33')\"><button>go</button></form><button formaction=\"javascript:alert('XSS33')\">b</button>",
    '<video><source onerror=alert("XSS34")></video><audio src=x onerror=alert("XSS34")>',
    "<noscript><p title=\"</noscript><img src=x onerror=alert('XSS35')>\">",
]
TEMPLATE_INJECTION = PAYLOADS[19]

# Training URLs: http(s) with breakouts in them (stored), and hosts whose registered domain is a payload.
HOSTILE_URLS = [
    'http://x/"><script>alert("XSS40")</script>',
    "https://img.example.com/a.jpg' onerror='alert(\"XSS41\")",
    'https://img.example.com/a.jpg" onerror="alert(\'XSS42\')',
    'https://img.example.com/a.jpg` onerror=alert("XSS43")',
    'https://img.example.com/</textarea><script>alert("XSS44")</script>',
    'https://cdn.<img src=x onerror=alert("XSS45")>.com/a.jpg',
    'https://cdn."><svg onload=alert("XSS46")>.net/a.jpg',
    "https://i.'-alert(\"XSS47\")-'.org/a.jpg",
    'https://a.`${alert("XSS48")}`.com/x.jpg',
    "https://a.{{7*7}}.com/x.jpg",
    "https://evil.example/x.jpg#\u2028</script><script>alert(\"XSS49\")</script>",
]
# URLs that must never be stored as links (ingest rejects them for training rows and drops them for prompts).
SCRIPT_URLS = ['javascript:alert("XSS60")', 'data:text/html,<script>alert("XSS61")</script>', 'JaVaScRiPt:alert("XSS62")',
               ' javascript:alert("XSS63")', "vbscript:msgbox(64)"]
REMOVAL_REASON = "<script>alert(\"XSS70\")</script> \"><img src=x onerror=alert('XSS70')> request #17"
HOSTILE_HOST = "\"><script>alert('XSS72')</script>"
HOSTILE_FILE = "zebra\"><img src=x onerror=alert('XSS71')>"  # a dataset's file name is shown on the home page
# Values for the query string and for names in the path: a few of the payloads, each kind once.
QUERY_PAYLOADS = [PAYLOADS[i] for i in (0, 1, 3, 5, 6, 7, 8, 9, 12, 13, 14, 17, 19, 26)]
PATH_PAYLOADS = [PAYLOADS[i] for i in (0, 1, 3, 5, 7, 8, 9, 13, 17, 19)]

MARKER = re.compile(r"xss\d+|__xss", re.I)


def _datasette_handlers() -> frozenset[str]:
    """Inline event handlers written in the installed Datasette's own templates (1.0's table page
    has onclick="openColumnChooser()"): markup of Datasette's, not of any data, allowed by the
    CSP's hashes. Any other on* attribute on a page is a finding."""
    from importlib import resources

    found = set()
    for path in resources.files("datasette").joinpath("templates").iterdir():
        if path.name.endswith(".html"):
            found.update(re.findall(r'\son[a-z]+="([^"{}%]*)"', path.read_text(encoding="utf-8")))
    return frozenset(found)


DATASETTE_HANDLERS = _datasette_handlers()


# --- the hostile site -------------------------------------------------------------------------------


@dataclass
class HostileSite:
    db: Path
    server: Server
    ids: dict = field(default_factory=dict)  # what the visits need: row ids, keys, keywords, job ids
    ingest_reports: list = field(default_factory=list)


def _require(condition, what) -> None:
    """A check of the set-up: a RuntimeError, so that a broken set-up never reads as a finding."""
    if not condition:
        raise RuntimeError(f"the hostile site could not be built: {what}")


def _laion_shard(shard: Path, rows, model) -> None:
    """LAION's layout (img_emb/ and metadata/), the stand-in's vectors of the captions."""
    (shard / "img_emb").mkdir(parents=True)
    (shard / "metadata").mkdir()
    np.save(shard / "img_emb" / "img_emb_0000.npy", model.embed_texts([caption for _, caption in rows]).astype(np.float16))
    pq.write_table(pa.table({"image_path": [f"{i:09d}" for i in range(len(rows))], "caption": [c for _, c in rows], "url": [u for u, _ in rows]}),
                   shard / "metadata" / "metadata_0000.parquet")


def _png(path: Path, parameters: str, colour) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    Image.new("RGB", (16, 16), colour).save(path, pnginfo=info)
    return path


def build_hostile_database(folder: Path) -> tuple[Path, dict, list[str]]:
    """Every text hostile, through the project's own ingest, embed and removal code."""
    from spellbook.database.connect import connect_readonly
    from spellbook.embeddings.embed import embed_images, embed_texts, import_laion
    from spellbook.embeddings.indexing import build_indexes
    from spellbook.ingest.load import ingest_prompt_files, ingest_training_files
    from spellbook.ingest.removals import remove

    model = StandInModel()
    db = folder / "hostile.db"
    victim_url = "https://victim.example.org/taken-down.jpg"
    training = [{"URL": HOSTILE_URLS[i % len(HOSTILE_URLS)], "TEXT": f"zebra {p}", "AESTHETIC_SCORE": 5.0 + (i % 12) / 4,
                 "punsafe": 0.9 if i % 7 == 0 else 0.01, "WIDTH": 512.0 + i, "HEIGHT": 512.0}
                for i, p in enumerate(PAYLOADS)]
    training += [{"URL": f"https://img{i}.example{i}.com/{i}.jpg", "TEXT": f"a painting by zorana velk {p}"} for i, p in enumerate(PAYLOADS[:6])]
    training += [{"URL": victim_url, "TEXT": "zebra painting by zorana velk, taken down"}]
    training += [{"URL": url, "TEXT": f"zebra with a script URL {i}"} for i, url in enumerate(SCRIPT_URLS)]
    parquet = write_v2(folder / f"{HOSTILE_FILE}.parquet", training)
    reports = [ingest_training_files(db, [parquet]).report()]

    lexica = folder / f"lexica{HOSTILE_FILE}.json"
    sources = HOSTILE_URLS + SCRIPT_URLS + ['https://x.com/a.jpg" onerror="alert(\'XSS94\')']
    lexica.write_text(json.dumps({"images": [
        {"id": p, "prompt": f"zebra {p}, by {p}", "seed": str(i), "src": sources[i % len(sources)], "model": p,
         "width": 512, "height": 512, "nsfw": i % 9 == 0, "guidance": 7}
        for i, p in enumerate(PAYLOADS)
    ]}))
    diffusiondb = folder / "diffusiondb.parquet"
    prompts = [f"zebra castle, art by greg rutkowski, {p}" for p in PAYLOADS for _ in range(3)]
    pq.write_table(pa.table({"prompt": prompts, "seed": pa.array(range(len(prompts)), pa.uint32()),
                             "timestamp": pa.array([1660000000 + 86400 * (i % 5) for i in range(len(prompts))], pa.timestamp("s", tz="UTC"))}),
                   diffusiondb)
    pngs = folder / "outputs"
    pngs.mkdir()
    for i, (prompt, negative, sampler, model_name, extra) in enumerate([
        (PAYLOADS[0] + ", by " + PAYLOADS[1], PAYLOADS[8], '<svg onload=alert("XSS83")>', PAYLOADS[9], PAYLOADS[2]),
        ("zebra " + PAYLOADS[5], PAYLOADS[11], PAYLOADS[6], PAYLOADS[12], PAYLOADS[13]),
        ("zebra " + PAYLOADS[26], PAYLOADS[29], "Euler a", PAYLOADS[20], PAYLOADS[17]),
    ]):
        _png(pngs / f"{i:05d}.png", f"{prompt}\nNegative prompt: {negative}\nSteps: 20, Sampler: {sampler}, CFG scale: 7, Seed: {i}, "
                                     f"Size: 16x16, Model hash: {PAYLOADS[3]}, Model: {model_name}, Hires upscaler: {extra}, "
                                     f'Lora hashes: "{PAYLOADS[7]}", Version: {PAYLOADS[12]}', (200, 20 * i, 10))
    for path, source_format in ((lexica, "lexica-json"), (diffusiondb, "diffusiondb-parquet"), (pngs, "image-metadata")):
        summary = ingest_prompt_files(db, [path], source_format=source_format)
        _require(not summary.failed, summary.report())
        reports.append(summary.report())

    # Vectors for every collection: LAION-shaped shards joined by (url, caption), texts and images.
    conn = connect_readonly(db)
    rows = conn.execute("SELECT url, caption FROM training_images ORDER BY id").fetchall()
    conn.close()
    _laion_shard(folder / "laion", rows, model)
    import_laion(db, [folder / "laion" / "img_emb"], model)
    optout_domains = _optout_checks(db, folder)
    conn = connect_readonly(db)
    rows = conn.execute("SELECT url, caption FROM training_images ORDER BY id").fetchall()
    conn.close()
    _laion_shard(folder / "laion-optout", rows[-5:], model)
    import_laion(db, [folder / "laion-optout" / "img_emb"], model)
    embed_texts(db, model, "training_caption")
    embed_texts(db, model, "generation_prompt")
    embed_images(db, model, "generation_image")
    build_indexes(db)

    conn = connect_readonly(db)
    ids = {
        "training": [i for (i,) in conn.execute("SELECT id FROM training_images ORDER BY id")],
        "keys": [k for (k,) in conn.execute("SELECT key FROM training_images ORDER BY id LIMIT 5")],
        # One generation per distinct prompt (DiffusionDB's come three times each), PNGs last.
        "prompt_pages": [i for (i,) in conn.execute("SELECT min(id) FROM generations GROUP BY prompt ORDER BY min(id)")],
        "local": [i for (i,) in conn.execute("SELECT id FROM generations WHERE image_path IS NOT NULL ORDER BY id")],
        "victim": conn.execute("SELECT id, key FROM training_images WHERE url = ?", (victim_url,)).fetchone(),
        "removed_generation": conn.execute("SELECT id FROM generations WHERE source = 'lexica' ORDER BY id LIMIT 1").fetchone()[0],
        "keywords": [k for (k,) in conn.execute("SELECT keyword FROM keywords ORDER BY prompt_count DESC, keyword")],
        "artists": [a for (a,) in conn.execute("SELECT name FROM artists WHERE training_count > 0 OR prompt_count > 0 ORDER BY name")],
        "domains": [d for (d,) in conn.execute("SELECT domain FROM domains ORDER BY domain")],
        "optout_domains": optout_domains,
        "stored_urls": [u for (u,) in conn.execute("SELECT url FROM training_images UNION SELECT image_url FROM generations WHERE image_url IS NOT NULL")],
    }
    conn.close()
    remove(db, "url", [victim_url], REMOVAL_REASON, requested_by=PAYLOADS[1])
    remove(db, "id", [ids["removed_generation"]], REMOVAL_REASON, item="generation")
    ids["training"] = [i for i in ids["training"] if i != ids["victim"][0]]
    ids["prompt_pages"] = [i for i in ids["prompt_pages"] if i != ids["removed_generation"]]
    ids["jobs"] = _runner_jobs(db, folder, ids["local"][0])
    return db, ids, reports


class _HostileSite(BaseHTTPRequestHandler):
    """A website whose answers to `spellbook check-optout` are hostile: its X-Robots-Tag names a
    payload as the crawler, its tdm-policy is a javascript: URL, its ai.txt and tdmrep.json hold scripts."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        files = {
            "/.well-known/tdmrep.json": json.dumps([{"location": "/*", "tdm-reservation": 1, "tdm-policy": "javascript:alert('XSS101')",
                                                     "note": PAYLOADS[0]}]),
            "/ai.txt": f"# {PAYLOADS[1]}\nUser-Agent: *\nDisallow: /img/*\nAllow: /{PAYLOADS[9]}\n",
        }
        path = self.path.split("?")[0]
        body = files.get(path, "").encode() if path in files else b"\x89PNG\r\n\x1a\n" + b"\0" * 64
        self.send_response(200)
        self.send_header("Content-Type", "image/png" if path not in files else "text/plain")
        if path not in files:
            self.send_header("X-Robots-Tag", '<script>alert("XSS100")</script>: noai, "><img src=x onerror=alert(100)>: noimageai')
            self.send_header("tdm-reservation", "1")
            self.send_header("tdm-policy", "javascript:alert('XSS102')")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _optout_checks(db: Path, folder: Path) -> list[str]:
    """Training rows on a hostile site on loopback, checked by `spellbook check-optout`'s code."""
    from http.server import ThreadingHTTPServer

    from spellbook.embeddings.fetch import FetchLimits
    from spellbook.ingest.load import ingest_training_files
    from spellbook.ingest.optout import check_optout

    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileSite)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        origin = f"http://127.0.0.1:{server.server_address[1]}"
        rows = [{"URL": f"{origin}/img/{i}.jpg?{q(x=p)}", "TEXT": f"zebra opted out {p}"} for i, p in enumerate(PAYLOADS[:4])]
        rows.append({"URL": f"{origin}/open/{urllib.parse.quote(PAYLOADS[9])}.jpg", "TEXT": "zebra painting by zorana velk, checked"})
        summary = ingest_training_files(db, [write_v2(folder / "optout.parquet", rows)])
        _require(not summary.failed, summary.report())
        result = check_optout(db, domain="127.0.0.1", limits=FetchLimits(concurrency=4, retries=0, total_timeout=5, allow_private=True))
        _require(result.checked == len(rows) and result.opted_out >= 1, result)
        return ["127.0.0.1"]
    finally:
        server.shutdown()
        server.server_close()


def _runner_jobs(db: Path, folder: Path, generation_id: int) -> dict:
    """Regeneration jobs in every state, their texts hostile: done (with its PNG), failed, queued
    after a retry, queued with remix settings."""
    from spellbook.runner.jobs import JobQueue
    from spellbook.runner.store import RunnerStore

    queue = JobQueue(RunnerStore.beside(db))
    done, failed, retried = (queue.add(generation_id, {"seed": i}) for i in (1, 2, 3))
    queued = queue.add(generation_id, {PAYLOADS[0]: PAYLOADS[1], "sampler": PAYLOADS[5]})
    for _ in range(3):
        queue.claim("xss-test")
    png = _png(folder / "regeneration.png", PAYLOADS[0], (10, 200, 30))
    regeneration = queue.store.add_regeneration({
        "generation_id": generation_id, "job_id": done.id, "prompt": PAYLOADS[0], "negative_prompt": PAYLOADS[8], "seed": 1, "steps": 3,
        "cfg": 7.0, "sampler": PAYLOADS[2], "schedule": PAYLOADS[9], "scheduler_class": PAYLOADS[3], "scheduler_config": {}, "width": 16,
        "height": 16, "batch_size": 1, "model": PAYLOADS[5], "model_source": "folder", "model_family": "sd1", "model_hash": PAYLOADS[6],
        "model_reason": PAYLOADS[10], "loras": [{"name": PAYLOADS[1], "weight": 0.5}], "embeddings": [{"name": PAYLOADS[12]}],
        "not_honoured": [PAYLOADS[13]], "notes": [PAYLOADS[20]], "diffusers_version": PAYLOADS[7], "torch_version": "0", "device": PAYLOADS[17],
        "dtype": "float32", "seconds": 0.1, "image_path": str(png), "source_image": 1, "score_note": PAYLOADS[21]})
    queue.finish(done.id, regeneration, "xss-test")
    queue.fail(failed.id, PAYLOADS[9] + " " + PAYLOADS[1], "xss-test")
    queue.fail(retried.id, PAYLOADS[11], "xss-test", retry=True)
    queue.store.close()
    return {"done": done.id, "failed": failed.id, "retried": retried.id, "queued": queued.id}


SITECUSTOMIZE = '''\
"""The tests' stand-in embedding model, registered in the server's process (written by tests/test_xss.py)."""
def _stand_in(*args, **kwargs):
    import importlib.util
    spec = importlib.util.spec_from_file_location("_spellbook_tests_conftest", {conftest!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.StandInModel(*args, **kwargs)

# Datasette 0.65 prints every exception (404s too) with rich when it is installed (the runner extra
# brings it): 0.2-0.7 s of the event loop per 404. A published image has no rich; nor has this server.
import sys as _sys
_sys.modules.setdefault("rich", None)

try:
    from spellbook.embeddings import models as _models
    _models.register("stand-in", _stand_in)
except Exception:
    pass
'''


def serve_with_stand_in(db: Path, folder: Path, **plugin_settings) -> Server:
    """`spellbook serve DB --config ...` whose process knows the stand-in model (a sitecustomize
    module on PYTHONPATH registers it), so text and image queries are encoded as in the tests."""
    import os

    custom = folder / "sitecustomize"
    custom.mkdir(exist_ok=True)
    (custom / "sitecustomize.py").write_text(SITECUSTOMIZE.format(conftest=str(REPO / "tests" / "conftest.py")))
    config = yaml.safe_load(CONFIG.read_text())
    config["plugins"]["spellbook"].update(plugin_settings)
    config_path = folder / "site.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(custom), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return Server(command=[*Server.spellbook(), "serve", str(db), "--config", str(config_path)], env=env)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    db, ids, reports = build_hostile_database(folder)
    # The runner's pages (without a worker) and the removal-request form are on.
    server = serve_with_stand_in(db, folder, runner=True, removal_requests_db=str(folder / "removal-requests.db"))
    yield HostileSite(db, server, ids, reports)
    server.stop()


# --- what to visit ----------------------------------------------------------------------------------


def q(**args) -> str:
    return urllib.parse.urlencode(args)


def name(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def visits(site: HostileSite, browser: bool = False) -> list[str]:
    """Every page of the site with the hostile data and hostile parameters: each registered route,
    the home page, Datasette's table and row pages of both sides, the .json twins, the fragments,
    the CSVs. Read raw, every row's pages; in Chromium (browser=True, two passes of page loads),
    every page kind with every payload, a few rows of each."""
    ids, db = site.ids, site.db.stem
    prompts, t, jobs = ids["prompt_pages"], ids["training"], ids["jobs"]
    rows = 3 if browser else None  # rows per per-row page kind
    similar_rows = 3 if browser else 10  # the similarity pages are the slow ones (~50 ms)
    paths = ["/", "/-/search", "/-/search?q=zebra&_size=200", "/-/search?q=zebra&page=2&_size=3", "/-/search?q=zebra+painting",
             "/-/search.json?q=zebra", "/-/domains", "/-/domains?q=zebra", "/-/domains?q=zebra&exact=1", "/-/domains?q=zebra&top=10&fragment=1",
             "/-/domains.json?q=zebra", "/-/prompts", "/-/prompts?q=zebra&_size=500", "/-/prompts?q=zebra&page=2&_size=3", "/-/prompts.json?q=zebra",
             "/-/similar", "/-/similar?q=zebra", "/-/similar?q=zebra&mode=keywords", "/-/similar?q=zebra&mode=similarity",
             "/-/similar?q=zebra&target=prompts", "/-/similar.json?q=zebra", "/-/similar.json?q=zebra&target=prompts&mode=similarity",
             f"/{db}", f"/{db}/training_images", f"/{db}/training_images?_search=zebra", f"/{db}/training_images?_facet=domain_id",
             f"/{db}/training_images.json?_search=zebra", f"/{db}/generations?_size=200", f"/{db}/generations?_search=zebra", f"/{db}/generations.json",
             f"/{db}/domains", f"/{db}/keywords", f"/{db}/datasets", f"/{db}/removals", f"/{db}/artists?_sort_desc=prompt_count"]
    for i, value in enumerate(QUERY_PAYLOADS):
        routes = [f"/-/search?{q(q=value)}", f"/-/search?{q(q='zebra', domain=value, _size=value, page=value)}", f"/-/prompts?{q(q=value, page=value, _size=value)}",
                  f"/-/domains?{q(q=value, top=value)}", f"/-/similar?{q(q=value)}", f"/-/similar?{q(q=value, target='prompts', mode=value)}",
                  f"/-/similar?{q(image=value)}", f"/-/similar?{q(generation=value, target='prompts')}", f"/{db}/training_images?{q(_search=value)}",
                  f"/{db}/generations?{q(_search=value)}"]
        paths += [routes[(i + k) % len(routes)] for k in (0, 5)] if browser else routes
    paths += [f"/-/search.json?{q(q=QUERY_PAYLOADS[1], domain=QUERY_PAYLOADS[2])}", f"/-/prompts.json?{q(q=QUERY_PAYLOADS[3], page=QUERY_PAYLOADS[4])}",
              f"/-/domains.json?{q(q=QUERY_PAYLOADS[5])}", f"/-/similar.json?{q(q=QUERY_PAYLOADS[6], image=QUERY_PAYLOADS[7])}"]
    hostile_domains = [d for d in ids["domains"] if not re.fullmatch(r"[a-z0-9.-]+", d)]
    for i, domain in enumerate(hostile_domains):
        routes = [f"/-/search?{q(q='zebra', domain=domain)}", f"/-/search?{q(domain=domain)}", f"/-/domains?{q(q=domain)}"]
        paths += [routes[i % len(routes)]] if browser else routes
    paths += [f"/{db}/training_images/{row}" for row in t[:rows]] + [f"/-/similar?image={row}" for row in t[:similar_rows]]
    paths += [f"/{db}/training_images/{t[0]}.json", f"/-/similar.json?image={t[0]}", f"/-/image/{ids['keys'][1]}"]
    paths += [f"/-/prompt/{row}" for row in prompts[:rows]] + [f"/{db}/generations/{row}" for row in prompts[:rows]]
    paths += [f"/-/prompt/{row}/neighbours" for row in prompts[:similar_rows]] + [f"/-/similar?generation={row}&target=prompts" for row in prompts[:similar_rows]]
    local = ids["local"]
    paths += [f"/-/prompt/{row}" for row in local] + [f"/{db}/generations/{row}" for row in local] + [f"/-/prompt/{local[0]}/neighbours"]
    paths += [f"/-/prompt/{prompts[0]}.json", f"/-/prompt/{prompts[0]}/neighbours.json", f"/{db}/generations/{prompts[0]}.json",
              f"/-/similar.json?generation={prompts[0]}&target=prompts", f"/-/prompt/{local[0]}/image", f"/-/prompt/{local[0]}/regenerate"]
    victim_id, victim_key = ids["victim"]
    removed = ids["removed_generation"]
    paths += [f"/-/image/{victim_key}", f"/{db}/training_images/{victim_id}", f"/{db}/training_images/{victim_id}.json", f"/-/prompt/{removed}",
              f"/-/prompt/{removed}.json", f"/{db}/generations/{removed}"]
    keywords = ids["keywords"] if not browser else [k for k in ids["keywords"] if not re.fullmatch(r"[a-z0-9 ]+", k)][:6]
    paths += [f"/-/keyword/{name(keyword)}" for keyword in keywords] + [f"/-/keyword/{name(ids['keywords'][0])}.json"]
    for i, artist in enumerate(["zorana velk", "greg rutkowski", *[a for a in ids["artists"] if not re.fullmatch(r"[a-z ]+", a)], *PATH_PAYLOADS]):
        routes = [f"/-/artist/{name(artist)}", f"/-/artist/{name(artist)}/lookalikes", f"/-/artist/{name(artist)}/evidence"]
        paths += [routes[i % 3]] if browser and i >= 2 else routes
    for artist in ["zorana velk", PATH_PAYLOADS[0], PATH_PAYLOADS[3]]:
        paths += [f"/-/artist/{name(artist)}.json", f"/-/artist/{name(artist)}.csv", f"/-/artist/{name(artist)}.csv?side=prompts",
                  f"/-/artist/{name(artist)}/lookalikes.json", f"/-/artist/{name(artist)}/lookalikes.csv",
                  f"/-/artist/{name(artist)}/evidence.json", f"/-/artist/{name(artist)}/evidence.csv"]
    for keyword in PATH_PAYLOADS[: 4 if browser else None]:
        paths += [f"/-/keyword/{name(keyword)}", f"/-/keyword/{name(keyword)}.json"]
    paths += ["/-/optout", "/-/optout.json", f"/-/optout?{q(domain='127.0.0.1')}", f"/-/optout.json?{q(domain='127.0.0.1')}",
              f"/-/search?{q(q='zebra', opted_out=1)}", f"/-/artist/{name('zorana velk')}?opted_out=1", f"/-/artist/{name('zorana velk')}/evidence?opted_out=1",
              "/-/request-removal"]
    for value in PATH_PAYLOADS[: 3 if browser else None]:
        paths += [f"/-/optout?{q(domain=value, top=value)}", f"/-/request-removal?{q(kind=value, value=value)}"]
    for job in jobs.values():
        paths += [f"/-/regenerate/{job}", f"/-/regenerate/{job}.json"]
    paths += [f"/-/regenerate/{jobs['done']}/image", f"/-/regenerate/{jobs['done']}/image?download=1"]
    return list(dict.fromkeys(paths))


# Sent as they are, quotes and angle brackets unencoded (http.client allows them; curl and some
# clients send them so): what reaches the server is then the raw payload.
RAW_QUERIES = [path.replace(" ", "+") for path in ["/-/search?q=\"><script>alert('XSS4')</script>", "/-/similar?q='><img src=x onerror=alert('XSS5')>&mode=keywords",
               "/-/prompts?q=</title><script>alert('XSS10')</script>", "/-/domains?q=\"autofocus onfocus=\"alert('XSS6')",
               "/-/search?q=zebra&domain=\"><svg onload=alert('XSS3')>&_size='><b>"]]


def one_of_each_kind(paths: list[str]) -> list[str]:
    """The first path of each page kind: the path with its numbers and names as placeholders (the
    scripts a page runs come with its template, not with its parameters)."""
    shapes = {}
    for path in paths:
        bare = path.partition("?")[0]
        shape = re.sub(r"^(/-/(?:artist|keyword)/)[^/]+?(?=(/|\.json|\.csv|$))", r"\1NAME", re.sub(r"\d+", "N", bare))
        shapes.setdefault(shape, path)
    return list(shapes.values())


def kind_of(path: str) -> str:
    bare = path.split("?")[0]
    if bare.endswith(".json"):
        return "json"
    if bare.endswith(".csv"):
        return "csv"
    if bare.endswith("/image"):
        return "image"
    return "html"


def test_every_registered_route_has_a_visit(site):
    from tests.test_prompt_pages import registered_routes

    routes = registered_routes()
    assert len(routes) >= 15
    visited = [path.split("?")[0] for path in visits(site)]
    missing = [route for route in routes if not any(re.match(route, path) for path in visited)]
    assert not missing, f"routes without a visit in tests/test_xss.py: {missing}"


# --- the raw responses ------------------------------------------------------------------------------

FORBIDDEN_TAGS = {"iframe", "frame", "frameset", "object", "embed", "applet", "base", "math", "audio", "video", "source", "noscript",
                  "template", "marquee", "xmp", "plaintext", "isindex"}
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "data", "xlink:href", "poster", "background", "cite", "srcset", "ping"}


class MarkupAudit(HTMLParser):
    """What a payload would need to run: a tag or attribute it brought, a script-like URL, a
    <script> holding its marker."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self._script: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        shown = self.get_starttag_text()[:160]
        if tag in FORBIDDEN_TAGS:
            self.problems.append(f"<{tag}> element: {shown}")
        for attr, value in attrs:
            value = value or ""
            if attr.startswith("on") and value not in DATASETTE_HANDLERS:
                self.problems.append(f"event handler attribute {attr}: {shown}")
            if attr == "srcdoc" or (tag == "meta" and attr == "http-equiv"):
                self.problems.append(f"{attr} attribute: {shown}")
            if attr in URL_ATTRIBUTES:
                scheme = re.sub(r"[\x00-\x20]", "", value).lower()
                if scheme.startswith(("javascript:", "vbscript:", "data:")):
                    self.problems.append(f"script URL in {attr}: {shown}")
            if MARKER.search(attr):
                self.problems.append(f"an attribute named by a payload ({attr}): {shown}")
        if tag == "script":
            src = dict(attrs).get("src")
            if src is not None and not src.startswith("/"):
                self.problems.append(f"script from elsewhere: {shown}")
            self._script = []

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self._script.append(data)

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            text = "".join(self._script)
            if MARKER.search(text) or "alert(" in text:
                self.problems.append(f"a payload inside <script>: {text[:160]!r}")
            self._script = None


def audit_html(body: str) -> list[str]:
    audit = MarkupAudit()
    audit.feed(body)
    audit.close()
    problems = audit.problems
    for payload in PAYLOADS + HOSTILE_URLS + [REMOVAL_REASON, HOSTILE_FILE, HOSTILE_HOST]:
        if "<" in payload and payload in body:
            problems.append(f"raw payload in the page: {payload[:80]!r}")
    for tag in ("<script>alert", "<img src=x", "<svg onload", "<iframe", "<details open", "<input autofocus"):
        if tag in body.lower():
            problems.append(f"raw {tag!r} in the page")
    return problems


def check_csp(headers) -> list[str]:
    csp = headers.get("content-security-policy")
    if not csp:
        return ["no Content-Security-Policy header"]
    directives = {part.split()[0]: part.split()[1:] for part in (p.strip() for p in csp.split(";")) if part}
    script = directives.get("script-src", directives.get("default-src"))
    problems = []
    if script is None:
        problems.append("no script-src (nor default-src)")
    else:
        for bad in ("'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"):
            if bad in script:
                problems.append(f"script-src allows {bad}")
    if directives.get("object-src") != ["'none'"]:
        problems.append("object-src is not 'none'")
    if "base-uri" not in directives:
        problems.append("no base-uri")
    return problems


TIMINGS = {}


def raw_get(server: Server, path: str, headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_no_payload_comes_back_as_markup(site):
    """Every page read raw (http.client, no browser): no payload as markup, every response with
    the security headers, no 5xx, the .json and .csv twins served as what they are."""
    problems = {}
    statuses = {}
    requests = [(path, None) for path in visits(site) + RAW_QUERIES]
    # Pages that write absolute URLs (the evidence file's stamp and permalinks) take the host from the request.
    requests += [(path, {"Host": HOSTILE_HOST}) for path in ("/-/artist/zorana%20velk/evidence", "/-/artist/zorana%20velk/evidence.csv", "/")]
    for path, request_headers in requests:
        started = time.perf_counter()
        status, headers, body = raw_get(site.server, path, request_headers)
        TIMINGS[path] = time.perf_counter() - started
        kind, content_type = kind_of(path), headers.get("content-type", "")
        path = path if request_headers is None else f"{path} (Host: {HOSTILE_HOST})"
        statuses[path] = status
        found = [] if status < 500 else [f"HTTP {status}"]
        found += check_csp(headers)
        if headers.get("x-content-type-options") != "nosniff":
            found.append("no X-Content-Type-Options: nosniff")
        if status in (301, 302):
            pass
        elif kind == "json":
            if not content_type.startswith("application/json"):
                found.append(f"a .json page served as {content_type}")
        elif kind == "csv":
            if not content_type.startswith("text/csv") or "attachment" not in headers.get("content-disposition", ""):
                found.append(f"a .csv served as {content_type}, {headers.get('content-disposition')}")
        elif kind == "image":
            if status == 200 and not content_type.startswith("image/"):
                found.append(f"an image served as {content_type}")
        else:
            if status == 200 and not content_type.startswith("text/html"):
                found.append(f"a page served as {content_type}")
            found += audit_html(body.decode("utf-8", "replace"))
        if found:
            problems[path] = found
    assert not problems, json.dumps(problems, indent=1, ensure_ascii=False)[:6000]
    # The pages were the real ones, not error pages: the hostile rows were found and shown.
    ok = [path for path, status in statuses.items() if status == 200]
    assert len(ok) > 0.6 * len(statuses), f"only {len(ok)} of {len(statuses)} pages answered 200"
    assert statuses[f"/-/image/{site.ids['victim'][1]}"] == 410 and statuses[f"/{site.db.stem}/training_images/{site.ids['victim'][0]}"] == 410


def test_script_urls_never_become_links(site):
    """Training rows with javascript:/data:/vbscript: URLs are rejected at ingest; a Lexica image
    URL that is not http(s) is dropped; what is stored is http(s) only."""
    assert f"rejected {len(SCRIPT_URLS)}" in site.ingest_reports[0]
    assert all(url.lower().startswith(("http://", "https://")) for url in site.ids["stored_urls"])
    assert any('"><script>' in url for url in site.ids["stored_urls"])  # the breakouts are stored, and escaped on the way out


def test_template_syntax_is_shown_as_text(site):
    """`{{7*7}}` in a caption and in the query is shown as typed, never evaluated."""
    _, _, body = raw_get(site.server, "/-/search?" + q(q=TEMPLATE_INJECTION))
    text = body.decode()
    assert "{{7*7}}" in text and "{% raw %}" in text and "“49”" not in text
    _, _, body = raw_get(site.server, "/-/search?q=zebra&_size=200")
    assert body.decode().count("{{7*7}}") >= 1


# --- Chromium ----------------------------------------------------------------------------------------

TRAP = r"""
(() => {
  const calls = [];
  const report = (what) => { calls.push(what); try { window.__xssReport && window.__xssReport(what); } catch (e) {} };
  Object.defineProperty(window, "__xss", {value: {push: (...args) => report("__xss.push(" + args.join(", ") + ")"), calls}, configurable: false});
  const recorder = (name) => function (...args) { report(name + "(" + args.map(String).join(", ").slice(0, 200) + ")"); };
  window.alert = recorder("alert");
  window.prompt = recorder("prompt");
  window.confirm = recorder("confirm");
  window.print = recorder("print");
  const realEval = window.eval;
  // Playwright's own helpers (node previews, the results of exposed bindings) go through the page's eval.
  const playwright = (code) => typeof code === "string" && (code.startsWith("(injected") || code.includes("__playwright__binding"));
  window.eval = function (code) { if (playwright(code)) return realEval(code); report("eval(" + String(code).slice(0, 200) + ")"); };
  const RealFunction = window.Function;
  window.Function = new Proxy(RealFunction, {
    apply(target, self, args) { report("Function(" + args.join(", ").slice(0, 200) + ")"); return () => {}; },
    construct(target, args) { report("new Function(" + args.join(", ").slice(0, 200) + ")"); return function () {}; },
  });
  Document.prototype.write = recorder("document.write");
  Document.prototype.writeln = recorder("document.writeln");
  for (const name of ["setTimeout", "setInterval"]) {
    const real = window[name];
    window[name] = function (handler, ...rest) {
      if (typeof handler !== "function") { report(name + "(string: " + String(handler).slice(0, 200) + ")"); return 0; }
      return real.call(this, handler, ...rest);
    };
  }
  document.addEventListener("securitypolicyviolation", (event) => {
    const element = event.target && event.target.outerHTML ? event.target.outerHTML : String(event.target);
    const entry = JSON.stringify({directive: event.effectiveDirective || event.violatedDirective, blocked: event.blockedURI,
                                  source: event.sourceFile, line: event.lineNumber, sample: event.sample, element: element.slice(0, 300)});
    try { window.__cspReport && window.__cspReport(entry); } catch (e) {}
  }, true);
})();
"""


@dataclass
class BrowserFindings:
    executions: list = field(default_factory=list)  # (page, what ran)
    dialogs: list = field(default_factory=list)
    csp_ours: list = field(default_factory=list)  # a violation on one of the site's own scripts: a broken page
    csp_payload: list = field(default_factory=list)  # a violation on an injected payload: an escaping bug CSP caught
    csp_console: list = field(default_factory=list)
    errors: list = field(default_factory=list)  # uncaught exceptions in the pages' scripts, 5xx responses
    header_problems: list = field(default_factory=list)
    removal_requests: list = field(default_factory=list)  # the headings after each form post
    visited: int = 0


def _watch(context, page, site: HostileSite, findings: BrowserFindings, check_headers: bool):
    where = lambda: page.url  # noqa: E731

    context.expose_binding("__xssReport", lambda source, what: findings.executions.append((source["frame"].url, what)))

    def csp(source, entry):
        entry = json.loads(entry)
        (findings.csp_payload if MARKER.search(entry["element"] + entry["sample"]) or "alert(" in entry["element"] else findings.csp_ours).append(
            (source["frame"].url, entry))

    context.expose_binding("__cspReport", csp)
    context.add_init_script(TRAP)
    origin = site.server.url + "/"
    # Nothing leaves the machine: hotlinked images and the like fail at once.
    context.route(re.compile(r"^(?!" + re.escape(origin) + ")"), lambda route: route.abort())

    def dialog(d):
        findings.dialogs.append((where(), d.type, d.message))
        d.dismiss()

    page.on("dialog", dialog)
    page.on("console", lambda m: "Content Security Policy" in m.text and findings.csp_console.append((where(), m.text[:300])))
    page.on("pageerror", lambda e: findings.errors.append((where(), f"uncaught {e}")))

    def response(r):
        if not r.url.startswith(origin):
            return
        if r.status >= 500:
            findings.errors.append((r.url, f"HTTP {r.status}"))
        if check_headers:
            problems = check_csp(r.headers)
            if problems:
                findings.header_problems.append((r.url, problems))

    page.on("response", response)


# Selectors, not page.evaluate: Playwright evaluates expressions with the page's eval, which the trap replaces.
FRAGMENTS_PENDING = '[data-fragment-url]:not([data-loaded=yes]):not(:has-text("could not be loaded"))'


def _visit_all(browser, site: HostileSite, paths: list[str], bypass_csp: bool) -> BrowserFindings:
    from playwright.sync_api import Error as PlaywrightError

    findings = BrowserFindings()
    context = browser.new_context(bypass_csp=bypass_csp, accept_downloads=False)
    page = context.new_page()
    page.set_default_timeout(15_000)
    _watch(context, page, site, findings, check_headers=not bypass_csp)
    try:
        for path in paths:
            try:
                response = page.goto(site.server.url + path, wait_until="load")
            except PlaywrightError as error:
                if "Download is starting" in str(error):  # an attachment (the evidence .json): checked raw instead
                    findings.visited += 1
                    continue
                raise
            findings.visited += 1
            if response is not None and response.status >= 500:
                findings.errors.append((path, f"HTTP {response.status}"))
            # The fragments a page loads after itself (domain bars, neighbours, look-alikes) are in.
            page.wait_for_selector(FRAGMENTS_PENDING, state="detached")
        # Interactions: a payload typed into the search box, an image uploaded for similarity, a
        # regeneration queued from a hostile prompt's page.
        page.goto(site.server.url + "/")
        page.fill('form.sb-search input[name="q"]', PAYLOADS[3])
        page.click('form.sb-search button[type="submit"]')
        page.wait_for_url("**/-/search?q=*")
        page.goto(site.server.url + "/-/similar")
        page.set_input_files('form.sb-upload input[type="file"]', str(sorted((site.db.parent / "outputs").glob("*.png"))[0]))
        page.click('form.sb-upload button[type="submit"]')
        page.wait_for_selector("h1:text('Like your image')")
        assert page.locator(".sb-grid .sb-tile").count() > 0
        page.goto(f"{site.server.url}/-/prompt/{site.ids['local'][0]}")
        with page.expect_navigation():
            page.click("button.sb-regenerate")  # 403 today (test_the_regenerate_button_queues_a_job below); its page is checked all the same
        page.goto(f"{site.server.url}/-/regenerate/{site.ids['jobs']['queued']}")
        page.wait_for_timeout(800)  # a queued job's page polls its .json
        # A removal request: refused (its value is no URL; the form comes back with what was typed), then sent.
        for value, reason, contact in ((PAYLOADS[8], PAYLOADS[8] + PAYLOADS[1], PAYLOADS[5]), (HOSTILE_URLS[0], PAYLOADS[8] + PAYLOADS[2], PAYLOADS[6])):
            page.goto(site.server.url + "/-/request-removal")
            page.fill('form.sb-request-removal input[name="value"]', value)
            page.fill('form.sb-request-removal textarea[name="reason"]', reason)
            page.fill('form.sb-request-removal input[name="contact"]', contact)
            with page.expect_navigation():
                page.click('form.sb-request-removal button[type="submit"]')
            findings.removal_requests.append(page.locator("h1").inner_text())
        findings.visited += 6
    finally:
        context.close()
    return findings


def _summary(findings: BrowserFindings) -> str:
    return json.dumps({k: v[:20] if isinstance(v, list) else v for k, v in findings.__dict__.items()}, indent=1, ensure_ascii=False)[:8000]


@pytest.fixture
def chromium(browser):
    """conftest's Chromium (Debian's, launched by its path), under the name these tests use."""
    return browser


@pytest.mark.browser
def test_no_payload_runs_in_chromium(chromium, site):
    """Every page, with the site's CSP and with CSP bypassed: zero payload executions, zero dialogs,
    no CSP violation (on our scripts or on a payload), no uncaught error, CSP on every response."""
    paths = [path for path in visits(site, browser=True) if kind_of(path) in ("html", "json")]
    # With CSP: one page of each kind (a violation on our scripts is a property of the page kind).
    # Without: every page with every payload, where only escaping stands between it and the trap.
    ids, db = site.ids, site.db.stem
    richest = ["/-/search?q=zebra&_size=200", "/-/prompts?q=zebra&_size=500", "/-/similar?q=zebra", "/-/domains?q=zebra", f"/-/prompt/{ids['local'][0]}",
               f"/-/regenerate/{ids['jobs']['queued']}", f"/{db}/training_images?_search=zebra", f"/{db}/training_images?_facet=domain_id",
               f"/-/optout?{q(domain='127.0.0.1')}", f"/-/keyword/{name('greg rutkowski')}"]
    kinds = list(dict.fromkeys(one_of_each_kind(paths) + richest))
    with_csp = _visit_all(chromium, site, kinds, bypass_csp=False)
    without_csp = _visit_all(chromium, site, [p for p in paths if kind_of(p) == "html"], bypass_csp=True)
    assert any("received" in h for h in without_csp.removal_requests), without_csp.removal_requests  # the hostile request was stored and shown
    for findings, expected in ((with_csp, kinds), (without_csp, [p for p in paths if kind_of(p) == "html"])):
        assert findings.visited >= len(expected)
        assert not findings.executions and not findings.dialogs, _summary(findings)
        assert not findings.errors, _summary(findings)
    assert not with_csp.csp_payload, "an escaping bug that CSP caught:\n" + _summary(with_csp)
    assert not with_csp.csp_ours and not with_csp.csp_console, "CSP blocked one of the site's own scripts:\n" + _summary(with_csp)
    assert not with_csp.header_problems, _summary(with_csp)


# --- product bugs this file found (regression tests: each failed before its fix) --------------------


def test_a_removed_rows_json_row_page_answers_json(site):
    """plugins/hosting.py answered a removed row's Datasette .json page with HTML; now JSON, like Spellbook's own."""
    status, headers, body = raw_get(site.server, f"/{site.db.stem}/training_images/{site.ids['victim'][0]}.json")
    assert status == 410
    assert headers["content-type"].startswith("application/json") and "request #17" in json.loads(body)["error"]


def test_a_hostile_sort_on_datasettes_table_page_is_a_400(site):
    """Datasette 0.65 raises DatasetteError('Cannot sort table by ...') as a 500: a hosted site's monitors
    counted a hostile ?_sort= as a server error. plugins/hosting.py now answers 400."""
    for value in (PAYLOADS[0], PAYLOADS[5], "no_such_column"):
        status, headers, body = raw_get(site.server, f"/{site.db.stem}/generations?{q(_search='zebra', _sort=value)}")
        assert not audit_html(body.decode()), value  # the message is escaped: this part holds today
        assert "content-security-policy" in headers
        assert status == 400, (value, status)


@pytest.mark.browser
def test_the_regenerate_button_queues_a_job(chromium, site):
    """Chromium sends `Origin: null` on a same-origin form post from a page served with
    `Referrer-Policy: no-referrer`, and the runner's same-site check refused it: the Regenerate
    button answered 403 in a real browser. The policy is now same-origin, and `Origin: null` passes
    only with Sec-Fetch-Site same-origin."""
    page = chromium.new_page()
    try:
        posted = []
        page.on("request", lambda r: r.method == "POST" and posted.append(r.headers.get("origin")))
        page.goto(f"{site.server.url}/-/prompt/{site.ids['local'][0]}")
        with page.expect_navigation():
            page.click("button.sb-regenerate")
        assert posted == [site.server.url]  # what the browser sent: this site's origin
        assert re.search(r"/-/regenerate/\d+$", page.url), (page.url, page.locator("h1").inner_text())
    finally:
        page.close()


CANARY = "<!DOCTYPE html><html><body><p>canary</p>" + "".join(PAYLOADS[i] for i in (1, 3, 21, 28, 29)) + \
    "<img src=x onerror=eval('alert(\\x22XSS80\\x22)')></body></html>"  # eval with a marker the CSP report can show


@pytest.mark.browser
def test_the_trap_catches_a_payload_that_runs(chromium, site):
    """The detectors work: a page of raw payloads (served on the site's origin by the test itself)
    is recorded as executions without CSP and as CSP violations on payloads with it; and the
    hostile pages above did show the payloads, as text."""
    from spellbook.plugins.hosting import content_security_policy

    for bypass in (True, False):
        findings = BrowserFindings()
        context = chromium.new_context(bypass_csp=bypass)
        page = context.new_page()
        _watch(context, page, site, findings, check_headers=False)
        context.route(site.server.url + "/__canary", lambda route: route.fulfill(
            status=200, body=CANARY, headers={"content-type": "text/html; charset=utf-8", "content-security-policy": content_security_policy()}))
        try:
            page.goto(site.server.url + "/__canary")
            markers = ("alert(XSS2)", "__xss.push(XSS4)", "eval(", "setTimeout(string", "document.write(XSS30)", "alert(XSS22)")
            for _ in range(50):  # the reports arrive through Playwright's bindings, while the test waits
                page.wait_for_timeout(100)
                ran = " ".join(what for _, what in findings.executions)
                if (bypass and all(marker in ran for marker in markers)) or (not bypass and findings.csp_payload):
                    break
            if bypass:
                for marker in markers:
                    assert marker in ran, (marker, findings.executions)
                page.goto(site.server.url + "/-/search?q=zebra&_size=200")
                tiles = page.locator(".sb-caption")  # inner_text, not all_inner_texts: that one goes through the page's eval
                captions = " ".join(tiles.nth(i).inner_text() for i in range(tiles.count()))
                assert PAYLOADS[0] in captions and PAYLOADS[5].strip() in captions  # shown as text
            else:
                assert not findings.executions, findings.executions
                assert findings.csp_payload and not findings.csp_ours, _summary(findings)
        finally:
            context.close()
