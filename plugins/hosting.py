"""What every response of a Spellbook site carries, and what a hosted instance needs.

- Security headers on every response: a Content-Security-Policy that lets no script run but files
  from this site and the inline scripts Datasette's own templates hold (by their sha256), no
  framing, no referrer to other sites, no MIME sniffing.
- Cache headers: static files for an hour; Spellbook's pages for `cache_ttl` seconds when the
  setting says so (a published instance's databases never change, so its pages can be cached).
- Removed rows: Datasette's own row pages of a training image or generation that was taken down
  answer 410 with the reason, like Spellbook's pages, rather than 404 (as JSON on the .json twin).
- A hostile `?_sort=` on Datasette's table pages (a column that is not there, or not sortable)
  answers 400 with Datasette's own escaped message, not the 500 that 0.65 gives it.
"""
from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources

from datasette import hookimpl

_ROW_PAGE = re.compile(r"^/(?P<db>[^/]+)/(?P<table>training_images|generations)/(?P<id>\d{1,19})(?:\.json)?$")
_TABLE_PAGE = re.compile(r"^/[^/]+/[^/]+$")
_BAD_SORT = b"Cannot sort table by"


@lru_cache(maxsize=1)
def _datasette_templates() -> tuple[str, ...]:
    """The text of every template of the installed Datasette, read once."""
    return tuple(path.read_text(encoding="utf-8") for path in resources.files("datasette").joinpath("templates").iterdir()
                 if path.name.endswith(".html"))


@lru_cache(maxsize=1)
def script_hashes() -> tuple[str, ...]:
    """sha256 of every inline script in the installed Datasette's templates that holds no template
    expression, and of the two forms of the table page's one-line facet flag."""
    texts = set()
    for template in _datasette_templates():
        for body in re.findall(r"<script>(.*?)</script>", template, re.S):
            if "{{" not in body and "{%" not in body:
                texts.add(body)
    texts.update({"DATASETTE_ALLOW_FACET = true;", "DATASETTE_ALLOW_FACET = false;"})
    from datasette.version import __version__

    texts.add(f"window.datasetteVersion = '{__version__}';")  # 1.0's base template
    handlers = datasette_event_handlers()
    hashes = sorted(_hash(t) for t in texts | handlers)
    # 'unsafe-hashes' lets an event handler attribute run only when its code is one of these hashes
    # (Datasette 1.0's table page: onclick="openColumnChooser()"); no other inline handler runs.
    return tuple(["'unsafe-hashes'", *hashes] if handlers else hashes)


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Datasette 1.0's own pages (database, table, row) hand their data to its JavaScript in inline
# scripts that differ on every page (`window._datasetteTableData = {...}`, the column chooser's,
# the SQL editor's schema). There each inline <script> of the page gets a nonce for that response.
# Data never arrives as a <script> element, escaped as it is (tests/test_xss.py checks every page
# with CSP bypassed); Spellbook's own pages (/-/...) keep the hash-only policy.
@lru_cache(maxsize=1)
def data_scripts() -> bool:
    """Whether the installed Datasette's templates have such scripts (1.0 does, 0.65 does not)."""
    return any("window._datasette" in template for template in _datasette_templates())


def with_nonce(body: bytes) -> tuple[bytes, str]:
    import secrets

    nonce = secrets.token_urlsafe(18)
    return body.replace(b"<script>", f'<script nonce="{nonce}">'.encode()), f"'nonce-{nonce}'"


@lru_cache(maxsize=1)
def datasette_event_handlers() -> frozenset[str]:
    """The code of every inline event handler attribute in the installed Datasette's templates that
    holds no template expression."""
    found = set()
    for template in _datasette_templates():
        for code in re.findall(r'\son[a-z]+="([^"]*)"', template):
            if "{{" not in code and "{%" not in code:
                found.add(code)
    return frozenset(found)


