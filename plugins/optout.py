"""Opt-out signals per domain: /-/optout (and .json), and one domain's sites' own files with
?domain=. The numbers are those of the images `spellbook check-optout` checked, not of every image."""
from __future__ import annotations

from datasette import hookimpl
from datasette.utils.asgi import Response

from spellbook.plugins._site import int_arg, page_view, query_arg, run, spellbook_database
from spellbook.queries.optout import domain_optouts, origin_files


async def optout_view(datasette, request):
    domain = query_arg(request, "domain") or None
    top = int_arg(request, "top", 100, 1, 500)
    database = await spellbook_database(datasette)

    def read(conn):
        summary = domain_optouts(conn, limit=top, domain=domain)
        summary["sites"] = origin_files(conn, domain) if domain else []
        return summary

    summary = await run(datasette, request, database, read, tables=["training_images", "domains"])
    if request.url_vars.get("format") == "json":
        for site in summary["sites"]:
            site.pop("tdmrep_text"), site.pop("ai_txt_text")
        return Response.json(dict(summary, domain=domain))
    return Response.html(await datasette.render_template("spellbook_optout.html", {"s": summary, "domain": domain}, request=request))


@hookimpl
def register_routes():
    return [(r"^/-/optout(\.(?P<format>json))?$", page_view(optout_view))]
