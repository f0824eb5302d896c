"""An artist's evidence file: every training caption naming the artist, where it came from and how
to find it again, stamped with the export's time and Spellbook's version; CSV, JSON and a page
that prints (checked by printing it to PDF in Chromium)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from datetime import datetime, timezone

import pytest

from spellbook import __version__
from spellbook.ingest.removals import remove
from tests.conftest import Server, spellbook_datasette

pytestmark = pytest.mark.pages

FIELDS = {"id", "key", "laion_hash", "url", "caption", "domain", "dataset", "dataset_version", "source_sha256", "permalink"}
STALENHAG_URLS = {"https://i.pinimg.com/originals/aa/bb/cc.jpg", "https://s-media-cache-ak0.pinimg.com/736x/11/22.jpg", "https://foo.blogspot.com/photo.jpg"}


async def get(ds, path):
    response = await ds.client.get(path)
    assert response.status_code == 200, (path, response.status_code, response.text[:500])
    return response


def recent(stamp: str) -> bool:
    moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return abs((datetime.now(timezone.utc) - moment).total_seconds()) < 600


async def test_json_evidence_names_every_row_with_its_source(training_db, tmp_path):
    ds = spellbook_datasette(training_db)
    data = (await get(ds, "/-/artist/Simon%20Stalenhag/evidence.json")).json()
    assert data["artist"] == "simon stålenhag" and data["spellbook_version"] == __version__ and recent(data["exported_at"])
    rows = data["rows"]
    assert {row["url"] for row in rows} == STALENHAG_URLS  # both spellings: the name folds
    report = (await get(ds, "/-/artist/simon%20stalenhag.json")).json()
    assert len(rows) == report["training"]["count"]
    crafted = hashlib.sha256((tmp_path / "crafted.parquet").read_bytes()).hexdigest()
    for row in rows:
        assert FIELDS <= set(row)
        assert row["dataset"] == "crafted.parquet" and row["source_sha256"] == crafted and row["dataset_version"].startswith("laion")
        assert "stalenhag" in row["caption"].lower().replace("å", "a")
        # The permalink is the row's stable key, and it leads to the row
        assert row["permalink"].endswith(f"/-/image/{row['key']}")
        page = await ds.client.get(row["permalink"].split("localhost", 1)[-1])
        assert page.status_code in (200, 302)


async def test_csv_evidence_carries_the_stamp_on_every_row(training_db):
    ds = spellbook_datasette(training_db)
    response = await get(ds, "/-/artist/simon%20stalenhag/evidence.csv")
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="spellbook-evidence-simon-st' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {row["url"] for row in rows} == STALENHAG_URLS
    assert FIELDS | {"exported_at", "spellbook_version"} <= set(rows[0])
    assert {row["spellbook_version"] for row in rows} == {__version__} and all(recent(row["exported_at"]) for row in rows)
    json_rows = (await get(ds, "/-/artist/simon%20stalenhag/evidence.json")).json()["rows"]
    assert [row["key"] for row in rows] == [str(row["key"]) for row in json_rows]


async def test_a_removed_row_is_not_in_the_evidence(training_db):
    remove(training_db, "url", ["https://foo.blogspot.com/photo.jpg"], reason="owner's request")
    ds = spellbook_datasette(training_db)
    for path in ("/-/artist/simon%20stalenhag/evidence.json", "/-/artist/simon%20stalenhag/evidence.csv", "/-/artist/simon%20stalenhag/evidence"):
        text = (await get(ds, path)).text
        assert "foo.blogspot.com" not in text and "pinimg.com" in text
    assert len((await get(ds, "/-/artist/simon%20stalenhag/evidence.json")).json()["rows"]) == 2


async def test_hostile_artist_name_is_escaped_and_an_unknown_one_is_empty(training_db):
    ds = spellbook_datasette(training_db)
    page = (await get(ds, "/-/artist/%3Cscript%3Ealert(1)%3C%2Fscript%3E/evidence")).text
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page
    data = (await get(ds, "/-/artist/nobody%20at%20all/evidence.json")).json()
    assert data["rows"] == []
    assert (await get(ds, "/-/artist/nobody%20at%20all/evidence.csv")).text.startswith("id,")


@pytest.mark.browser
def test_the_evidence_page_prints(browser, training_db):
    """Printed to PDF by Chromium: the rows and the stamp are on paper, the buttons and the site's
    navigation are not."""
    from pypdf import PdfReader

    server = Server(training_db)
    try:
        page = browser.new_page()
        page.goto(server.url + "/-/artist/simon%20stalenhag")
        page.click("a.sb-evidence-link")
        page.wait_for_url("**/-/artist/simon%20st*/evidence")
        assert page.locator("table.sb-evidence tbody tr").count() == 3
        # The Print button asks the browser to print (window.print is replaced to record the call)
        page.evaluate("() => { window.__printed = 0; window.print = () => { window.__printed += 1; }; }")
        page.click("button.sb-print")
        assert page.evaluate("window.__printed") == 1
        pdf = page.pdf(format="A4", print_background=False)
    finally:
        server.stop()
    reader = PdfReader(io.BytesIO(pdf))
    text = " ".join(p.extract_text() for p in reader.pages)
    flat = re.sub(r"\s+", " ", text)
    assert f"Spellbook {__version__}" in flat and "Exported" in flat
    for fragment in ("i.pinimg.com/originals/aa/bb/cc.jpg", "foo.blogspot.com/photo.jpg", "Tales from the Loop"):
        assert fragment in flat.replace(" ", "") or fragment in flat, fragment
    assert "Print" not in re.sub(r"Printed|print", "", flat)  # the button is hidden on paper
    assert "CSV · JSON" not in flat
    # Wide columns wrap instead of running off the page
    assert all(float(p.mediabox.width) < 700 for p in reader.pages)
