"""What every response of a Spellbook site carries, and what a hosted instance needs.

- Security headers on every response: a Content-Security-Policy that lets no script run but files
  from this site and the inline scripts Datasette's own templates hold (by their sha256), no
  framing, no referrer, no MIME sniffing.
- Cache headers: static files for an hour; Spellbook's pages for `cache_ttl` seconds when the
  setting says so (a published instance's databases never change, so its pages can be cached).
- Removed rows: Datasette's own row pages of a training image or generation that was taken down
  answer 410 with the reason, like Spellbook's pages, rather than 404.
"""
from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources

from datasette import hookimpl

_ROW_PAGE = re.compile(r"^/(?P<db>[^/]+)/(?P<table>training_images|generations)/(?P<id>\d{1,19})(?:\.json)?$")


@lru_cache(maxsize=1)
def script_hashes() -> tuple[str, ...]:
    """sha256 of every inline script in the installed Datasette's templates that holds no template
    expression, and of the two forms of the table page's one-line facet flag."""
    texts = set()
    for path in resources.files("datasette").joinpath("templates").iterdir():
        if path.name.endswith(".html"):
            for body in re.findall(r"<script>(.*?)</script>", path.read_text(encoding="utf-8"), re.S):
                if "{{" not in body and "{%" not in body:
                    texts.add(body)
    texts.update({"DATASETTE_ALLOW_FACET = true;", "DATASETTE_ALLOW_FACET = false;"})
    return tuple(sorted("'sha256-" + base64.b64encode(hashlib.sha256(t.encode()).digest()).decode() + "'" for t in texts))


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
    "referrer-policy": "no-referrer",
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
            gone = {}

            async def send_with_headers(message):
                if message["type"] == "http.response.start":
                    if message["status"] == 404 and _ROW_PAGE.match(path):
                        removal = await _removal(datasette, path)
                        if removal is not None:
                            gone["removal"] = removal
                            return  # the 404 is replaced by the 410 below
                    names = {name.lower() for name, _ in message.get("headers", [])}
                    message = dict(message, headers=[*message.get("headers", []), *((n, v) for n, v in extra if n not in names)])
                elif gone and message["type"] == "http.response.body":
                    if message.get("more_body"):
                        return
                    await _send_gone(send, gone["removal"], extra)
                    return
                await send(message)

            await app(scope, receive, send_with_headers)

        return spellbook_headers

    return wrap


async def _send_gone(send, removal: dict, extra) -> None:
    from markupsafe import escape

    body = (f"<!DOCTYPE html><html><head><title>Removed</title></head><body><h1>Removed</h1>"
            f"<p>This row was removed on {escape(removal['removed_at'])}: {escape(removal['reason'])}</p></body></html>").encode()
    await send({"type": "http.response.start", "status": 410,
                "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})
