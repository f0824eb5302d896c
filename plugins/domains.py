"""Which websites the images were scraped from: /-/domains?q=... and its .json twin."""
from __future__ import annotations

from datasette import hookimpl
from datasette.utils.asgi import Response

from spellbook.plugins._site import int_arg, page_view, query_arg, run, spellbook_database
from spellbook.queries.domains import domain_breakdown
from spellbook.queries.search import BREAKDOWN_SAMPLE


def with_shares(breakdown: dict) -> list[dict]:
    """Bars for the chart: each top domain, then "other"; share is percent of the total. Every bar
    is drawn to one scale, the longest named bar's, so a long tail of "other" does not squash the
    chart; an "other" bar longer than that is drawn broken (`broken`: a visible gap, not to scale)
    rather than passed off as the same length as the top domain's."""
    items = list(breakdown["domains"])
    if breakdown["other"]:
        items.append({"domain": None, "count": breakdown["other"]})
    total = sum(item["count"] for item in items) or 1
    longest = max((item["count"] for item in breakdown["domains"]), default=0) or 1
    bars = []
    for item in items:
        width = 100.0 * item["count"] / longest
        bars.append(dict(item, share=100.0 * item["count"] / total, width=min(100.0, width), broken=width > 100.0))
    return bars


async def domains_view(datasette, request):
    q = query_arg(request, "q") or None
    top = int_arg(request, "top", 20, 1, 200)
    # ?exact=1 counts every match (seconds for a common word at 12M rows) instead of a spread sample.
    sample = 10**12 if request.args.get("exact") == "1" else BREAKDOWN_SAMPLE
    database = await spellbook_database(datasette)
    breakdown = await run(
        datasette, request, database, lambda conn: domain_breakdown(conn, q, top=top, sample=sample), tables=["training_images", "domains"]
    )
    if request.url_vars.get("format") == "json":
        return Response.json(breakdown)
    template = "spellbook_domain_bars.html" if request.args.get("fragment") == "1" else "spellbook_domains.html"
    return Response.html(
        await datasette.render_template(
            template,
            {"q": q, "breakdown": breakdown, "bars": with_shares(breakdown), "database": database.name, "sample": BREAKDOWN_SAMPLE},
            request=request,
        )
    )


@hookimpl
def register_routes():
    return [(r"^/-/domains(\.(?P<format>json))?$", page_view(domains_view))]


@hookimpl
def prepare_jinja2_environment(env):
    env.filters["domain_bars"] = with_shares
