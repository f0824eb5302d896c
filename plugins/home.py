"""The home page: one search box, the counts, and where the data came from."""
from __future__ import annotations

from datasette import hookimpl

from datasette.utils.asgi import NotFound

from ingest.reports import top_artists
from plugins._site import spellbook_database


def site_summary(conn) -> dict:
    """Counts from the provenance tables (a count(*) over 12M rows would take a second)."""
    datasets = [
        dict(zip(("file_name", "kind", "schema_version", "synthetic", "row_count", "inserted", "status", "ingested_at", "sha256"), row))
        for row in conn.execute(
            "SELECT file_name, kind, schema_version, synthetic, row_count, inserted, status, ingested_at, sha256 FROM datasets ORDER BY id"
        )
    ]
    counts = {
        "training_images": sum(d["inserted"] for d in datasets if d["kind"] == "training"),
        "prompts": sum(d["inserted"] for d in datasets if d["kind"] == "prompts"),
        "domains": conn.execute("SELECT count(*) FROM domains WHERE image_count > 0").fetchone()[0],
    }
    return {"datasets": datasets, "counts": counts, "prompts": counts["prompts"] > 0, "artists": top_artists(conn)}


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
