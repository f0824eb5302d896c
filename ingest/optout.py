"""Opt-out signals: `spellbook check-optout` asks each image's URL and its site whether its owner
reserved it from AI training, and stores the answers with when they were checked.

What is read, per image URL (with the bounded, address-checked fetcher of embeddings/fetch.py):
- the image response's `X-Robots-Tag` header: `noai` or `noimageai` (DeviantArt's directives),
  for every crawler or one named (`spawningbot: noai`);
- TDMRep (W3C TDM Reservation Protocol): the `tdm-reservation: 1` header (with `tdm-policy`), and
  the site's `/.well-known/tdmrep.json`, a list of rules {"location", "tdm-reservation",
  "tdm-policy"} of which the first whose location matches the image's path applies;
- the site's `/ai.txt` (Spawning's robots.txt-like file): the `User-Agent: *` group's Allow and
  Disallow rules, the longest matching rule deciding (Allow wins a tie), as RFC 9309 has it;
- the Spawning Do-Not-Train registry, only with an API key: its bulk endpoint takes up to 10,000
  URLs a request (one per line, `Authorization: API <key>`) and answers {"urls": [{"url",
  "optOut"}]}.

Site-wide files are fetched once per origin and kept (`optout_origins`), so that a run over many
images of one site asks for them once; a later run re-reads those older than `max_age_days`. Each
image's latest result is one row of `optout_checks`: its signals, whether any of them reserves the
image (`opted_out`: 1, 0, or NULL when nothing could be read) and when. Results are written in
small transactions as they come, so an interrupted run keeps what it checked and a re-run goes on
with the rest.
"""
from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlsplit

from spellbook.database.connect import connect, transaction
from spellbook.database.schema import ensure_schema
from spellbook.embeddings.fetch import USER_AGENT, FetchLimits, FetchResult, fetch_images
from spellbook.ingest.records import InputError

SPAWNING_URL = "https://opts-api.spawningaiapi.com/api/v2/query/urls"
SPAWNING_BATCH = 10_000  # the most URLs the registry takes in one request
SPAWNING_TIMEOUT = 60.0
AI_DIRECTIVES = frozenset({"noai", "noimageai"})
# X-Robots-Tag directives that carry a value after a colon (not a crawler's name before one)
VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview", "indexifembedded"})
SITE_FILE_BYTES = 512 * 1024  # an ai.txt or tdmrep.json bigger than this is not read
COMMIT_EVERY = 200


# --- the signals, from what a server sent --------------------------------------------------------------


def x_robots_signals(value: str | None) -> list[dict]:
    """noai / noimageai in an X-Robots-Tag value (repeated headers joined by commas), with the
    crawler they are addressed to ("*" for all)."""
    signals, agent = [], "*"
    for part in (value or "").split(","):
        part = part.strip()
        if ":" in part:
            head, _, rest = part.partition(":")
            if head.strip().lower() not in VALUED_DIRECTIVES:
                agent, part = head.strip(), rest.strip()
        for token in part.lower().split():
            if token in AI_DIRECTIVES:
                signals.append({"source": "x-robots-tag", "value": token, "agent": agent})
    return signals


def tdm_header_signals(headers: dict[str, str]) -> list[dict]:
    """TDMRep's HTTP headers: tdm-reservation: 1 reserves the resource (tdm-policy says on what terms)."""
    value = (headers.get("tdm-reservation") or "").strip()
    if value != "1":
        return []
    signal = {"source": "tdm-reservation", "value": "1"}
    if headers.get("tdm-policy"):
        signal["policy"] = headers["tdm-policy"].strip()[:500]
    return [signal]


def parse_tdmrep(text: str) -> list[dict]:
    """The rules of a tdmrep.json; raises ValueError when it is not a list of rules with locations."""
    rules = json.loads(text)
    if not isinstance(rules, list) or not all(isinstance(rule, dict) and isinstance(rule.get("location"), str) for rule in rules):
        raise ValueError("tdmrep.json is not a list of rules with a location each")
    return rules


def _location_matches(location: str, path: str) -> bool:
    """TDMRep locations are paths from the site's root; * stands for any characters. One without a
    wildcard names a file, or everything below it when it ends with a slash."""
    location = location if location.startswith("/") else "/" + location
    if "*" in location:
        return re.fullmatch(".*".join(re.escape(piece) for piece in location.split("*")), path) is not None
    return path == location or (location.endswith("/") and path.startswith(location))


def tdmrep_signals(rules: list[dict], path: str) -> list[dict]:
    for rule in rules:
        if _location_matches(rule["location"], path):
            if str(rule.get("tdm-reservation", "")).strip() == "1":
                signal = {"source": "tdmrep.json", "value": "1", "rule": rule["location"][:500]}
                if isinstance(rule.get("tdm-policy"), str):
                    signal["policy"] = rule["tdm-policy"][:500]
                return [signal]
            return []  # the first matching rule decides, a 0 as much as a 1
    return []


