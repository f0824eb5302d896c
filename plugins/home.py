"""The home page: one search box, the counts, and where the data came from."""
from __future__ import annotations

from datasette import hookimpl
from datasette.utils.asgi import Forbidden, NotFound

from spellbook.plugins._site import PageError, run, spellbook_database
from spellbook.queries.reports import site_summary


@hookimpl
def extra_template_vars(template, datasette, request):
    if template != "index.html":
        return {}

    async def spellbook_vars():
        try:
            database = await spellbook_database(datasette)
            summary = await run(datasette, request, database, site_summary, tables=["datasets", "domains", "artists"])
        except (NotFound, Forbidden, PageError):  # no Spellbook database here, or not one this visitor may see
            return {"spellbook": None}
        summary["database"] = database.name
        return {"spellbook": summary}

    return spellbook_vars
