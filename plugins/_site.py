"""What every Spellbook page needs to know: which database is the Spellbook one, and its settings.

Not a plugin itself (it implements no hook); the plugin files import it.
"""
from __future__ import annotations

from datasette.utils.asgi import NotFound

from spellbook.site import default_config


def config(datasette) -> dict:
    """Spellbook's settings: the packaged datasette.yaml's, overridden by the site's own (a 1.0
    site's datasette.yaml, or a `plugins:` block in a 0.65 site's metadata)."""
    settings = dict((default_config().get("plugins") or {}).get("spellbook") or {})
    settings.update(datasette.plugin_config("spellbook") or {})
    return settings


async def spellbook_database(datasette, table: str = "training_images"):
    """The first attached database that holds `table` (a site may serve other databases beside it)."""
    wanted = config(datasette).get("database")
    for name, database in datasette.databases.items():
        if name == "_internal" or (wanted and name != wanted):
            continue
        if await database.table_exists(table):
            return database
    raise NotFound(f"No Spellbook database with a {table} table is attached")


def path_text(request, name: str) -> str:
    """A name from the URL path: percent-encoded by browsers, or tilde-encoded (Datasette redirects
    a 404 from "%20" to "~20" and the request comes back that way)."""
    from urllib.parse import unquote

    from datasette.utils import tilde_decode

    text = unquote(request.url_vars[name])
    return tilde_decode(text) if "~" in text else text


def query_arg(request, name: str, default: str = "") -> str:
    return (request.args.get(name) or default).strip()


def int_arg(request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.args.get(name, default))
    except ValueError:
        return default
    return max(low, min(high, value))
