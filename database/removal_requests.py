"""Removal requests: a small writable database of take-down requests, never the Spellbook database.

A hosted site serves its databases --immutable; its /-/request-removal form (plugins/
removal_requests.py) writes here instead, a file on a volume of its own. The operator reviews the
requests with `spellbook removals DB --requests FILE` and applies them to the source database
(ingest/removal_requests.py), then publishes again.

Every write is one short BEGIN IMMEDIATE transaction under a short busy timeout: a file another
process holds locked is RequestsBusy (the page answers 503), never a hang. The client is kept only
as a keyed hash of its address (the key is random and lives in this file), enough to count one
client's requests and no more.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

from spellbook.database.connect import sqlite3, transaction

KINDS = ("url", "key", "domain")
STATUSES = ("pending", "applied", "rejected")
MAX_VALUE_CHARS = 2_000
MAX_REASON_CHARS = 2_000
MAX_CONTACT_CHARS = 200
DEFAULT_PER_HOUR = 5
DEFAULT_MAX_PENDING = 10_000
WEB_BUSY_TIMEOUT_MS = 2_000  # a page waits this long for the lock, then answers 503
CLI_BUSY_TIMEOUT_MS = 30_000
COLUMNS = ["id", "created_at", "kind", "value", "reason", "contact", "client", "status", "decided_at", "decided_by", "rows_removed"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS removal_requests (
    id INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,         -- ISO 8601 UTC, e.g. 2024-05-01T12:00:00Z
    kind TEXT NOT NULL CHECK (kind IN ('url', 'key', 'domain')),
    value TEXT NOT NULL,              -- a training image's URL, a row's stable key, or a registered domain
    reason TEXT NOT NULL,
    contact TEXT,                     -- optional: how to reach the requester (only the operator sees it)
    client TEXT NOT NULL,             -- keyed hash of the client's address, never the address
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied', 'rejected')),
    decided_at TEXT,
    decided_by TEXT,
    rows_removed INTEGER              -- what applying it removed
);
CREATE INDEX IF NOT EXISTS idx_removal_requests_client ON removal_requests(client, created_at);
CREATE INDEX IF NOT EXISTS idx_removal_requests_status ON removal_requests(status);
CREATE TABLE IF NOT EXISTS removal_requests_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_BREAK = re.compile(r"[\r\n]")
_DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")


class RequestError(Exception):
    """A request that cannot be taken or decided; the message says why in the user's words."""


