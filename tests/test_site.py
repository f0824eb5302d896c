"""The Datasette site, through its ASGI client, on real databases built by the ingest code."""
from __future__ import annotations

import html
import re

import pytest
import yaml

from spellbook.site import CONFIG, METADATA, datasette_1
from tests.conftest import REPO
from spellbook.ingest.keys import stable_key
from spellbook.ingest.load import ingest_training_files
from tests.conftest import spellbook_datasette, write_v2

pytestmark = pytest.mark.pages


async def get(ds, path, status=200):
    response = await ds.client.get(path)
    assert response.status_code == status, (path, response.status_code, response.text[:500])
    return response


def tiles(page: str) -> list[str]:
    return re.findall(r'<div class="sb-tile[^"]*".*?</div>\s*</div>', page, re.S)


async def test_home_page_has_search_counts_and_provenance(datasette):
    page = (await get(datasette, "/")).text
    assert '<form class="sb-search" action="/-/search"' in page
    assert "10,008</strong> training images" in page  # 5 V1 + 9,999 URL+TEXT + 4 crafted
    assert "laion_url_text_10000.parquet" in page and "laion-aesthetics-v1" in page
    assert "CC-BY 4.0" in page and "creativecommons.org/licenses/by/4.0" in page


async def test_search_grid_shows_tiles_with_highlights(datasette):
    page = (await get(datasette, "/-/search?q=stalenhag")).text
    found = tiles(page)
    assert len(found) == 3
    assert "<mark>Stålenhag</mark>" in page and "<mark>Stalenhag</mark>" in page
    assert all('loading="lazy"' in tile for tile in found)
    assert "3</strong> images" in page
    assert 'href="/spellbook/training_images?_search=stalenhag"' in page  # switch to the table view


async def test_tiles_are_sized_from_width_and_height(datasette):
    page = (await get(datasette, "/-/search?q=loop")).text
    wide = [t for t in tiles(page) if "Tales from the" in t][0]
    assert 'style="width: 360px"' in wide  # 1200x600 at 180px high
    assert "pinimg.com" in wide and "7.90" in wide  # domain and aesthetic score


async def test_placeholder_names_the_domain(datasette):
    tile = tiles((await get(datasette, "/-/search?q=%22foggy+harbour%22")).text)[0]
    assert '<span class="sb-placeholder">image unavailable<br><strong>foo.blogspot.com</strong>' in tile


async def test_unsafe_rows_are_blurred_at_the_configured_threshold(training_db):
    page = (await get(spellbook_datasette(training_db), "/-/search?q=%22foggy+harbour%22")).text
    assert "sb-blurred" in tiles(page)[0]  # punsafe 0.93 >= 0.5 from datasette.yaml
    config = yaml.safe_load(CONFIG.read_text())
    config["plugins"]["spellbook"]["punsafe_blur_threshold"] = 0.95
    page = (await get(spellbook_datasette(training_db, config=config), "/-/search?q=%22foggy+harbour%22")).text
    assert "sb-blurred" not in tiles(page)[0]


async def test_search_json(datasette):
    data = (await get(datasette, "/-/search.json?q=%22simon+stalenhag%22")).json()
    assert data["total"] == 3 and data["ranked"] is True
    assert {row["domain"] for row in data["rows"]} == {"pinimg.com", "foo.blogspot.com"}


async def test_domain_breakdown_json_shape(datasette):
    whole = (await get(datasette, "/-/domains.json")).json()
    assert set(whole) >= {"query", "total", "domains"}
    assert whole["query"] is None and whole["total"] == 10_008
    assert whole["domains"][0] == {"domain": "shopify.com", "count": 647}
    assert sum(d["count"] for d in whole["domains"]) + whole["other"] == whole["total"]
    hit = (await get(datasette, "/-/domains.json?q=stalenhag")).json()
    assert hit == {"query": "stalenhag", "total": 3, "domains": [{"domain": "pinimg.com", "count": 2}, {"domain": "foo.blogspot.com", "count": 1}], "other": 0, "estimated": False}


