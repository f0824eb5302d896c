"""What every Spellbook page needs to know: which database is the Spellbook one, its settings, and
the bounds on a request's work.

Every page runs its queries through `run`: under a time limit (Datasette's own
sql_time_limit_ms applies to `execute`, not to `execute_fn`, which Spellbook's pages use), and
with the permission checks Datasette would make for the tables it reads. Too slow a query answers
503, a malformed one 400, each with a page that says why. Not a plugin itself (it implements no
hook); the plugin files import it.
"""
from __future__ import annotations

import os
import urllib.parse

from datasette.utils.asgi import Forbidden, NotFound, Response

from spellbook.site import datasette_1, default_config
from spellbook.text.fts import QueryError

MAX_QUERY_CHARS = 300  # the most a search box takes: names, phrases and a few words
DEFAULT_TIME_LIMIT_MS = 3_000


class PageError(Exception):
    """A request this page will not or cannot answer: status, a title and a plain explanation."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def check_same_site(request, form, stale: str) -> None:
    """A form post only from a page of this site. Datasette 1.0 checks Sec-Fetch-Site and Origin
    itself (its token is no longer a cookie); 0.65's CSRF middleware (asgi-csrf) lets a request
    without any cookie through, so there the form's token must equal the ds_csrftoken cookie. On
    both, a browser's Origin and Sec-Fetch-Site, when sent, must say this site; `Origin: null`
    (a sandboxed frame, or a page with no referrer policy to spare) only with Sec-Fetch-Site
    same-origin. `stale` says what to do when the token is missing or old."""
    origin = request.headers.get("origin")
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site not in (None, "same-origin", "none"):
        raise PageError(403, "Not from this site", "This form was posted from another site.")
    if origin == "null":
        if fetch_site != "same-origin":
            raise PageError(403, "Not from this site", "This form was posted from another site.")
    elif origin and urllib.parse.urlparse(origin).netloc != request.headers.get("host", ""):
        raise PageError(403, "Not from this site", "This form was posted from another site.")
    if not datasette_1():
        token = form.get("csrftoken") or ""
        if not token or token != request.cookies.get("ds_csrftoken"):
            raise PageError(403, "Not from this site", stale)


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
    text = tilde_decode(text) if "~" in text else text
    if len(text) > MAX_QUERY_CHARS:
        raise PageError(400, "Name too long", f"That name is {len(text):,} characters long; this site takes at most {MAX_QUERY_CHARS:,}.")
    return text


def query_arg(request, name: str, default: str = "", limit: int = MAX_QUERY_CHARS) -> str:
    """A text argument, stripped; longer than `limit` characters is a 400, not a long query."""
    value = (request.args.get(name) or default).strip()
    if len(value) > limit:
        raise PageError(400, "Query too long", f"The {name} parameter is {len(value):,} characters long; this site takes at most {limit:,}.")
    return value


def int_arg(request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.args.get(name, default))
    except ValueError:
        return default
    return max(low, min(high, value))


def flag_arg(request, name: str) -> bool:
    """A yes/no argument: 1, yes, on or true is yes; anything else (or none) is no."""
    return (request.args.get(name) or "").strip().lower() in ("1", "yes", "on", "true")


def local_images(datasette) -> bool:
    """Whether generated images on this machine's disk may be served: the `local_images` setting,
    or SPELLBOOK_LOCAL_IMAGES=1, which `spellbook serve` sets (never on a published instance)."""
    return bool(config(datasette).get("local_images")) or os.environ.get("SPELLBOOK_LOCAL_IMAGES") == "1"


def time_limit_ms(datasette) -> int:
    """The time one page's queries may take: the `time_limit_ms` setting (datasette.yaml)."""
    return int(config(datasette).get("time_limit_ms") or DEFAULT_TIME_LIMIT_MS)


async def ensure_can_view(datasette, request, database: str, tables) -> None:
    """Datasette's own view checks for each table a page reads: a table locked with `allow:` (or a
    locked database or instance) is locked on Spellbook's pages too."""
    if datasette_1():
        from datasette.resources import TableResource

        for table in tables:
            await datasette.ensure_permission(action="view-table", resource=TableResource(database, table), actor=request.actor)
        return
    for table in tables:
        await datasette.ensure_permissions(request.actor, [("view-table", (database, table)), ("view-database", database), "view-instance"])


async def run(datasette, request, database, fn, tables):
    """fn(conn) on the database's read thread, after the permission checks, under the time limit."""
    from datasette.utils import sqlite_timelimit

    await ensure_can_view(datasette, request, database.name, tables)
    limit = time_limit_ms(datasette)

    def timed(conn):
        with sqlite_timelimit(conn, limit):
            return fn(conn)

    try:
        return await database.execute_fn(timed)
    except QueryError as error:
        raise PageError(400, "Cannot search for that", str(error)) from None
    except Exception as error:  # the sqlite3 module's OperationalError, whichever module it is
        if "interrupted" in str(error):
            raise PageError(
                503,
                "That took too long",
                f"This page stopped after {limit / 1000:g} seconds, before it had finished. A more specific search "
                "(more words, a phrase, a longer prefix) needs less work.",
            ) from None
        raise


def gone(removal: dict) -> PageError:
    """410 for a row that was taken down, with the reason and when."""
    return PageError(410, "Removed", f"This row was removed on {removal['removed_at']}: {removal['reason']}")


async def error_page(datasette, request, error: PageError, fmt: str | None = None):
    headers = {"Retry-After": "30"} if error.status == 503 else None
    if fmt == "json":
        return Response.json({"ok": False, "status": error.status, "title": error.title, "error": error.message}, status=error.status, headers=headers)
    return Response.html(
        await datasette.render_template("spellbook_error.html", {"error": error}, request=request),
        status=error.status,
        headers=headers,
    )


def page_view(view, fmt_var: str = "format"):
    """A route handler that turns PageError into its error page (HTML, or JSON for .json routes)."""

    async def handler(datasette, request):
        try:
            return await view(datasette, request)
        except PageError as error:
            return await error_page(datasette, request, error, request.url_vars.get(fmt_var))

    handler.__name__ = getattr(view, "__name__", "handler")
    return handler


MAX_PAGE = 1000


def next_page_url(request, page: int, page_size: int, shown: int, total: int) -> str | None:
    """The next page of a result, keeping every other parameter, or None when this one is the
    last: it ran short, or the total says there is no more."""
    if shown < page_size or page * page_size >= total or page >= MAX_PAGE:
        return None
    return page_url(request, page=page + 1)


def page_url(request, **changes) -> str:
    """This page's path with its query string changed (None removes a parameter): the pager's links
    keep every other parameter (_size, domain...)."""
    args = [(key, value) for key, value in urllib.parse.parse_qsl(request.query_string, keep_blank_values=True) if key not in changes]
    args += [(key, str(value)) for key, value in changes.items() if value is not None]
    return request.path + ("?" + urllib.parse.urlencode(args) if args else "")