def content_security_policy() -> str:
    return "; ".join([
        "default-src 'self'",
        "script-src 'self' " + " ".join(script_hashes()),
        "style-src 'self' 'unsafe-inline'",  # tile sizes and bar widths are style attributes; styles run no code
        "img-src 'self' data: https: http:",  # training images are hotlinked from wherever they were scraped
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    # Not "no-referrer": with it Chromium sends `Origin: null` on a form post to this very site, and
    # the same-site checks of the forms (runner, removal requests) cannot tell it from a sandboxed
    # frame. "same-origin" still sends nothing to other sites.
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    "cross-origin-opener-policy": "same-origin",
}


def _headers(path: str, ttl: int) -> list[tuple[bytes, bytes]]:
    headers = {"content-security-policy": content_security_policy(), **SECURITY_HEADERS}
    if path.startswith(("/-/static/", "/-/static-plugins/")):
        headers["cache-control"] = "public, max-age=3600"
    elif ttl and path.startswith("/-/") and not path.startswith(("/-/prompt/", "/-/similar")) or ttl and path == "/":
        headers["cache-control"] = f"public, max-age={ttl}"
    return [(name.encode(), value.encode()) for name, value in headers.items()]


def _with_headers(headers, extra) -> list:
    """A response's headers plus the site's: a page's own Cache-Control or CSP stays, but the
    referrer policy is the site's everywhere (Datasette's table pages set `no-referrer`)."""
    kept = [(name, value) for name, value in headers if name.lower() != b"referrer-policy"]
    names = {name.lower() for name, _ in kept}
    return [*kept, *((n, v) for n, v in extra if n not in names)]


async def _removal(datasette, path: str):
    from spellbook.queries.reports import removal_of

    match = _ROW_PAGE.match(path)
    if not match or match["db"] not in datasette.databases:
        return None
    item = "training_image" if match["table"] == "training_images" else "generation"
    database = datasette.databases[match["db"]]
    try:
        return await database.execute_fn(lambda conn: removal_of(conn, item, item_id=int(match["id"])))
    except Exception:  # not a Spellbook database, or one without removals: nothing to say
        return None


@hookimpl
def asgi_wrapper(datasette):
    def wrap(app):
        async def spellbook_headers(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            from spellbook.plugins._site import config

            path = scope.get("path", "")
            extra = _headers(path, int(config(datasette).get("cache_ttl") or 0))
            gone, held = {}, {}
            query = scope.get("query_string", b"")
            sorted_table = b"_sort" in query and _TABLE_PAGE.match(path)

            async def send_with_headers(message):
                if message["type"] == "http.response.start":
                    if message["status"] == 500 and sorted_table:
                        held["start"] = message  # 400 if the body says the sort was refused
                        return
                    if message["status"] == 404 and _ROW_PAGE.match(path):
                        removal = await _removal(datasette, path)
                        if removal is not None:
                            gone["removal"] = removal
                            return  # the 404 is replaced by the 410 below
                    if data_scripts() and _is_html(message) and not path.startswith("/-/"):
                        held["start"] = message  # its data scripts' hashes go into its CSP
                        return
                    message = dict(message, headers=_with_headers(message.get("headers", []), extra))
                elif gone and message["type"] == "http.response.body":
                    if message.get("more_body"):
                        return
                    await _send_gone(send, gone["removal"], extra, as_json=path.endswith(".json"))
                    return
                elif held and message["type"] == "http.response.body":
                    held["body"] = held.get("body", b"") + message.get("body", b"")
                    if message.get("more_body") and len(held["body"]) < 8_000_000:
                        return
                    start, body = held.pop("start"), held.pop("body")
                    status = 400 if start["status"] == 500 and _BAD_SORT in body else start["status"]
                    headers, own = extra, start.get("headers", [])
                    if _is_html(start) and data_scripts() and not message.get("more_body"):
                        body, nonce = with_nonce(body)
                        headers = [(n, v.replace(b"script-src 'self' ", f"script-src 'self' {nonce} ".encode(), 1)
                                    if n == b"content-security-policy" else v) for n, v in extra]
                        own = [(n, v) for n, v in own if n.lower() != b"content-length"] + [(b"content-length", str(len(body)).encode())]
                    await send(dict(start, status=status, headers=_with_headers(own, headers)))
                    message = dict(message, body=body, more_body=message.get("more_body", False))
                    held.clear()
                await send(message)

            await app(scope, receive, send_with_headers)

        return spellbook_headers

    return wrap


def _is_html(start: dict) -> bool:
    return any(name.lower() == b"content-type" and value.startswith(b"text/html") for name, value in start.get("headers", []))


async def _send_gone(send, removal: dict, extra, as_json: bool = False) -> None:
    import json

    from markupsafe import escape

    message = f"This row was removed on {removal['removed_at']}: {removal['reason']}"
    if as_json:  # the shape of Spellbook's own .json errors (plugins/_site.py)
        body = json.dumps({"ok": False, "status": 410, "title": "Removed", "error": message}).encode()
        content_type = b"application/json; charset=utf-8"
    else:
        body = (f"<!DOCTYPE html><html><head><title>Removed</title></head><body><h1>Removed</h1>"
                f"<p>{escape(message)}</p></body></html>").encode()
        content_type = b"text/html; charset=utf-8"
    await send({"type": "http.response.start", "status": 410,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


_DAMAGED = ("malformed", "file is not a database", "disk i/o error", "unable to open database")


def damaged_database(exception: BaseException) -> bool:
    """SQLite cannot read the file it serves: truncated, overwritten or gone while being served."""
    text = str(exception).lower()
    return type(exception).__name__ in ("DatabaseError", "OperationalError") and any(part in text for part in _DAMAGED)


@hookimpl
def handle_exception(datasette, request, exception):
    """A database file damaged while serving answers 503 with a plain page (and a log line), not a
    500 traceback page: every page that reads it, Datasette's and Spellbook's. The server stays up;
    pages that need no database keep working, and a restored file is read again."""
    if not damaged_database(exception):
        return None

    async def page():
        import logging

        from spellbook.plugins._site import PageError, error_page

        logging.getLogger("spellbook").error("cannot read a database for %s: %s", request.path, exception)
        error = PageError(503, "The database cannot be read",
                          "This site's database file is damaged or was changed while being served. Its operator has to "
                          "restore or republish it; please try again later.")
        return await error_page(datasette, request, error, "json" if request.path.endswith(".json") else None)

    return page
