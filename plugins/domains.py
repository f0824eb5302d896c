"""Which websites the images were scraped from: /-/domains?q=... and its .json twin."""
from __future__ import annotations

from datasette import hookimpl
from datasette.utils.asgi import Response

from spellbook.queries.domains import domain_breakdown
from spellbook.queries.search import BREAKDOWN_SAMPLE
from spellbook.plugins._site import int_arg, query_arg, spellbook_database


def with_shares(breakdown: dict) -> list[dict]:
    """Bars for the chart: each top domain, then "other"; share is percent of the total,
    width is percent of the longest named bar, so a long tail of "other" does not squash the chart
    (its own bar is capped at full width)."""
    items = list(breakdown["domains"])
    if breakdown["other"]:
        items.append({"domain": None, "count": breakdown["other"]})
    total = sum(item["count"] for item in items) or 1
    longest = max((item["count"] for item in breakdown["domains"]), default=0) or 1
    return [dict(item, share=100.0 * item["count"] / total, width=min(100.0, 100.0 * item["count"] / longest)) for item in items]


async def domains_view(datasette, request):
    q = query_arg(request, "q") or None
    top = int_arg(request, "top", 20, 1, 200)
    # ?exact=1 counts every match (seconds for a common word at 12M rows) instead of a spread sample.
    sample = 10**12 if request.args.get("exact") == "1" else BREAKDOWN_SAMPLE
    database = await spellbook_database(datasette)
    breakdown = await database.execute_fn(lambda conn: domain_breakdown(conn, q, top=top, sample=sample))
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
    return [(r"^/-/domains(\.(?P<format>json))?$", domains_view)]


@hookimpl
def prepare_jinja2_environment(env):
    env.filters["domain_bars"] = with_shares
