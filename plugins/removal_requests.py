"""/-/request-removal: a form that asks the site's operator to take an image down.

GET shows the form (kind, value, reason, contact, Datasette's CSRF token); POST checks it and
stores it in the requests database (spellbook.database.removal_requests), a small writable file
that is never the published database and never one Datasette serves, then shows the request's id.
The form only queues a request: the operator applies it with `spellbook removals DB --requests
FILE --apply ID` and publishes again.

Off unless the `removal_requests_db` setting or SPELLBOOK_REMOVAL_REQUESTS_DB (which `spellbook
serve --removal-requests` sets) names the file: then every answer is a 404 that says so. Bounded:
a body over 16 KiB is a 413 before it is read, a client's sixth request in an hour a 429 with
Retry-After (`removal_requests_per_hour`), a full queue a 503 (`removal_requests_max_pending`
pending), a lock held by another process a 503 after two seconds. The client is its address
(scope["client"]); behind a proxy, `trust_forwarded_for: true` takes the first X-Forwarded-For
value (right where the proxy overwrites the header, as Cloud Run does), and a number N takes the
Nth from the right (where proxies append to it, as Fly.io's does: the values to its left are
the client's own and can say anything).
"""
from __future__ import annotations

import asyncio
import os

from datasette import hookimpl
from datasette.utils.asgi import Response

from spellbook.database import removal_requests as queue
from spellbook.plugins._site import PageError, check_same_site, config, error_page

MAX_BODY_BYTES = 16 * 1024
KIND_LABELS = {"url": "An image URL", "key": "A row's key", "domain": "Every image from a domain"}
NO_STORE = {"cache-control": "no-store"}  # a form with a token, a confirmation: never cached (hosting.py caches /-/ pages)


class LimitError(PageError):
    def __init__(self, status: int, title: str, message: str, retry_after: int):
        super().__init__(status, title, message)
        self.retry_after = retry_after


def requests_db(datasette) -> str | None:
    """The requests database's path: the `removal_requests_db` setting, or SPELLBOOK_REMOVAL_REQUESTS_DB."""
    return config(datasette).get("removal_requests_db") or os.environ.get("SPELLBOOK_REMOVAL_REQUESTS_DB") or None


def _setting(datasette, name: str, default: int) -> int:
    try:
        return int(config(datasette).get(name, default))
    except (TypeError, ValueError):
        return default


def client_address(datasette, request) -> str:
    address = (request.scope.get("client") or ("unknown", 0))[0]
    trust = config(datasette).get("trust_forwarded_for")
    forwarded = [part.strip() for part in request.headers.get("x-forwarded-for", "").split(",") if part.strip()]
    if not trust or not forwarded:
        return address
    if trust is True:
        return forwarded[0]
    try:
        hops = int(trust)
    except (TypeError, ValueError):
        return address
    return forwarded[-hops] if 0 < hops <= len(forwarded) else address


async def _form_page(datasette, request, fields: dict, error: queue.InvalidRequest | None = None, status: int = 200):
    return Response.html(
        await datasette.render_template(
            "spellbook_request_removal.html",
            {"fields": fields, "error": error, "kinds": KIND_LABELS, "sent": None,
             "limits": {"value": queue.MAX_VALUE_CHARS, "reason": queue.MAX_REASON_CHARS, "contact": queue.MAX_CONTACT_CHARS}},
            request=request,
        ),
        status=status,
        headers=dict(NO_STORE),
    )


async def _read_form(request) -> dict:
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise PageError(411, "Length required", "Send the form from a browser (the request has no Content-Length).")
    if int(length) > MAX_BODY_BYTES:
        raise PageError(413, "Request too large", f"The form sent {int(length):,} bytes; this page takes at most {MAX_BODY_BYTES:,} (16 KiB). Shorten the reason.")
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise PageError(415, "Not a form", "Send the request from this page's form.")
    try:
        return await request.post_vars()
    except UnicodeDecodeError:
        raise PageError(400, "Not a form", "The form's text is not UTF-8.") from None


async def _submit(datasette, request, path: str):
    form = await _read_form(request)
    check_same_site(request, form, "Send the request from this site's form (its token is missing or stale): reload it and try again.")
    fields = {name: form.get(name, "") for name in ("kind", "value", "reason", "contact")}
    try:
        stored = await asyncio.to_thread(
            queue.add_request, path, fields["kind"], fields["value"], fields["reason"], fields["contact"],
            client_address=client_address(datasette, request),
            per_hour=_setting(datasette, "removal_requests_per_hour", queue.DEFAULT_PER_HOUR),
            max_pending=_setting(datasette, "removal_requests_max_pending", queue.DEFAULT_MAX_PENDING),
        )
    except queue.InvalidRequest as error:
        return await _form_page(datasette, request, fields, error, status=400)
    except queue.RateLimited as error:
        raise LimitError(429, "Too many requests", str(error), error.retry_after) from None
    except queue.QueueFull as error:
        raise LimitError(503, "The queue is full", str(error), 3600) from None
    except queue.RequestsBusy as error:
        raise LimitError(503, "Busy", str(error), 5) from None
    except Exception as error:  # the sqlite3 module's errors (a missing folder, a read-only volume)
        if type(error).__module__.split(".")[0] not in ("sqlite3", "pysqlite3"):
            raise
        raise PageError(503, "Removal requests are unavailable", "This site cannot store requests just now; try again later.") from None
    return Response.html(
        await datasette.render_template(
            "spellbook_request_removal.html",
            {"sent": {key: stored[key] for key in ("id", "created_at", "kind", "value", "reason", "contact")}, "kinds": KIND_LABELS},
            request=request,
        ),
        status=201,
        headers=dict(NO_STORE),
    )


async def request_removal_view(datasette, request):
    path = requests_db(datasette)
    if path is None:
        raise PageError(404, "Removal requests are off", "This site does not take removal requests through a form. Ask its operator directly.")
    if request.method == "POST":
        return await _submit(datasette, request, path)
    kind = request.args.get("kind", "url")
    value = request.args.get("value", "")[: queue.MAX_VALUE_CHARS]  # a link from an image's page fills it in
    return await _form_page(datasette, request, {"kind": kind if kind in queue.KINDS else "url", "value": value, "reason": "", "contact": ""})


async def request_removal(datasette, request):
    try:
        return await request_removal_view(datasette, request)
    except PageError as error:
        response = await error_page(datasette, request, error)
        response.headers.update(NO_STORE)
        if isinstance(error, LimitError):
            response.headers["Retry-After"] = str(error.retry_after)
        return response


@hookimpl
def register_routes():
    return [(r"^/-/request-removal$", request_removal)]


@hookimpl
def extra_template_vars(datasette):
    """`spellbook_request_removal_url` for a page that links to the form (None while it is off):
    the form takes ?kind=url|key|domain&value=... to fill itself in."""
    return {"spellbook_request_removal_url": datasette.urls.path("/-/request-removal") if requests_db(datasette) else None}
