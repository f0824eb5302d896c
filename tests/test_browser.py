"""What a person sees: headless Chromium (Debian's, driven by Playwright) against `spellbook serve`."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.pages]


def test_search_grid_chart_and_domain_link(browser, served):
    page = browser.new_page()
    page.goto(served.url + "/")
    page.fill('form.sb-search input[name="q"]', "stalenhag")
    page.click('form.sb-search button[type="submit"]')
    page.wait_for_url("**/-/search?q=stalenhag")

    tiles = page.locator(".sb-grid .sb-tile")
    assert tiles.count() == 3
    assert page.locator(".sb-grid mark").first.inner_text().lower().startswith("st")
    # No network here: every hotlinked image fails, and its tile shows the domain instead.
    page.wait_for_function("document.querySelectorAll('.sb-tile.sb-broken').length === 3")
    assert page.locator(".sb-tile.sb-broken .sb-placeholder").first.is_visible()

    # The unsafe tile is blurred until clicked.
    blurred = page.locator(".sb-tile.sb-blurred")
    assert blurred.count() == 1
    blurred.locator(".sb-frame").click()
    assert page.locator(".sb-tile.sb-blurred").count() == 0

    # The domain chart (loaded after the grid): bars with widths, and a domain link that filters.
    page.wait_for_selector("[data-fragment-url][data-loaded=yes] .sb-bars .sb-bar")
    bars = page.locator(".sb-bars .sb-bar")
    assert bars.count() == 2
    widths = [bar.locator(".sb-bar-fill").bounding_box()["width"] for bar in bars.all()]
    assert widths[0] > widths[1] > 0
    page.click(".sb-bars a:text-is('pinimg.com')")
    page.wait_for_url("**/-/search?q=stalenhag&domain=pinimg.com")
    assert page.locator(".sb-grid .sb-tile").count() == 2
    assert "from pinimg.com" in page.locator("h1").inner_text()

    # And the whole-table chart.
    page.goto(served.url + "/-/domains")
    assert page.locator("#domain-chart .sb-bar").count() >= 10
    page.click("#domain-chart a:text-is('shopify.com')")
    page.wait_for_url("**/-/search?q=&domain=shopify.com")
    assert "647" in page.locator(".sb-total").inner_text()


@pytest.fixture
def served_full(training_db):
    from tests.conftest import DATA_DIR
    from spellbook.ingest.load import ingest_prompt_files
    from tests.conftest import Server

    ingest_prompt_files(training_db, [DATA_DIR / "prompts" / "diffusiondb_sample_metadata_schema.parquet", DATA_DIR / "image_metadata"])
    server = Server(training_db)
    yield server
    server.stop()


def test_copy_generation_data_and_artist_report(browser, served_full):
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.goto(served_full.url + "/-/prompts?q=%22a+circle%22")
    page.click(".sb-grid .sb-tile .sb-frame")
    page.wait_for_url("**/-/prompt/*")
    expected = "a circle\nNegative prompt: a square\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 2015833630, Size: 64x64, Model: realisticVisionV51_v51VAE"
    assert page.locator("#sb-generation-data").inner_text() == expected
    page.click("button[data-copy-target=sb-generation-data]")
    page.wait_for_selector("button[data-copy-target=sb-generation-data][data-copied=yes]")
    assert page.evaluate("navigator.clipboard.readText()") == expected
    page.click("button[data-copy-target=sb-prompt-text]")
    page.wait_for_selector("button[data-copy-target=sb-prompt-text][data-copied=yes]")
    assert page.evaluate("navigator.clipboard.readText()") == "a circle"

    # The artist report: both sides, the domain chart and the per-day line chart.
    page.goto(served_full.url + "/")
    page.click("ol.sb-artists-prompts a:text-is('greg rutkowski')")
    page.wait_for_url("**/-/artist/greg%20rutkowski")
    assert page.locator("section.sb-training-side h2").inner_text() == "In the training data"
    assert page.locator("section.sb-prompt-side h2").inner_text() == "In prompts"
    assert int(page.locator("section.sb-prompt-side .sb-count").inner_text().replace(",", "")) > 100
    assert page.locator("section.sb-prompt-side svg polyline").count() == 1
    assert page.locator("section.sb-prompt-side .sb-grid .sb-tile").count() == 12
    page.goto(served_full.url + "/-/artist/simon%20stalenhag")
    assert page.locator("h1").inner_text() == "simon stålenhag"
    assert page.locator("section.sb-training-side .sb-bars .sb-bar").count() == 2
    # Scores 6.5, 7.1 and 7.9: every bin of 0.25 from 6.5 to 8.0 keeps its place, the empty ones too.
    assert page.locator("section.sb-training-side .sb-histogram div").count() == 6
    assert page.locator("section.sb-training-side .sb-histogram div.sb-empty-bin").count() == 3
    context.close()


def test_a_long_other_bar_shows_its_break(browser, tmp_path):
    """30 images from one domain and 200 from 200 others: "other" is far longer than the top bar,
    and is drawn broken rather than as long as it."""
    from tests.conftest import Server
    from tests.test_search_pages import broken_other_db

    server = Server(broken_other_db(tmp_path))
    try:
        page = browser.new_page()
        page.goto(server.url + "/-/domains?q=tiger&top=1")
        top, other = page.locator("#domain-chart .sb-bar").all()
        assert top.locator(".sb-bar-break").count() == 0
        mark = other.locator(".sb-bar-break")
        assert mark.is_visible() and mark.inner_text() == "≈"
        fill = other.locator(".sb-bar-fill")
        assert "linear-gradient" in fill.evaluate("e => getComputedStyle(e).maskImage || getComputedStyle(e).webkitMaskImage")
        # As wide as the chart allows, like the top bar, and marked as not to scale.
        assert fill.bounding_box()["width"] == top.locator(".sb-bar-fill").bounding_box()["width"]
        assert "not to scale" in mark.get_attribute("title") or "longer than" in mark.get_attribute("title")
        assert "200" in other.locator(".sb-bar-count").inner_text()
    finally:
        server.stop()


def test_similarity_pages_by_words_upload_more_like_this_and_lookalikes(browser, tmp_path, tiny_clip):
    """The real model class on a tiny random checkpoint: LAION-shaped shards made with it, served
    by `spellbook serve`, which loads the same checkpoint to encode queries."""
    from spellbook.embeddings.embed import import_laion
    from spellbook.embeddings.models import get_model
    from tests.conftest import Server
    from tests.test_similarity import TRAINING, image, laion_shard, url
    from tests.conftest import write_v2
    from spellbook.ingest.load import ingest_training_files

    db = tmp_path / "colours.db"
    ingest_training_files(db, [write_v2(tmp_path / "colours.parquet", [{"URL": url(i), "TEXT": c} for i, (c, _) in enumerate(TRAINING)])])
    model = get_model(tiny_clip, None)
    import_laion(db, [laion_shard(tmp_path / "laion", model)], model)
    upload = tmp_path / "mine.png"
    image((0, 250, 0)).save(upload)
    server = Server(db)
    try:
        page = browser.new_page()
        page.goto(server.url + "/-/similar")
        page.fill('form.sb-similar-form input[name="q"]', "painting by zorana velk")
        page.click('form.sb-similar-form button[type="submit"]')
        page.wait_for_url("**/-/similar?q=painting*")
        tiles = page.locator(".sb-grid .sb-tile")
        assert tiles.count() == len(TRAINING)  # hybrid: every image has a vector, the words rank some first
        assert page.locator(".sb-why").first.inner_text().startswith("words and similarity")
        page.locator(".sb-tile a.sb-more").first.click()
        page.wait_for_url("**/-/similar?image=*")
        assert page.locator("h1").inner_text().startswith("More like training image")
        assert page.locator(".sb-grid .sb-tile").count() == len(TRAINING) - 1  # all but itself
        page.goto(server.url + "/-/similar")
        page.set_input_files('form.sb-upload input[type="file"]', str(upload))
        page.click('form.sb-upload button[type="submit"]')
        page.wait_for_selector("h1:text('Like your image')")
        assert page.locator(".sb-grid .sb-tile").count() == len(TRAINING)
        page.goto(server.url + "/-/artist/zorana%20velk")
        page.wait_for_selector(".sb-lookalikes-slot[data-loaded=yes]")
        assert page.locator(".sb-lookalikes .sb-tile").count() == len(TRAINING) - 3  # every image whose caption does not name her
        assert "not proof" in page.locator(".sb-lookalike-note").inner_text()
    finally:
        server.stop()