async def test_search_page_loads_its_domain_chart_as_a_fragment(datasette):
    page = (await get(datasette, "/-/search?q=stalenhag")).text
    url = html.unescape(re.search(r'data-fragment-url="([^"]+)"', page).group(1))
    assert url == "/-/domains?q=stalenhag&top=10&fragment=1"
    fragment = (await get(datasette, url)).text
    assert fragment.count('class="sb-bar"') == 2 and "<html" not in fragment


async def test_domain_page_has_chart_and_links_that_filter(datasette):
    page = (await get(datasette, "/-/domains?q=stalenhag")).text
    assert 'id="domain-chart"' in page and page.count('class="sb-bar"') == 2
    link = html.unescape(re.search(r'<a href="(/-/search\?q=stalenhag&amp;domain=pinimg.com)">', page).group(1))
    filtered = (await get(datasette, link)).text
    assert len(tiles(filtered)) == 2 and "from pinimg.com" in filtered
    whole = (await get(datasette, "/-/domains")).text
    assert "shopify.com" in whole and "other" in whole
    browse = (await get(datasette, "/-/search?domain=shopify.com")).text
    assert "647</strong> images" in browse


async def test_row_page_shows_the_image_and_full_caption(datasette):
    key = stable_key("https://i.pinimg.com/originals/aa/bb/cc.jpg", "Tales from the Loop by Simon Stålenhag")
    redirect = await get(datasette, f"/-/image/{key}", status=302)
    page = (await get(datasette, redirect.headers["location"])).text
    assert f'href="/-/image/{key}"' in page  # the permanent link
    assert '<h2 class="sb-full-caption">Tales from the Loop by Simon Stålenhag</h2>' in page
    assert 'class="sb-source" href="https://i.pinimg.com/originals/aa/bb/cc.jpg"' in page
    assert "aesthetic_score" in page  # every column, from Datasette's own row view


HOSTILE = [
    {"URL": "https://evil.example.com/x.jpg?\"onerror=\"alert(1)", "TEXT": "<script>alert('caption')</script> zebra"},
    {"URL": "http://evil.example.com/<img src=x onerror=alert(2)>.png", "TEXT": "zebra <img src=x onerror=alert(3)>"},
    {"URL": "HTTPS://EVIL.example.com/ok.jpg", "TEXT": "zebra \" onmouseover=\"alert(4)"},
]


@pytest.fixture
def hostile_db(tmp_path):
    db = tmp_path / "spellbook.db"
    ingest_training_files(db, [write_v2(tmp_path / "hostile.parquet", HOSTILE)])
    return db


async def test_hostile_captions_and_urls_are_escaped(hostile_db):
    ds = spellbook_datasette(hostile_db)
    for path in ["/-/search?q=zebra", "/spellbook/training_images?_search=zebra", "/-/domains?q=zebra"]:
        page = (await get(ds, path)).text
        assert "<script>alert" not in page
        assert "<img src=x" not in page
        assert 'onerror="alert' not in page and 'onmouseover="alert' not in page
    page = (await get(ds, "/-/search?q=zebra")).text
    assert "&lt;script&gt;alert(&#39;caption&#39;)&lt;/script&gt;" in page
    for row in HOSTILE:
        location = (await get(ds, f"/-/image/{stable_key(row['URL'], row['TEXT'])}", status=302)).headers["location"]
        page = (await get(ds, location)).text
        assert "<script>alert" not in page and 'onerror="alert' not in page


