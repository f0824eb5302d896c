"""A style keyword's page: /-/keyword/KEYWORD (and .json)."""
from __future__ import annotations

import urllib.parse

from datasette import hookimpl
from datasette.utils.asgi import NotFound, Response

from spellbook.plugins._charts import line_chart
from spellbook.plugins._site import page_view, path_text, run, spellbook_database
from spellbook.queries.reports import keyword_report


async def keyword_view(datasette, request):
    keyword = path_text(request, "keyword")
    database = await spellbook_database(datasette, "generations")
    report = await run(
        datasette, request, database, lambda conn: keyword_report(conn, keyword),
        tables=["keywords", "keyword_days", "prompt_days", "generation_keywords", "generations", "training_images", "datasets"],
    )
    if report is None:
        raise NotFound(f"No keyword {keyword!r}")
    if request.url_vars.get("format") == "json":
        return Response.json(report)
    chart = line_chart([d["count"] for d in report["days"]], [d["day"] for d in report["days"]])
    return Response.html(
        await datasette.render_template("spellbook_keyword.html", {"k": report, "chart": chart}, request=request)
    )


@hookimpl
def register_routes():
    return [(r"^/-/keyword/(?P<keyword>[^/]+?)(\.(?P<format>json))?$", page_view(keyword_view))]


@hookimpl
def prepare_jinja2_environment(env):
    env.filters["keyword_url"] = lambda keyword: "/-/keyword/" + urllib.parse.quote(keyword, safe="")
