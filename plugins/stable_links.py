"""Links that survive a rebuild: /-/image/KEY redirects to that image's row page.

Row ids follow ingest order, so they differ between two databases built from the same files in
another order; the key is derived from (url, caption) alone and is the same everywhere.
"""
from __future__ import annotations

from datasette import hookimpl
from datasette.utils.asgi import NotFound, Response

from spellbook.plugins._site import gone, page_view, run, spellbook_database
from spellbook.queries.reports import removal_of


KEY_RANGE = range(-(2**63), 2**63)  # what SQLite's INTEGER holds; keys are 63-bit, so never outside


async def image_by_key(datasette, request):
    key = int(request.url_vars["key"])
    if key not in KEY_RANGE:
        raise NotFound(f"No training image has key {key}")
    database = await spellbook_database(datasette)
    row, removal = await run(
        datasette, request, database,
        lambda conn: (conn.execute("SELECT id FROM training_images WHERE key = ?", (key,)).fetchone(), removal_of(conn, "training_image", key=key)),
        tables=["training_images"],
    )
    if removal is not None:
        raise gone(removal)
    if row is None:
        raise NotFound(f"No training image has key {key}")
    return Response.redirect(datasette.urls.row(database.name, "training_images", str(row[0])))


@hookimpl
def register_routes():
    return [(r"^/-/image/(?P<key>-?\d{1,19})$", page_view(image_by_key))]
