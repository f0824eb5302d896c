"""The artist report that joins both sides: /-/artist/NAME, .json, and .csv?side=training|prompts.

The CSV streams in chunks of short queries (never a whole export in memory) and stops at
EXPORT_LIMIT rows; when there are more, its headers and file name say so, and the page says so
beside the link."""
from __future__ import annotations

import csv
import io
import urllib.parse

from datasette import hookimpl
from datasette.utils.asgi import AsgiStream, Response

from spellbook.plugins._charts import bars, line_chart
from spellbook.plugins._site import PageError, flag_arg, page_view, path_text, run, spellbook_database
from spellbook.queries.reports import (
    EXPORT_CHUNK,
    EXPORT_LIMIT,
    PROMPT_EXPORT_COLUMNS,
    TRAINING_EXPORT_COLUMNS,
    artist_export_chunk,
    artist_export_size,
    artist_report,
)

ARTIST_TABLES = ["training_images", "domains", "generations", "generation_keywords", "keywords", "keyword_days", "prompt_days", "artists", "datasets"]
SIDES = {"training": (["training_images", "domains"], TRAINING_EXPORT_COLUMNS), "prompts": (["generations", "generation_keywords", "keywords"], PROMPT_EXPORT_COLUMNS)}


async def artist_view(datasette, request):
    name = path_text(request, "name")
    database = await spellbook_database(datasette)
    fmt = request.url_vars.get("format")
    if fmt == "csv":
        return await _csv(datasette, request, database, name, request.args.get("side", "training"))
    opted_out = flag_arg(request, "opted_out")
    report = await run(datasette, request, database, lambda conn: artist_report(conn, name, opted_out), tables=ARTIST_TABLES)
    if fmt == "json":
        return Response.json(report, default=str)
    days = report["prompts"]["days"]
    histogram = report["training"]["aesthetic_histogram"]["bins"]
    for item, height in zip(histogram, bars([h["count"] for h in histogram])):
        item["height"] = height
    return Response.html(
        await datasette.render_template(
            "spellbook_artist.html",
            {
                "a": report,
                "chart": line_chart([d["count"] for d in days], [d["day"] for d in days]),
                "quoted": urllib.parse.quote(report["artist"], safe=""),
                "export_limit": EXPORT_LIMIT,
            },
            request=request,
        )
    )


async def _csv(datasette, request, database, name: str, side: str):
    if side not in SIDES:
        raise PageError(400, "No such side", "side= is training or prompts.")
    tables, columns = SIDES[side]
    size = await run(datasette, request, database, lambda conn: artist_export_size(conn, name, side), tables=tables)
    cut = size > EXPORT_LIMIT
    slug = "".join(c if c.isalnum() else "-" for c in name.lower())[:80]
    filename = f"spellbook-{side}-{slug}" + (f"-first-{EXPORT_LIMIT}" if cut else "") + ".csv"
    headers = {"content-disposition": f'attachment; filename="{filename}"', "x-spellbook-rows": str(min(size, EXPORT_LIMIT))}
    if cut:
        headers["x-spellbook-truncated"] = f"the first {EXPORT_LIMIT} rows of more than {EXPORT_LIMIT}"

    async def stream(writer):
        buffer = io.StringIO()
        out = csv.writer(buffer)
        out.writerow(columns)
        sent, after = 0, 0
        while sent < EXPORT_LIMIT:
            want = min(EXPORT_LIMIT - sent, EXPORT_CHUNK)
            rows = await run(datasette, request, database, lambda conn: artist_export_chunk(conn, name, side, after, want), tables=tables)
            out.writerows(rows)
            await writer.write(buffer.getvalue())
            buffer.seek(0)
            buffer.truncate()
            sent += len(rows)
            if len(rows) < want:
                break
            after = rows[-1][0]
        if buffer.getvalue():
            await writer.write(buffer.getvalue())

    return AsgiStream(stream, headers=headers, content_type="text/csv; charset=utf-8")