def parse_ai_txt(text: str) -> list[tuple[bool, str]]:
    """(allowed, pattern) rules of the groups for every crawler (User-Agent: *) in an ai.txt."""
    rules: list[tuple[bool, str]] = []
    agents: list[str] = []
    in_rules = False
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name in ("user-agent", "useragent"):
            if in_rules:  # a User-Agent after rules starts a new group
                agents, in_rules = [], False
            agents.append(value.lower())
        elif name in ("allow", "disallow"):
            in_rules = True
            if "*" in agents and value:
                rules.append((name == "allow", value))
    return rules


def _pattern_matches(pattern: str, path: str) -> bool:
    """robots.txt matching: from the start of the path, * for any characters, $ for its end. A
    pattern that does not start with / or * (".jpg") matches anywhere."""
    anchored_end = pattern.endswith("$")
    body = pattern[:-1] if anchored_end else pattern
    if not body.startswith(("/", "*")):
        body = "*" + body
    regex = ".*".join(re.escape(piece) for piece in body.split("*")) + ("$" if anchored_end else "")
    return re.match(regex, path) is not None


def ai_txt_signals(rules: list[tuple[bool, str]], path: str) -> list[dict]:
    best: tuple[int, bool, str] | None = None
    for allowed, pattern in rules:
        if _pattern_matches(pattern, path):
            candidate = (len(pattern), allowed, pattern)
            if best is None or candidate[:2] > best[:2]:
                best = candidate
    if best is None or best[1]:
        return []
    return [{"source": "ai.txt", "value": "disallow", "rule": best[2][:500]}]


