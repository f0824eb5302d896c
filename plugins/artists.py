"""The artist report that joins both sides: /-/artist/NAME, .json, and .csv?side=training|prompts."""
from __future__ import annotations

import csv
import io
import urllib.parse

from datasette import hookimpl
from datasette.utils.asgi import Response

from spellbook.queries.reports import artist_prompt_rows, artist_report, artist_training_rows
from spellbook.plugins._charts import bars, line_chart
from spellbook.plugins._site import path_text, spellbook_database


async def artist_view(datasette, request):
    name = path_text(request, "name")
    database = await spellbook_database(datasette)
    fmt = request.url_vars.get("format")
    if fmt == "csv":
        return await _csv(database, name, request.args.get("side", "training"))
    report = await database.execute_fn(lambda conn: artist_report(conn, name))
    if fmt == "json":
        return Response.json(report, default=str)
    days = report["prompts"]["days"]
    histogram = report["training"]["aesthetic_histogram"]
    for item, height in zip(histogram, bars([h["count"] for h in histogram])):
        item["height"] = height
    return Response.html(
        await datasette.render_template(
            "spellbook_artist.html",
            {
                "a": report,
                "chart": line_chart([d["count"] for d in days], [d["day"] for d in days]),
                "quoted": urllib.parse.quote(report["artist"], safe=""),
            },
            request=request,
        )
    )


async def _csv(database, name: str, side: str):
    rows_for = artist_prompt_rows if side == "prompts" else artist_training_rows

    def write(conn):
        columns, rows = rows_for(conn, name)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows(rows)
        return buffer.getvalue()

    body = await database.execute_fn(write)
    filename = f"spellbook-{side}-" + "".join(c if c.isalnum() else "-" for c in name.lower()) + ".csv"
    return Response(body, content_type="text/csv; charset=utf-8", headers={"content-disposition": f'attachment; filename="{filename}"'})


@hookimpl
def register_routes():
    return [(r"^/-/artist/(?P<name>[^/]+?)(\.(?P<format>json|csv))?$", artist_view)]


@hookimpl
def prepare_jinja2_environment(env):
    env.filters["artist_url"] = lambda name: "/-/artist/" + urllib.parse.quote(name, safe="")
