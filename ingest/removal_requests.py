"""Removal requests, the writer's side: apply a pending request to a Spellbook database.

The requests themselves live in a small database of their own (spellbook.database.removal_requests:
its schema, the form's add_request with its limits, list_requests, reject_request), which the
hosted site's form may write because it is never the published database. Applying one is a
`spellbook remove` (ingest/removals.py) of the request's kind and value, done here, on the
write side: the web never imports this module.
"""
from __future__ import annotations

from spellbook.database.removal_requests import (  # noqa: F401  (the requests' API, for the CLI)
    KINDS,
    STATUSES,
    InvalidRequest,
    NoSuchRequest,
    QueueFull,
    RateLimited,
    RequestError,
    RequestsBusy,
    add_request,
    check_request,
    decide,
    get_request,
    list_requests,
    open_requests_db,
    reject_request,
)
from spellbook.ingest.removals import RemovalSummary, remove


def apply_request(requests_db, db, request_id: int, by: str | None = None, reason: str | None = None) -> tuple[dict, RemovalSummary]:
    """Remove what request `request_id` asks for from `db` (the source database, or a copy to be
    published) and mark it applied. If the removal fails, the requests database is untouched and
    the request stays pending; applying it again after a crash between the two removes nothing
    more (the rows are gone) and marks it. `reason` replaces the requester's words on the removed
    rows' public 410 pages."""
    request = get_request(requests_db, request_id)
    if request["status"] != "pending":
        raise RequestError(f"Removal request {request_id} was already {request['status']} ({request['decided_at']})")
    requested_by = f"removal request #{request['id']}" + (f", applied by {by}" if by else "")
    summary = remove(db, request["kind"], [request["value"]], reason or request["reason"], requested_by=requested_by)
    return decide(requests_db, request["id"], "applied", by, rows_removed=summary.rows), summary
