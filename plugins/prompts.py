"""The prompt side: /-/prompts?q=... (a grid) and /-/prompt/ID, each with a .json twin."""
from __future__ import annotations

import urllib.parse

from datasette import hookimpl
from datasette.utils.asgi import NotFound, Response

from spellbook.queries.reports import generation
from spellbook.queries.search import search_prompts
from spellbook.text.markup import safe_url
from spellbook.plugins._site import config, int_arg, query_arg, spellbook_database


def _blur(row: dict, threshold: float) -> bool:
    return row.get("image_nsfw") is not None and row["image_nsfw"] >= threshold


async def prompts_view(datasette, request):
    q = query_arg(request, "q")
    settings = config(datasette)
    page_size = int_arg(request, "_size", 60, 1, 500)
    page = int_arg(request, "page", 1, 1, 1000)
    database = await spellbook_database(datasette, "generations")
    result = await database.execute_fn(lambda conn: search_prompts(conn, q, limit=page_size, offset=(page - 1) * page_size))
    if request.url_vars.get("format") == "json":
        rows = [{k: v for k, v in row.items() if k not in ("text_html", "safe_url")} for row in result.rows]
        return Response.json({"query": q, "total": result.total, "total_exact": result.total_exact, "ranked": result.ranked, "rows": rows})
    threshold = float(settings["punsafe_blur_threshold"])
    for row in result.rows:
        row["blurred"] = _blur(row, threshold)
    return Response.html(
        await datasette.render_template(
            "spellbook_prompts.html",
            {
                "q": q,
                "result": result,
                "database": database.name,
                "table_url": datasette.urls.table(database.name, "generations") + ("?" + urllib.parse.urlencode({"_search": q}) if q else ""),
                "next_url": "?" + urllib.parse.urlencode({"q": q, "page": page + 1}) if page * page_size < result.total else None,
            },
            request=request,
        )
    )


async def prompt_view(datasette, request):
    generation_id = int(request.url_vars["id"])
    database = await spellbook_database(datasette, "generations")
    record = await database.execute_fn(lambda conn: generation(conn, generation_id))
    if record is None:
        raise NotFound(f"No generation {generation_id}")
    if request.url_vars.get("format") == "json":
        return Response.json(record)
    record["safe_image_url"] = safe_url(record["image_url"])
    record["blurred"] = _blur(record, float(config(datasette)["punsafe_blur_threshold"]))
    return Response.html(
        await datasette.render_template(
            "spellbook_prompt.html",
            {"g": record, "database": database.name, "row_url": datasette.urls.row(database.name, "generations", str(generation_id))},
            request=request,
        )
    )


@hookimpl
def register_routes():
    return [
        (r"^/-/prompts(\.(?P<format>json))?$", prompts_view),
        (r"^/-/prompt/(?P<id>\d{1,18})(\.(?P<format>json))?$", prompt_view),
    ]