PRINTED_ROWS = 5_000  # the printable page lists this many; the CSV and JSON carry every row (up to EXPORT_LIMIT)


async def evidence_view(datasette, request):
    """An artist's evidence file: every training caption naming the artist, with the dataset and
    version, the source file's sha256, the row's key and LAION hash, URL, caption and permalink,
    stamped with the time of export and the Spellbook version. CSV, JSON, or a printable page."""
    import json
    from datetime import datetime, timezone

    from spellbook import __version__
    from spellbook.queries.reports import EVIDENCE_COLUMNS, EVIDENCE_OPTOUT_COLUMNS, canonical_artist, evidence_chunk

    name = canonical_artist(path_text(request, "name"))
    fmt = request.url_vars.get("format")
    opted_out = flag_arg(request, "opted_out")
    database = await spellbook_database(datasette)
    tables = ["training_images", "domains", "datasets"]
    stamp = {"exported_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "spellbook_version": __version__,
             "artist": name, "opted_out_only": opted_out, "site": datasette.absolute_url(request, datasette.urls.path("/"))}

    def permalink(row: dict) -> str:
        return datasette.absolute_url(request, datasette.urls.path(f"/-/image/{row['key']}"))

    async def chunks(limit: int):
        sent, after = 0, 0
        while sent < limit:
            want = min(limit - sent, 5_000)
            rows = await run(datasette, request, database, lambda conn: evidence_chunk(conn, name, after, want, opted_out), tables=tables)
            if not rows:
                return
            yield [dict(row, permalink=permalink(row)) for row in rows]
            sent += len(rows)
            if len(rows) < want:
                return
            after = rows[-1]["id"]

    columns = EVIDENCE_COLUMNS + EVIDENCE_OPTOUT_COLUMNS + ["permalink"]
    slug = "".join(c if c.isalnum() else "-" for c in name)[:80]
    if fmt in ("csv", "json"):
        async def stream(writer):
            if fmt == "csv":
                # Every row carries the export's stamp, so a row copied out of the file still says where it came from
                buffer = io.StringIO()
                out = csv.writer(buffer)
                out.writerow(columns + ["exported_at", "spellbook_version"])
                async for rows in chunks(EXPORT_LIMIT):
                    out.writerows([[row.get(c) for c in columns] + [stamp["exported_at"], stamp["spellbook_version"]] for row in rows])
                    await writer.write(buffer.getvalue())
                    buffer.seek(0)
                    buffer.truncate()
                await writer.write(buffer.getvalue())
                return
            await writer.write(json.dumps(stamp)[:-1] + ', "rows": [')
            first = True
            async for rows in chunks(EXPORT_LIMIT):
                for row in rows:
                    await writer.write(("" if first else ",") + json.dumps({c: row.get(c) for c in columns}, default=str))
                    first = False
            await writer.write("]}")

        content_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/json; charset=utf-8"
        return AsgiStream(stream, headers={"content-disposition": f'attachment; filename="spellbook-evidence-{slug}.{fmt}"'}, content_type=content_type)
    rows = [row async for part in chunks(PRINTED_ROWS + 1) for row in part]
    return Response.html(await datasette.render_template(
        "spellbook_evidence.html", {"stamp": stamp, "rows": rows[:PRINTED_ROWS], "more": len(rows) > PRINTED_ROWS, "limit": PRINTED_ROWS, "name": name},
        request=request,
    ))


@hookimpl
def register_routes():
    return [
        (r"^/-/artist/(?P<name>[^/]+?)(\.(?P<format>json|csv))?$", page_view(artist_view)),
        (r"^/-/artist/(?P<name>[^/]+?)/evidence(\.(?P<format>json|csv))?$", page_view(evidence_view)),
    ]


@hookimpl
def prepare_jinja2_environment(env):
    env.filters["artist_url"] = lambda name: "/-/artist/" + urllib.parse.quote(name, safe="")
