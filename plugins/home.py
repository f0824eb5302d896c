"""The home page: one search box, the counts, and where the data came from."""
from __future__ import annotations

from datasette import hookimpl
from datasette.utils.asgi import NotFound

from spellbook.queries.reports import site_summary
from spellbook.plugins._site import spellbook_database


@hookimpl
def extra_template_vars(template, datasette):
    if template != "index.html":
        return {}

    async def spellbook_vars():
        try:
            database = await spellbook_database(datasette)
        except NotFound:  # a Datasette serving no Spellbook database keeps its stock index
            return {"spellbook": None}
        summary = await database.execute_fn(site_summary)
        summary["database"] = database.name
        return {"spellbook": summary}

    return spellbook_vars