async def test_non_http_urls_never_become_links(tmp_path):
    # The loader rejects them, but a database made by other tools may hold them: the web layer checks too.
    db = tmp_path / "spellbook.db"
    ingest_training_files(db, [write_v2(tmp_path / "ok.parquet", [{"URL": "https://ok.example.com/a.jpg", "TEXT": "quokka"}])])
    from spellbook.database.connect import connect

    conn = connect(db)
    conn.execute("UPDATE training_images SET url = 'javascript:alert(5)'")
    conn.close()
    ds = spellbook_datasette(db)
    for path in ["/-/search?q=quokka", "/spellbook/training_images?_search=quokka", "/spellbook/training_images/1"]:
        page = (await get(ds, path)).text
        assert 'href="javascript:' not in page and 'src="javascript:' not in page


async def test_search_input_is_never_fts_syntax(datasette):
    for q in ['"unbalanced', "NEAR(", "a OR", "*", "caption:foo", "^", "-x", "AND AND"]:
        await get(datasette, "/-/search?q=" + q)
        await get(datasette, "/-/domains.json?q=" + q)


def test_metadata_yml_is_valid_datasette_metadata():
    metadata = yaml.safe_load(METADATA.read_text())
    assert set(metadata) <= {"title", "description", "description_html", "license", "license_url", "source", "source_url", "about", "about_url", "databases"}
    # Datasette 1.0 refuses a plugins block in metadata: Spellbook's settings live in datasette.yaml,
    # at its top level (a plugins block under databases would be ignored).
    config = yaml.safe_load(CONFIG.read_text())
    assert set(config) <= {"plugins", "settings", "databases", "permissions", "allow", "allow_sql"}
    assert "spellbook" in config["plugins"]
    assert 0 < config["plugins"]["spellbook"]["punsafe_blur_threshold"] <= 1


def plugin_modules() -> set[str]:
    """Every page module under plugins/ (the _helpers are not plugins)."""
    return {f"spellbook.plugins.{p.stem}" for p in (REPO / "plugins").glob("*.py") if not p.name.startswith("_")}


def test_every_plugin_module_has_an_entry_point():
    from importlib.metadata import entry_points

    registered = {entry.value for entry in entry_points(group="datasette") if entry.value.startswith("spellbook")}
    assert plugin_modules() | {"spellbook", "spellbook.plugins"} == registered


async def test_every_plugin_hook_is_registered(datasette):
    plugins = [p for p in (await get(datasette, "/-/plugins.json")).json() if p["name"] == "spellbook"]
    assert len(plugins) == len(plugin_modules()) + 2  # the page modules, the package (static) and spellbook (templates)
    hooks = {hook for plugin in plugins for hook in plugin["hooks"]}
    assert {"register_routes", "render_cell", "extra_css_urls", "extra_js_urls", "prepare_jinja2_environment", "extra_template_vars"} <= hooks
    assert sum(1 for p in plugins if p["static"]) == 1 and sum(1 for p in plugins if p["templates"]) == 1
    await get(datasette, "/-/image/12345", status=404)
    await get(datasette, "/-/static-plugins/spellbook/spellbook.js")


async def test_every_response_carries_the_security_headers(datasette):
    from spellbook.plugins.hosting import script_hashes

    for path in ["/", "/-/search?q=cat", "/-/domains.json", "/spellbook/training_images", "/-/static-plugins/spellbook/spellbook.css", "/-/nope"]:
        response = await datasette.client.get(path)
        csp = response.headers["content-security-policy"]
        script_src = csp.split("script-src")[1].split(";")[0]
        assert script_src.startswith(" 'self' ") and "'sha256-" in script_src and "'unsafe-inline'" not in script_src
        # a nonce only on Datasette 1.0's own pages, whose inline scripts carry each page's data
        assert "'nonce-" not in script_src or (datasette_1() and not path.startswith("/-/")), (path, script_src)
        assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff" and response.headers["referrer-policy"] == "same-origin"
    assert len(script_hashes()) >= 3  # Datasette's own inline scripts, by hash
    static = await datasette.client.get("/-/static-plugins/spellbook/spellbook.js")
    assert static.headers["cache-control"] == "public, max-age=3600"
