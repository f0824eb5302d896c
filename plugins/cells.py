"""Safe cells in Datasette's own table and row views: scraped URLs become links (and thumbnails)
only when they are http(s); everything else stays escaped text."""
from __future__ import annotations

from datasette import hookimpl
from markupsafe import Markup, escape

from spellbook.text.markup import safe_url

_URL_COLUMNS = {("training_images", "url"), ("generations", "image_url")}


@hookimpl
def render_cell(value, column, table):
    if (table, column) not in _URL_COLUMNS or not isinstance(value, str):
        return None
    url = safe_url(value)
    if url is None:
        return None  # Datasette escapes it as plain text
    return Markup(
        '<a class="sb-cell-link" href="{url}" rel="nofollow noreferrer noopener" target="_blank">'
        '<img class="sb-cell-thumb" src="{url}" loading="lazy" alt="" referrerpolicy="no-referrer"> {text}</a>'
    ).format(url=url, text=escape(value))
