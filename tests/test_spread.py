"""queries/spread.py on constructed id lists: clustered, spread and sorted matches."""
from __future__ import annotations

import random

import pytest

from spellbook.queries.search import list_fetcher
from spellbook.queries.spread import Windows, spread_order

LAYOUTS = {
    "clustered at the end": list(range(9_001, 10_001)),
    "clustered at the start": list(range(1, 1_001)),
    "two clusters": list(range(2_000, 2_400)) + list(range(7_000, 7_600)),
    "spread": sorted(random.Random(3).sample(range(1, 10_001), 1_000)),
    "one match": [4_242],
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("page_size", [7, 100, 333])
def test_pages_cover_every_match_once_and_never_run_short(layout, page_size):
    matches = LAYOUTS[layout]
    windows = Windows.over(10_000, 50)
    seen, offset = [], 0
    while True:
        sample = windows.sample(list_fetcher(matches), need=offset + page_size)
        page = sample.page(offset, page_size)
        if not page:
            break
        assert len(page) == page_size or offset + len(page) == len(matches)  # only the last page is short
        seen.extend(page)
        offset += page_size
    assert sorted(seen) == matches and len(seen) == len(set(seen))


def test_windows_do_not_overlap_and_cover_the_range():
    bounds = Windows.over(1_000, 7).bounds
    assert bounds[0][0] == 1 and bounds[-1][1] == 1_001
    assert all(end == next_start for (_, end), (next_start, _) in zip(bounds, bounds[1:]))


def test_a_short_first_page_is_spread_over_the_range():
    matches = list(range(1, 10_001))
    page = Windows.over(10_000, 50).sample(list_fetcher(matches), need=10).page(0, 10)
    assert min(page) < 1_000 and max(page) > 8_000


def test_weights_scale_partial_windows_to_the_total():
    matches = list(range(1, 101)) + list(range(5_001, 10_001))  # 100 early, 5,000 late
    sample = Windows.over(10_000, 10).sample(list_fetcher(matches), need=1_000)
    weights = sample.weights(len(matches))
    assert sum(len(ids) * w for ids, w in zip(sample.ids, weights)) == pytest.approx(len(matches))
    assert weights[0] == 1.0 and weights[-1] > 1.0  # the early window is in the sample whole


def test_spread_order_is_a_permutation():
    for count in (1, 2, 5, 50, 64):
        assert sorted(spread_order(count)) == list(range(count))
    assert spread_order(8) == [0, 4, 2, 6, 1, 5, 3, 7]
