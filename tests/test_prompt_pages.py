"""Prompt search, prompt pages, keyword pages and the artist report, through Datasette's ASGI client."""
from __future__ import annotations

import csv
import io
import json
import re

import pytest

from tests.conftest import DATA_DIR
from spellbook.database.connect import connect
from spellbook.ingest.load import ingest_prompt_files
from spellbook.queries.reports import generation_data
from tests.conftest import spellbook_datasette

pytestmark = pytest.mark.pages


@pytest.fixture
def full_db(training_db):
    """Both sides: the training fixture plus real prompts (DiffusionDB, I2P, images with metadata)."""
    summary = ingest_prompt_files(
        training_db,
        [DATA_DIR / "prompts" / "diffusiondb_sample_metadata_schema.parquet", DATA_DIR / "prompts" / "i2p_lowrisk_subset.csv", DATA_DIR / "image_metadata"],
    )
    assert not summary.failed
    return training_db


@pytest.fixture
def ds(full_db):
    return spellbook_datasette(full_db)


async def get(ds, path, status=200):
    response = await ds.client.get(path)
    assert response.status_code == status, (path, response.status_code, response.text[:400])
    return response


async def prompt_id(ds, text):
    rows = (await get(ds, "/-/prompts.json?q=" + text)).json()["rows"]
    return rows[0]["id"]


def test_generation_data_block_in_a1111_spelling():
    row = {"prompt": "a castle", "negative_prompt": "blurry", "steps": 20, "sampler": "k_euler_ancestral", "cfg": 7.0, "seed": 42, "width": 512, "height": 768, "model": "sd-v1-4"}
    assert generation_data(row) == "a castle\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x768, Model: sd-v1-4"
    sparse = {"prompt": "a castle", "negative_prompt": None, "steps": None, "sampler": None, "cfg": 7.5, "seed": None, "width": None, "height": None, "model": None}
    assert generation_data(sparse) == "a castle\nCFG scale: 7.5"


async def test_prompt_page_shows_parameters_and_copy_buttons(ds):
    pid = await prompt_id(ds, "%22a+circle%22")
    page = (await get(ds, f"/-/prompt/{pid}")).text
    block = "a circle\nNegative prompt: a square\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 2015833630, Size: 64x64, Model: realisticVisionV51_v51VAE"
    assert f'<pre class="sb-generation-data" id="sb-generation-data">{block}</pre>' in page
    for target in ("sb-prompt-text", "sb-negative-text", "sb-generation-data"):
        assert f'data-copy-target="{target}"' in page
    data = (await get(ds, f"/-/prompt/{pid}.json")).json()
    assert data["generation_data"] == block and data["sampler_a1111"] == "Euler"


async def test_missing_values_show_as_a_dash(ds):
    pid = await prompt_id(ds, "%22photograph+of+victorian+woman%22")  # ComfyUI image: no size recorded
    page = (await get(ds, f"/-/prompt/{pid}")).text
    assert "<tr><th>Size</th><td>—</td></tr>" in page
    assert "Seed</th><td>280823642470253</td>" in page


async def test_prompt_keywords_link_to_their_pages(ds):
    pid = (await get(ds, "/-/prompts.json?q=rutkowski")).json()["rows"][0]["id"]
    page = (await get(ds, f"/-/prompt/{pid}")).text
    assert 'href="/-/keyword/greg%20rutkowski"' in page


async def test_prompt_search_grid(ds):
    page = (await get(ds, "/-/prompts?q=rutkowski")).text
    assert page.count('class="sb-tile') >= 20
    assert "<mark>rutkowski</mark>" in page.lower()
    data = (await get(ds, "/-/prompts.json?q=rutkowski")).json()
    assert data["ranked"] is True and data["total"] >= 150


