"""Caption search as an image grid: /-/search?q=... (HTML) and /-/search.json?q=... ."""
from __future__ import annotations

import urllib.parse

from datasette import hookimpl
from datasette.utils.asgi import Response

from spellbook.queries.search import search_training
from spellbook.plugins._site import config, int_arg, query_arg, spellbook_database


def tile_width(width, height, tile_height: int = 180) -> int:
    """Tiles keep the image's aspect ratio (bounded, so a panorama cannot take the row)."""
    if not width or not height:
        return tile_height
    return max(100, min(400, round(tile_height * width / height)))


async def search_view(datasette, request):
    q = query_arg(request, "q")
    domain = query_arg(request, "domain") or None
    settings = config(datasette)
    page_size = int_arg(request, "_size", settings["page_size"], 1, 500)
    page = int_arg(request, "page", 1, 1, 1000)
    database = await spellbook_database(datasette)
    result = await database.execute_fn(
        lambda conn: search_training(conn, q, limit=page_size, offset=(page - 1) * page_size, domain=domain)
    )
    if request.url_vars.get("format") == "json":
        rows = [{k: v for k, v in row.items() if k not in ("text_html", "safe_url")} for row in result.rows]
        return Response.json(
            {"query": q, "domain": domain, "total": result.total, "total_exact": result.total_exact, "ranked": result.ranked, "rows": rows}
        )
    threshold = float(settings["punsafe_blur_threshold"])
    for row in result.rows:
        row["tile_width"] = tile_width(row["width"], row["height"])
        row["blurred"] = row["punsafe"] is not None and row["punsafe"] >= threshold
    table_query = {"_search": q} if q else {}
    return Response.html(
        await datasette.render_template(
            "spellbook_search.html",
            {
                "q": q,
                "domain": domain,
                "result": result,
                # The chart loads after the page (a fragment of /-/domains): the grid never waits for it.
                "breakdown_url": datasette.urls.path("/-/domains") + "?" + urllib.parse.urlencode({"q": q, "top": 10, "fragment": 1}) if q and not domain else None,
                "page": page,
                "page_size": page_size,
                "database": database.name,
                "table_url": datasette.urls.table(database.name, "training_images") + ("?" + urllib.parse.urlencode(table_query) if table_query else ""),
                "next_url": "?" + urllib.parse.urlencode({k: v for k, v in {"q": q, "domain": domain, "page": page + 1}.items() if v})
                if page * page_size < result.total
                else None,
            },
            request=request,
        )
    )


@hookimpl
def register_routes():
    return [(r"^/-/search(\.(?P<format>json))?$", search_view)]
