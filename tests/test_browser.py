"""What a person sees: headless Chromium (Debian's, driven by Playwright) against `spellbook serve`."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


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

    # The domain chart: bars with widths, and a domain link that filters the results.
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