async def test_keyword_page(ds, full_db):
    data = (await get(ds, "/-/keyword/greg%20rutkowski.json")).json()
    assert data["kind"] == "artist" and data["prompt_count"] > 100
    assert data["prompt_share"] == pytest.approx(data["prompt_count"] / data["total_prompts"])
    conn = connect(full_db)
    dated = conn.execute(
        """SELECT count(*) FROM generation_keywords gk JOIN keywords k ON k.id = gk.keyword_id JOIN generations g ON g.id = gk.generation_id
           WHERE k.keyword = 'greg rutkowski' AND g.created_at IS NOT NULL"""
    ).fetchone()[0]
    assert 0 < dated < data["prompt_count"]  # I2P prompts carry no date
    assert sum(d["count"] for d in data["days"]) == dated
    assert data["cooccurring"][0]["keyword"] == "artgerm"
    page = (await get(ds, "/-/keyword/greg%20rutkowski")).text
    assert "<polyline" in page and 'class="sb-training-link"' in page
    modifier = (await get(ds, "/-/keyword/trending%20on%20artstation.json")).json()
    assert modifier["kind"] == "modifier" and modifier["training"]["query"] == '"trending on artstation"'
    redirect = await get(ds, "/-/keyword/no%20such%20keyword", status=302)  # Datasette: %20 -> ~20
    await get(ds, redirect.headers["location"], status=404)
    assert (await get(ds, "/-/keyword/greg~20rutkowski.json")).json()["keyword"] == "greg rutkowski"


async def test_artist_report_joins_both_sides(ds):
    data = (await get(ds, "/-/artist/Simon%20Stalenhag.json")).json()
    assert data["artist"] == "simon stålenhag"
    assert data["training"]["count"] == 3
    assert data["training"]["domains"]["domains"][0] == {"domain": "pinimg.com", "count": 2}
    histogram = data["training"]["aesthetic_histogram"]
    # Every bin of 0.25 from the lowest score to the highest, empty ones kept; all 3 matches counted.
    assert [(b["bin"], b["count"]) for b in histogram["bins"]] == [(6.5, 1), (6.75, 0), (7.0, 1), (7.25, 0), (7.5, 0), (7.75, 1)]
    assert histogram["sampled"] is False
    greg = (await get(ds, "/-/artist/greg%20rutkowski.json")).json()
    assert greg["prompts"]["count"] > 100 and greg["prompts"]["days"] and greg["prompts"]["cooccurring"]
    page = (await get(ds, "/-/artist/greg%20rutkowski")).text
    assert "In the training data" in page and "In prompts" in page and "<polyline" in page


async def test_artist_csv_exports(ds):
    response = await get(ds, "/-/artist/simon%20stalenhag.csv?side=training")
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 3 and {"url", "caption", "domain"} <= set(rows[0])
    prompts = list(csv.DictReader(io.StringIO((await get(ds, "/-/artist/greg%20rutkowski.csv?side=prompts")).text)))
    assert len(prompts) == (await get(ds, "/-/artist/greg%20rutkowski.json")).json()["prompts"]["count"]
    assert all("rutkowski" in row["prompt"].lower() for row in prompts)


async def test_landing_page_lists_artists_on_both_sides(ds):
    page = (await get(ds, "/")).text
    training = re.search(r'<ol class="sb-artists-training">(.*?)</ol>', page, re.S).group(1)
    prompts = re.search(r'<ol class="sb-artists-prompts">(.*?)</ol>', page, re.S).group(1)
    assert "simon stålenhag" in training
    assert "greg rutkowski" in prompts and "artgerm" in prompts
    counts = [int(n.replace(",", "")) for n in re.findall(r'([\d,]+) prompts', prompts)]
    assert counts == sorted(counts, reverse=True) and len(counts) == 20
    assert "prompts with their settings" in page


async def test_hostile_prompts_are_escaped(tmp_path, training_db):
    hostile = tmp_path / "lexica.json"
    hostile.write_text(json.dumps({"images": [{"id": "x1", "prompt": "<script>alert(1)</script> zebra, by <b>evil</b>", "seed": "1", "src": "javascript:alert(2)", "width": 512, "height": 512}]}))
    ingest_prompt_files(training_db, [hostile])
    ds = spellbook_datasette(training_db)
    pid = (await get(ds, "/-/prompts.json?q=zebra")).json()["rows"][0]["id"]
    for path in ["/-/prompts?q=zebra", f"/-/prompt/{pid}", "/spellbook/generations?_search=zebra"]:
        page = (await get(ds, path)).text
        assert "<script>alert" not in page and "<b>evil" not in page and "javascript:alert" not in page.replace("&#34;", "")