class InvalidRequest(RequestError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class RateLimited(RequestError):
    def __init__(self, per_hour: int, retry_after: int):
        super().__init__(f"This address has sent {per_hour} requests in the last hour, the most this site takes; try again in {retry_after // 60 + 1} minutes.")
        self.retry_after = retry_after


class QueueFull(RequestError):
    pass


class RequestsBusy(RequestError):
    pass


class NoSuchRequest(RequestError):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def open_requests_db(path: str | Path, busy_timeout_ms: int = CLI_BUSY_TIMEOUT_MS) -> "sqlite3.Connection":
    """A connection to the requests database, created (schema and client key) if need be; WAL, so
    the form's writes never wait for a reader."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=busy_timeout_ms / 1000, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if conn.execute("SELECT count(*) FROM sqlite_master WHERE name IN ('removal_requests', 'removal_requests_meta')").fetchone()[0] < 2:
            with transaction(conn):
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT OR IGNORE INTO removal_requests_meta(name, value) VALUES ('client_key', ?)", (secrets.token_hex(32),))
    except sqlite3.OperationalError as error:
        conn.close()
        raise _busy(error) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _busy(error: Exception) -> Exception:
    if "locked" in str(error) or "busy" in str(error):
        return RequestsBusy("The request queue is busy; try again in a moment.")
    return error


def client_hash(conn, address: str) -> str:
    """HMAC-SHA256 of the address under this file's own random key: without the key, a list of
    requests says nothing about who sent them (an IPv4 address's plain hash is a lookup away)."""
    key = conn.execute("SELECT value FROM removal_requests_meta WHERE name = 'client_key'").fetchone()[0]
    return hmac.new(key.encode(), address.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:32]


def check_request(kind: str, value: str, reason: str, contact: str | None = None) -> dict:
    """The fields of a request, stripped and checked: InvalidRequest names the field that is wrong."""
    kind = (kind or "").strip()
    value = (value or "").strip()
    reason = (reason or "").strip()
    contact = (contact or "").strip() or None
    if kind not in KINDS:
        raise InvalidRequest("kind", "Say what to remove: an image URL, a row's key or a domain.")
    for field, text, limit in (("value", value, MAX_VALUE_CHARS), ("reason", reason, MAX_REASON_CHARS), ("contact", contact or "", MAX_CONTACT_CHARS)):
        if len(text) > limit:
            raise InvalidRequest(field, f"The {field} is {len(text):,} characters long; this form takes at most {limit:,}.")
        if _CONTROL.search(text) or (field != "reason" and _LINE_BREAK.search(text)):
            raise InvalidRequest(field, f"The {field} holds control characters or line breaks.")
    if not value:
        raise InvalidRequest("value", "Give the image's URL, the row's key or the domain.")
    if not reason:
        raise InvalidRequest("reason", "Say why it should be removed: the site's operator reads every reason.")
    if kind == "url" and not re.match(r"^https?://[^/\s?#]+", value, re.I):
        raise InvalidRequest("value", "An image URL starts with http:// or https://.")
    if kind == "key":
        if not re.fullmatch(r"-?\d{1,19}", value) or not -(2**63) <= int(value) < 2**63:
            raise InvalidRequest("value", "A key is the number at the end of the image's page address (/-/image/KEY).")
        value = str(int(value))
    if kind == "domain":
        value = value.lower().rstrip(".")
        if not _DOMAIN.match(value):
            raise InvalidRequest("value", "A domain is a name such as example.com (no http://, no path).")
    return {"kind": kind, "value": value, "reason": reason, "contact": contact}


def add_request(path, kind: str, value: str, reason: str, contact: str | None = None, *, client_address: str,
                per_hour: int = DEFAULT_PER_HOUR, max_pending: int = DEFAULT_MAX_PENDING,
                busy_timeout_ms: int = WEB_BUSY_TIMEOUT_MS) -> dict:
    """Store one request, pending, in one short transaction. Over the client's hourly limit is
    RateLimited (with the seconds until it may send again), a full queue QueueFull, a lock held
    past the busy timeout RequestsBusy."""
    fields = check_request(kind, value, reason, contact)
    conn = open_requests_db(path, busy_timeout_ms)
    try:
        now = _now()
        client = client_hash(conn, client_address)
        with transaction(conn):
            recent = [row[0] for row in conn.execute(
                "SELECT created_at FROM removal_requests WHERE client = ? AND created_at > ? ORDER BY created_at",
                (client, _iso(now - timedelta(hours=1))))]
            if len(recent) >= per_hour:
                oldest = datetime.strptime(recent[-per_hour], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
                raise RateLimited(per_hour, max(1, int((oldest + timedelta(hours=1) - now).total_seconds()) + 1))
            if conn.execute("SELECT count(*) FROM removal_requests WHERE status = 'pending'").fetchone()[0] >= max_pending:
                raise QueueFull("The queue of removal requests is full; the site's operator has not yet gone through it. Try again later.")
            request_id = conn.execute(
                "INSERT INTO removal_requests(created_at, kind, value, reason, contact, client) VALUES (?, ?, ?, ?, ?, ?)",
                (_iso(now), fields["kind"], fields["value"], fields["reason"], fields["contact"], client),
            ).lastrowid
        return _get(conn, request_id)
    except sqlite3.OperationalError as error:
        raise _busy(error) from None
    finally:
        conn.close()


def _get(conn, request_id: int) -> dict:
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM removal_requests WHERE id = ?", (request_id,)).fetchone()
    if row is None:
        raise NoSuchRequest(f"No removal request {request_id}")
    return dict(zip(COLUMNS, row))


def get_request(path, request_id: int) -> dict:
    conn = open_requests_db(path)
    try:
        return _get(conn, int(request_id))
    finally:
        conn.close()


def list_requests(path, status: str | None = None) -> list[dict]:
    """Every request, oldest first (only those of one status, when given)."""
    if status is not None and status not in STATUSES:
        raise InvalidRequest("status", f"status is one of {', '.join(STATUSES)}")
    conn = open_requests_db(path)
    try:
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        return [dict(zip(COLUMNS, row)) for row in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM removal_requests {where} ORDER BY id", params)]
    finally:
        conn.close()


def decide(path, request_id: int, status: str, by: str | None = None, rows_removed: int | None = None) -> dict:
    """Mark a pending request applied or rejected (one transaction); a decided one is an error."""
    if status not in ("applied", "rejected"):
        raise InvalidRequest("status", "a request is applied or rejected")
    conn = open_requests_db(path)
    try:
        with transaction(conn):
            request = _get(conn, int(request_id))
            if request["status"] != "pending":
                raise RequestError(f"Removal request {request_id} was already {request['status']} ({request['decided_at']})")
            conn.execute("UPDATE removal_requests SET status = ?, decided_at = ?, decided_by = ?, rows_removed = ? WHERE id = ?",
                         (status, _iso(_now()), by, rows_removed, request["id"]))
        return _get(conn, int(request_id))
    finally:
        conn.close()


def reject_request(path, request_id: int, by: str | None = None) -> dict:
    return decide(path, request_id, "rejected", by)
