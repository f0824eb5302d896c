"""Caption search as an image grid: /-/search?q=... (HTML) and /-/search.json?q=... ."""
from __future__ import annotations

import urllib.parse

from datasette import hookimpl
from datasette.utils.asgi import Response

from spellbook.plugins._site import MAX_PAGE, config, flag_arg, int_arg, next_page_url, page_view, query_arg, run, spellbook_database
from spellbook.queries.optout import optout_of
from spellbook.queries.search import search_training


def tile_width(width, height, tile_height: int = 180) -> int:
    """Tiles keep the image's aspect ratio (bounded, so a panorama cannot take the row)."""
    if not width or not height:
        return tile_height
    return max(100, min(400, round(tile_height * width / height)))


async def search_view(datasette, request):
    q = query_arg(request, "q")
    domain = query_arg(request, "domain") or None
    opted_out = flag_arg(request, "opted_out")
    settings = config(datasette)
    page_size = int_arg(request, "_size", settings["page_size"], 1, 500)
    page = int_arg(request, "page", 1, 1, MAX_PAGE)
    database = await spellbook_database(datasette)
    result = await run(
        datasette, request, database,
        lambda conn: search_training(conn, q, limit=page_size, offset=(page - 1) * page_size, domain=domain, opted_out=opted_out),
        tables=["training_images", "domains"],
    )
    checks = await run(datasette, request, database, lambda conn: optout_of(conn, [row["id"] for row in result.rows]), tables=["training_images"])
    for row in result.rows:
        row["optout"] = checks.get(row["id"])
    next_url = next_page_url(request, page, page_size, len(result.rows), result.total)
    if request.url_vars.get("format") == "json":
        rows = [{k: v for k, v in row.items() if k not in ("text_html", "safe_url")} for row in result.rows]
        return Response.json(
            {"query": q, "domain": domain, "opted_out": opted_out, "total": result.total, "total_exact": result.total_exact, "ranked": result.ranked,
             "page": page, "page_size": page_size, "next": next_url, "rows": rows}
        )
    threshold = float(settings["punsafe_blur_threshold"])
    dead = await dead_links(datasette, request, database, [row["url"] for row in result.rows])
    for row in result.rows:
        row["dead_link"] = dead.get(row["url"])
        row["tile_width"] = tile_width(row["width"], row["height"])
        row["blurred"] = row["punsafe"] is not None and row["punsafe"] >= threshold
    table_query = {"_search": q} if q else {}
    return Response.html(
        await datasette.render_template(
            "spellbook_search.html",
            {
                "q": q,
                "domain": domain,
                "opted_out": opted_out,
                "form_extra": {k: v for k, v in (("domain", domain), ("opted_out", "1" if opted_out else None)) if v},
                "result": result,
                # The chart loads after the page (a fragment of /-/domains): the grid never waits for it.
                "breakdown_url": datasette.urls.path("/-/domains") + "?" + urllib.parse.urlencode({"q": q, "top": 10, "fragment": 1}) if q and not domain and not opted_out else None,
                "page": page,
                "page_size": page_size,
                "database": database.name,
                "table_url": datasette.urls.table(database.name, "training_images") + ("?" + urllib.parse.urlencode(table_query) if table_query else ""),
                "next_url": next_url,
            },
            request=request,
        )
    )


async def dead_links(datasette, request, database, urls: list[str]) -> dict[str, str]:
    """url -> how its last fetch failed, from the vector store's link checks (where there is one)."""
    from spellbook.plugins.similar import similarity

    sim = similarity(datasette, database)
    if not urls or not sim.available:
        return {}
    return await run(datasette, request, database, lambda conn: sim.store().dead_links(urls), tables=["training_images"])


@hookimpl
def register_routes():
    return [(r"^/-/search(\.(?P<format>json))?$", page_view(search_view))]