def _path(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def origin_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


# --- a run -------------------------------------------------------------------------------------------


@dataclass
class OptoutSummary:
    checked: int = 0
    opted_out: int = 0
    unknown: int = 0
    origins: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    spawning: int | None = None  # URLs the registry answered for, when it was asked
    seconds: float = 0.0

    def report(self) -> str:
        sources = ", ".join(f"{name} {n:,}" for name, n in sorted(self.by_source.items())) or "none"
        failed = ", ".join(f"{name} {n:,}" for name, n in sorted(self.outcomes.items()) if name != "ok")
        lines = [
            f"checked {self.checked:,} images on {self.origins:,} sites in {self.seconds:.1f} s: {self.opted_out:,} opted out, "
            f"{self.unknown:,} could not be read",
            f"signals: {sources}",
        ]
        if failed:
            lines.append(f"image fetches that failed: {failed}")
        if self.spawning is not None:
            lines.append(f"Spawning registry answered for {self.spawning:,} URLs")
        return "\n".join(lines)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _choose(conn, sample: int | None, domain: str | None, recheck: bool, seed: int | None) -> list[tuple[int, str]]:
    """The (id, url) rows to check: all of them (of one domain), or a random sample; rows checked
    before are left out unless `recheck`."""
    domain_id = None
    if domain:
        row = conn.execute("SELECT id FROM domains WHERE domain = ?", (domain,)).fetchone()
        if row is None:
            raise InputError("--domain", f"no training image is from {domain!r}")
        domain_id = row[0]
    unchecked = "" if recheck else " AND NOT EXISTS (SELECT 1 FROM optout_checks o WHERE o.image_id = t.id)"
    if sample is None:
        where = "WHERE t.domain_id = ?" if domain_id is not None else "WHERE 1"
        params = (domain_id,) if domain_id is not None else ()
        return conn.execute(f"SELECT t.id, t.url FROM training_images t {where}{unchecked} ORDER BY t.id", params).fetchall()
    rng = random.Random(seed)
    if domain_id is not None:
        ids = [i for (i,) in conn.execute(f"SELECT t.id FROM training_images t WHERE t.domain_id = ?{unchecked}", (domain_id,))]
        chosen = sorted(rng.sample(ids, min(sample, len(ids))))
    else:
        # Random ids over the id range (a scan for random() would read the whole table)
        (top,) = conn.execute("SELECT coalesce(max(id), 0) FROM training_images").fetchone()
        chosen_set: set[int] = set()
        tries = 0
        while len(chosen_set) < sample and tries < 20 and top:
            want = [rng.randint(1, top) for _ in range(2 * (sample - len(chosen_set)) + 10)]
            found = conn.execute(
                f"SELECT t.id FROM training_images t WHERE t.id IN (SELECT value FROM json_each(?)){unchecked}", (json.dumps(want),)
            ).fetchall()
            for (i,) in found:
                if len(chosen_set) < sample:
                    chosen_set.add(i)
            tries += 1
        chosen = sorted(chosen_set)
    rows = []
    for start in range(0, len(chosen), 900):
        part = chosen[start : start + 900]
        rows += conn.execute(f"SELECT id, url FROM training_images WHERE id IN ({','.join('?' * len(part))}) ORDER BY id", part).fetchall()
    return rows


class _Sites:
    """Each origin's tdmrep.json and ai.txt, from the database when fresh enough, else fetched."""

    def __init__(self, conn, limits: FetchLimits, max_age_days: float):
        self.conn, self.limits = conn, FetchLimits(**{**_limit_fields(limits), "read": "text", "max_bytes": SITE_FILE_BYTES})
        self.cutoff = (datetime.now(timezone.utc) - timedelta(days=max_age_days)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.rules: dict[str, tuple[list, list]] = {}

    def load(self, origins: Iterable[str]) -> int:
        """Make every origin's rules ready; the number of origins fetched."""
        wanted = sorted(set(origins) - set(self.rules))
        stale = []
        for origin in wanted:
            row = self.conn.execute("SELECT checked_at, tdmrep, ai_txt FROM optout_origins WHERE origin = ?", (origin,)).fetchone()
            if row and row[0] >= self.cutoff:
                self.rules[origin] = (parse_tdmrep(row[1]) if row[1] else [], parse_ai_txt(row[2]) if row[2] else [])
            else:
                stale.append(origin)
        files: dict[str, dict[str, FetchResult]] = {origin: {} for origin in stale}
        items = [((origin, name), origin + path) for origin in stale for name, path in (("tdmrep", "/.well-known/tdmrep.json"), ("ai_txt", "/ai.txt"))]
        for result in fetch_images(items, self.limits):
            origin, name = result.item_id
            files[origin][name] = result
        for origin in stale:
            tdmrep_text, tdmrep_status = _site_file(files[origin]["tdmrep"])
            tdmrep_rules: list = []
            if tdmrep_text is not None:
                try:
                    tdmrep_rules = parse_tdmrep(tdmrep_text)
                except ValueError:
                    tdmrep_text, tdmrep_status = None, "invalid"
            ai_text, ai_status = _site_file(files[origin]["ai_txt"])
            if ai_text is not None and _looks_like_html(ai_text):  # a site that answers every path with its home page
                ai_text, ai_status = None, "invalid"
            self.rules[origin] = (tdmrep_rules, parse_ai_txt(ai_text) if ai_text else [])
            self.conn.execute(
                """INSERT INTO optout_origins(origin, checked_at, tdmrep, tdmrep_status, ai_txt, ai_txt_status) VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(origin) DO UPDATE SET checked_at = excluded.checked_at, tdmrep = excluded.tdmrep,
                   tdmrep_status = excluded.tdmrep_status, ai_txt = excluded.ai_txt, ai_txt_status = excluded.ai_txt_status""",
                (origin, _now(), tdmrep_text, tdmrep_status, ai_text, ai_status),
            )
        return len(stale)


def _limit_fields(limits: FetchLimits) -> dict:
    from dataclasses import fields

    return {f.name: getattr(limits, f.name) for f in fields(limits) if f.init}


def _looks_like_html(text: str) -> bool:
    return text.lstrip()[:15].lower().startswith(("<!doctype", "<html"))


def _site_file(result: FetchResult) -> tuple[str | None, str]:
    """(text, status) of a site-wide file: its text when it was served, else why not."""
    if result.outcome == "ok":
        return (result.data or b"").decode("utf-8", "replace"), "found"
    if result.outcome == "http_error" and result.status is not None and 400 <= result.status < 500:
        return None, "none"
    return None, result.outcome


def spawning_opt_outs(urls: list[str], api_key: str, endpoint: str = SPAWNING_URL, batch: int = SPAWNING_BATCH,
                      timeout: float = SPAWNING_TIMEOUT, retries: int = 3) -> dict[str, bool]:
    """url -> optOut, from the Spawning registry's bulk endpoint (up to `batch` URLs a request)."""
    import httpx

    answers: dict[str, bool] = {}
    headers = {"Authorization": f"API {api_key}", "Content-Type": "text/plain", "User-Agent": USER_AGENT}
    with httpx.Client(timeout=timeout, headers=headers, trust_env=False) as client:
        for start in range(0, len(urls), batch):
            part = urls[start : start + batch]
            body = "\n".join(part + ([""] if len(part) == 1 else []))  # the registry wants more than one line
            for attempt in range(retries + 1):
                try:
                    response = client.post(endpoint, content=body.encode("utf-8"))
                except httpx.HTTPError as exc:
                    if attempt == retries:
                        raise InputError("--spawning-key", f"the Spawning registry at {endpoint} did not answer: {exc}") from None
                    time.sleep(min(2 ** attempt, 30))
                    continue
                if response.status_code == 429 or response.status_code >= 500:
                    if attempt == retries:
                        raise InputError("--spawning-key", f"the Spawning registry answered HTTP {response.status_code}")
                    time.sleep(min(float(response.headers.get("retry-after", 2 ** attempt) or 1), 30))
                    continue
                if response.status_code in (401, 403):
                    raise InputError("--spawning-key", f"the Spawning registry refused the API key (HTTP {response.status_code})")
                if response.status_code != 200:
                    raise InputError("--spawning-key", f"the Spawning registry answered HTTP {response.status_code}")
                try:
                    for item in response.json().get("urls", []):
                        if isinstance(item, dict) and isinstance(item.get("url"), str):
                            answers[item["url"]] = bool(item.get("optOut"))
                except (ValueError, AttributeError):
                    raise InputError("--spawning-key", "the Spawning registry's answer is not the JSON it documents") from None
                break
    return answers


def check_optout(
    db_path: str | Path,
    sample: int | None = None,
    domain: str | None = None,
    limits: FetchLimits = FetchLimits(concurrency=16, retries=1),
    spawning_key: str | None = None,
    spawning_url: str = SPAWNING_URL,
    recheck: bool = False,
    max_age_days: float = 7.0,
    seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> OptoutSummary:
    """Check the opt-out signals of the chosen training images and store them (see the module's doc)."""
    started = time.monotonic()
    db_path = Path(db_path)
    if not db_path.exists():
        raise InputError(str(db_path), "no such database")
    if sample is not None and sample < 1:
        raise InputError("--sample", "must be at least 1")
    conn = connect(db_path)
    try:
        ensure_schema(conn)
        rows = _choose(conn, sample, domain, recheck, seed)
        summary = OptoutSummary()
        if not rows:
            return summary
        spawning = spawning_opt_outs([url for _, url in rows], spawning_key, spawning_url) if spawning_key else None
        if spawning is not None:
            summary.spawning = len(spawning)
        sites = _Sites(conn, limits, max_age_days)
        with transaction(conn):
            summary.origins = sites.load(o for o in (origin_of(url) for _, url in rows) if o)
        urls = dict(rows)
        header_limits = FetchLimits(**{**_limit_fields(limits), "read": "headers"})
        pending = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for result in fetch_images(rows, header_limits):
                url = urls[result.item_id]
                origin = origin_of(url)
                signals: list[dict] = []
                readable = result.outcome == "ok"
                if readable:
                    headers = result.headers or {}
                    signals += x_robots_signals(headers.get("x-robots-tag"))
                    signals += tdm_header_signals(headers)
                if origin and origin in sites.rules:
                    tdmrep_rules, ai_rules = sites.rules[origin]
                    path = _path(url)
                    signals += tdmrep_signals(tdmrep_rules, path) + ai_txt_signals(ai_rules, path)
                    readable = readable or bool(tdmrep_rules or ai_rules)
                if spawning is not None and url in spawning:
                    readable = True
                    if spawning[url]:
                        signals.append({"source": "spawning", "value": "optOut"})
                opted_out = 1 if signals else (0 if readable else None)
                conn.execute(
                    """INSERT INTO optout_checks(image_id, checked_at, status, opted_out, signals) VALUES (?, ?, ?, ?, ?)
                       ON CONFLICT(image_id) DO UPDATE SET checked_at = excluded.checked_at, status = excluded.status,
                       opted_out = excluded.opted_out, signals = excluded.signals""",
                    (result.item_id, _now(), result.outcome, opted_out, json.dumps(signals)),
                )
                summary.checked += 1
                summary.outcomes[result.outcome] = summary.outcomes.get(result.outcome, 0) + 1
                summary.opted_out += opted_out == 1
                summary.unknown += opted_out is None
                for source in {signal["source"] for signal in signals}:
                    summary.by_source[source] = summary.by_source.get(source, 0) + 1
                pending += 1
                if pending >= COMMIT_EVERY:
                    conn.execute("COMMIT")
                    conn.execute("BEGIN IMMEDIATE")
                    pending = 0
                    if progress:
                        progress(summary.checked, len(rows))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("COMMIT")  # what was checked is kept: each row is a whole answer
            raise
        summary.seconds = time.monotonic() - started
        return summary
    finally:
        conn.close()


__all__ = [
    "OptoutSummary",
    "ai_txt_signals",
    "check_optout",
    "origin_of",
    "parse_ai_txt",
    "parse_tdmrep",
    "spawning_opt_outs",
    "tdm_header_signals",
    "tdmrep_signals",
    "x_robots_signals",
]
