"""Opt-out signals on the read side: per image (for tiles and exports), per domain, and the set of
opted-out images that the search's and the artist report's "opted out" filter narrow to.

A database built before `spellbook check-optout` existed, or never checked, has no such rows:
every function here then answers "nothing checked" without failing.
"""
from __future__ import annotations

import json

OPTED_OUT_LIST_LIMIT = 200_000  # ids the filter holds in memory; beyond, it is a join instead


def has_checks(conn) -> bool:
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'optout_checks'").fetchone():
        return False
    return conn.execute("SELECT 1 FROM optout_checks LIMIT 1").fetchone() is not None


def optout_of(conn, ids: list[int]) -> dict[int, dict]:
    """image id -> {"opted_out", "sources", "checked_at"} for the checked ones among `ids`."""
    if not ids or not has_checks(conn):
        return {}
    rows = conn.execute(
        "SELECT image_id, opted_out, signals, checked_at FROM optout_checks WHERE image_id IN (SELECT value FROM json_each(?))",
        (json.dumps(ids),),
    ).fetchall()
    out = {}
    for image_id, opted_out, signals, checked_at in rows:
        parsed = json.loads(signals or "[]")
        out[image_id] = {
            "opted_out": None if opted_out is None else bool(opted_out),
            "sources": sorted({signal["source"] for signal in parsed}),
            "signals": parsed,
            "checked_at": checked_at,
        }
    return out


def opted_out_count(conn, domain_id: int | None = None) -> int:
    if not has_checks(conn):
        return 0
    if domain_id is None:
        return conn.execute("SELECT count(*) FROM optout_checks WHERE opted_out = 1").fetchone()[0]
    return conn.execute(
        "SELECT count(*) FROM optout_checks o JOIN training_images t ON t.id = o.image_id WHERE o.opted_out = 1 AND t.domain_id = ?",
        (domain_id,),
    ).fetchone()[0]


def opted_out_ids(conn, domain_id: int | None = None, limit: int = OPTED_OUT_LIST_LIMIT) -> list[int]:
    """The opted-out images' ids in order (of one domain), up to `limit` + 1 of them."""
    if not has_checks(conn):
        return []
    if domain_id is None:
        sql, params = "SELECT image_id FROM optout_checks WHERE opted_out = 1 ORDER BY image_id LIMIT ?", (limit + 1,)
    else:
        sql = """SELECT o.image_id FROM optout_checks o JOIN training_images t ON t.id = o.image_id
                 WHERE o.opted_out = 1 AND t.domain_id = ? ORDER BY o.image_id LIMIT ?"""
        params = (domain_id, limit + 1)
    return [i for (i,) in conn.execute(sql, params)]


def matched_optouts(conn, match: str, top: int = 10) -> dict:
    """Among the training captions matching `match` (an FTS query): how many were checked, how many
    found opted out, and the opted-out ones' domains. Walks the matches' ids once (an artist's name
    has thousands, not millions); the page's time limit bounds the rest."""
    if not has_checks(conn):
        return {"checked": 0, "opted_out": 0, "domains": []}
    matches = "SELECT rowid FROM training_images_fts WHERE training_images_fts MATCH :match"
    checked, opted = conn.execute(
        f"SELECT count(*), coalesce(sum(opted_out = 1), 0) FROM optout_checks WHERE image_id IN ({matches})", {"match": match}
    ).fetchone()
    domains = conn.execute(
        f"""SELECT d.domain, count(*) FROM optout_checks o JOIN training_images t ON t.id = o.image_id JOIN domains d ON d.id = t.domain_id
            WHERE o.opted_out = 1 AND o.image_id IN ({matches}) GROUP BY d.id ORDER BY 2 DESC, d.domain LIMIT :top""",
        {"match": match, "top": top},
    ).fetchall()
    return {"checked": checked, "opted_out": opted, "domains": [{"domain": d, "count": n} for d, n in domains]}


def domain_optouts(conn, limit: int = 100, domain: str | None = None) -> dict:
    """Per domain: images checked, opted out, by which signal, could not be read; and the sites'
    own files (tdmrep.json, ai.txt) as last fetched. Domains with the most opted-out images first."""
    if not has_checks(conn):
        return {"checked": 0, "opted_out": 0, "domains": []}
    where, params = ("WHERE d.domain = ?", [domain]) if domain else ("", [])
    rows = conn.execute(
        f"""SELECT d.domain, count(*), sum(o.opted_out = 1), sum(o.opted_out IS NULL), max(o.checked_at), d.image_count
            FROM optout_checks o JOIN training_images t ON t.id = o.image_id JOIN domains d ON d.id = t.domain_id {where}
            GROUP BY d.id ORDER BY 3 DESC, 2 DESC, d.domain LIMIT ?""",
        params + [limit],
    ).fetchall()
    domains = []
    for name, checked, opted, unknown, last, images in rows:
        sources: dict[str, int] = {}
        for (signals,) in conn.execute(
            """SELECT o.signals FROM optout_checks o JOIN training_images t ON t.id = o.image_id JOIN domains d ON d.id = t.domain_id
               WHERE d.domain = ? AND o.opted_out = 1 LIMIT 5000""",  # a sample: the shares, not every row
            (name,),
        ):
            for source in {signal["source"] for signal in json.loads(signals)}:
                sources[source] = sources.get(source, 0) + 1
        domains.append({
            "domain": name, "images": images, "checked": checked, "opted_out": opted or 0, "unknown": unknown or 0,
            "share": (opted or 0) / checked if checked else 0.0, "sources": dict(sorted(sources.items())), "last_checked": last,
        })
    totals = conn.execute("SELECT count(*), coalesce(sum(opted_out = 1), 0) FROM optout_checks").fetchone()
    return {"checked": totals[0], "opted_out": totals[1], "domains": domains}


def origin_files(conn, domain: str) -> list[dict]:
    """What the domain's sites serve as tdmrep.json and ai.txt, as last fetched."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'optout_origins'").fetchone():
        return []
    like = [f"%://{domain}", f"%.{domain}", f"%://{domain}:%", f"%.{domain}:%"]
    rows = conn.execute(
        """SELECT origin, checked_at, tdmrep_status, ai_txt_status, tdmrep, ai_txt FROM optout_origins
           WHERE origin LIKE ? OR origin LIKE ? OR origin LIKE ? OR origin LIKE ? ORDER BY origin LIMIT 50""",
        like,
    ).fetchall()
    return [{"origin": o, "checked_at": c, "tdmrep": ts, "ai_txt": ai, "tdmrep_text": tt, "ai_txt_text": at} for o, c, ts, ai, tt, at in rows]


__all__ = ["domain_optouts", "has_checks", "matched_optouts", "opted_out_count", "opted_out_ids", "optout_of", "origin_files"]