# Every custom route with a path that exercises it on this database: a route without an entry
# here fails the test below, so a new page cannot go without its smoke test.
SMOKE = {
    r"^/-/search(\.(?P<format>json))?$": ["/-/search?q=stalenhag", "/-/search.json?q=cat", "/-/search?domain=pinimg.com"],
    r"^/-/domains(\.(?P<format>json))?$": ["/-/domains", "/-/domains.json?q=stalenhag", "/-/domains?q=painting&fragment=1"],
    r"^/-/prompts(\.(?P<format>json))?$": ["/-/prompts", "/-/prompts?q=castle", "/-/prompts.json?q=portrait&page=2&_size=5"],
    r"^/-/prompt/(?P<id>\d{1,19})(\.(?P<format>json))?$": ["/-/prompt/1", "/-/prompt/1.json"],
    r"^/-/prompt/(?P<id>\d{1,19})/image$": [],  # 404 unless local images are on: tests/test_identities.py serves one
    r"^/-/keyword/(?P<keyword>[^/]+?)(\.(?P<format>json))?$": ["/-/keyword/greg%20rutkowski", "/-/keyword/artstation.json"],
    r"^/-/artist/(?P<name>[^/]+?)(\.(?P<format>json|csv))?$": [
        "/-/artist/greg%20rutkowski", "/-/artist/Simon%20Stalenhag.json", "/-/artist/greg%20rutkowski.csv?side=prompts", "/-/artist/simon%20stalenhag.csv",
    ],
    r"^/-/artist/(?P<name>[^/]+?)/evidence(\.(?P<format>json|csv))?$": ["/-/artist/greg%20rutkowski/evidence", "/-/artist/greg%20rutkowski/evidence.json", "/-/artist/greg%20rutkowski/evidence.csv"],
    r"^/-/optout(\.(?P<format>json))?$": ["/-/optout", "/-/optout.json", "/-/optout?domain=pinimg.com"],  # with checks: tests/test_optout.py
    r"^/-/image/(?P<key>-?\d{1,19})$": [],  # a redirect: tests/test_site.py follows one
    # Without vectors the similarity pages say so (and keyword search still answers): tests/test_similarity.py has them with vectors
    r"^/-/similar(\.(?P<format>json))?$": ["/-/similar", "/-/similar?q=castle", "/-/similar.json?q=castle&mode=keywords"],
    r"^/-/prompt/(?P<id>\d{1,19})/neighbours(\.(?P<format>json))?$": ["/-/prompt/1/neighbours.json"],
    r"^/-/artist/(?P<name>[^/]+?)/lookalikes(\.(?P<format>json|csv))?$": ["/-/artist/greg%20rutkowski/lookalikes.json", "/-/artist/greg%20rutkowski/lookalikes.csv"],
    # The runner's pages answer 404 unless `spellbook serve --enable-runner`: tests/test_runner_web.py
    r"^/-/prompt/(?P<id>\d{1,19})/regenerate$": [],
    r"^/-/regenerate/(?P<job>\d{1,19})(\.(?P<format>json))?$": [],
    r"^/-/regenerate/(?P<job>\d{1,19})/image$": [],
    r"^/-/request-removal$": [],  # 404 unless a requests database is configured: tests/test_removal_requests.py
}


def registered_routes() -> list[str]:
    from importlib import import_module
    from importlib.metadata import entry_points

    patterns = []
    for entry in entry_points(group="datasette"):
        module = import_module(entry.value)
        if entry.value.startswith("spellbook") and hasattr(module, "register_routes"):
            patterns.extend(pattern for pattern, _ in module.register_routes())
    return patterns


async def test_every_custom_route_answers(ds):
    assert set(registered_routes()) == set(SMOKE)
    for paths in SMOKE.values():
        for path in paths:
            response = await get(ds, path)
            if ".json" in path:
                assert response.json()
            elif ".csv" in path:
                assert response.text.startswith("id,")
            elif "fragment=1" in path:
                assert 'class="sb-bars"' in response.text
            else:
                assert "<html" in response.text and "Spellbook" in response.text
