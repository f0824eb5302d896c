"""Similarity pages: /-/similar?q=... (words, a "phrase", or an uploaded image), ?image=ID (more
like a training image), ?generation=ID (more like a generation), each with its .json twin.

Hybrid by default: full-text and vector results fused; mode=keywords and mode=similarity switch
one side off, and every result says why it matched. Without a model or vectors the page says so
and keeps keyword search. An uploaded image is size-capped and decoded safely; nothing is ever
fetched by URL here.
"""
from __future__ import annotations

import os
from email.parser import BytesParser
from email.policy import HTTP

from datasette import hookimpl
from datasette.utils.asgi import NotFound, Response

from spellbook.plugins._site import PageError, config, int_arg, page_view, query_arg, run, spellbook_database

MAX_UPLOAD_BYTES = 8 << 20
MODES = ("hybrid", "keywords", "similarity")
_SIMILARITY: dict = {}


def similarity(datasette, database):
    """The database's Similarity for this server: the model from `spellbook serve --model` or the
    `model`/`pretrained` settings, else the one its vectors were made with."""
    from spellbook.queries.similar import Similarity

    key = (id(datasette), database.name)
    if key not in _SIMILARITY:
        settings = config(datasette)
        name = settings.get("model") or os.environ.get("SPELLBOOK_MODEL") or None
        pretrained = settings.get("pretrained") or os.environ.get("SPELLBOOK_PRETRAINED") or None
        _SIMILARITY[key] = Similarity(database.path, name, pretrained if name else None)
    return _SIMILARITY[key]


async def ready(sim) -> None:
    """The model loaded and the indexes open, outside the request's time limit (see Similarity.warm)."""
    import asyncio

    await asyncio.to_thread(sim.warm)


@hookimpl
def startup(datasette):
    """Start loading the query model and the indexes as the server starts (in a thread: the server
    answers meanwhile; a similarity page that comes first waits for the load, not a time limit)."""

    async def inner():
        import threading

        try:
            database = await spellbook_database(datasette)
        except Exception:  # no Spellbook database here: nothing to load
            return
        sim = similarity(datasette, database)
        if sim.available:
            threading.Thread(target=sim.warm, name="spellbook-warm", daemon=True).start()

    return inner


async def read_upload(request) -> bytes | None:
    """The image of a multipart form (field "image"), read with a cap: 413 past MAX_UPLOAD_BYTES."""
    body, more = b"", True
    while more:
        message = await request.receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > MAX_UPLOAD_BYTES + 65_536:
            raise PageError(413, "Image too large", f"An uploaded image may be at most {MAX_UPLOAD_BYTES >> 20} MB.")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("image/"):
        return body
    if not content_type.startswith("multipart/form-data"):
        raise PageError(400, "No image", "Upload an image as multipart/form-data (field name: image).")
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "image":
            data = part.get_payload(decode=True) or b""
            if len(data) > MAX_UPLOAD_BYTES:
                raise PageError(413, "Image too large", f"An uploaded image may be at most {MAX_UPLOAD_BYTES >> 20} MB.")
            return data or None
    raise PageError(400, "No image", "The form has no image field.")


async def similar_view(datasette, request):
    from spellbook.embeddings.embed import open_image
    from spellbook.queries import similar as queries

    fmt = request.url_vars.get("format")
    q = query_arg(request, "q")
    mode = request.args.get("mode", "hybrid")
    if mode not in MODES:
        raise PageError(400, "No such mode", f"mode is one of {', '.join(MODES)}.")
    target = "prompts" if request.args.get("target") == "prompts" else "training"
    limit = int_arg(request, "_size", 60, 1, 200)
    database = await spellbook_database(datasette)
    sim = similarity(datasette, database)
    image = None
    if request.method == "POST":
        data = await read_upload(request)
        image = open_image(data) if data else None
        if image is None:
            raise PageError(400, "Not an image", "The upload is not an image this site can read (PNG, JPEG, WebP, GIF...).")
        mode = "similarity"
    tables = ["training_images", "domains"] if target == "training" else ["generations"]
    result, unavailable = None, None
    if mode != "keywords" and sim.available:
        await ready(sim)
        if q and image is None and not request.args.get("image") and not request.args.get("generation"):
            import asyncio

            try:  # encoded outside the time limit too (the vector is kept for the search below)
                await asyncio.to_thread(sim.text_vector, q)
            except queries.SimilarityUnavailable:
                pass  # the search below meets it again and says so

    def work(conn):
        if request.args.get("image"):
            return queries.more_like(conn, sim, "training", _id(request.args["image"]), limit)
        if request.args.get("generation"):
            return queries.more_like(conn, sim, "prompts", _id(request.args["generation"]), limit)
        vector = sim.image_vector(image) if image is not None else None
        return queries.search(conn, sim, q, vector=vector, mode=mode, target=target, limit=limit, by_image=image is not None)

    try:
        result = await run(datasette, request, database, work, tables=tables)
    except queries.SimilarityUnavailable as error:
        unavailable = str(error)
        if q and mode != "similarity":  # keyword search keeps working
            result = await run(datasette, request, database, lambda conn: queries.search(conn, sim, q, mode="keywords", target=target, limit=limit), tables=tables)
    if fmt == "json":
        if result is None:
            return Response.json({"ok": False, "error": unavailable}, status=503 if q or request.args else 200)
        rows = [{k: v for k, v in row.items() if k not in ("text_html", "safe_url")} for row in result["rows"]]
        return Response.json({**{k: v for k, v in result.items() if k != "rows"}, "similarity_unavailable": unavailable, "rows": rows}, default=str)
    return Response.html(
        await datasette.render_template(
            "spellbook_similar.html",
            {"q": q, "mode": mode, "target": target, "result": result, "unavailable": unavailable, "database": database.name,
             "image_item": request.args.get("image"), "generation_item": request.args.get("generation"), "uploaded": image is not None},
            request=request,
        )
    )


def _id(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise NotFound("No such row") from None
    if not 0 < number < 2**63:
        raise NotFound("No such row")
    return number


async def _fragment(datasette, request, template: str, context: dict, fmt: str | None, data):
    if fmt == "json":
        return Response.json(data, default=str)
    return Response.html(await datasette.render_template(template, context, request=request))


async def neighbours_view(datasette, request):
    """A prompt page's neighbours (loaded after the page): the training images nearest to the
    prompt's text, and the most similar prompts."""
    from spellbook.queries import similar as queries
    from spellbook.queries.reports import generation

    generation_id = _id(request.url_vars["id"])
    fmt = request.url_vars.get("format")
    database = await spellbook_database(datasette, "generations")
    sim = similarity(datasette, database)
    if sim.available:
        await ready(sim)

    def work(conn):
        record = generation(conn, generation_id)
        if record is None:
            raise NotFound(f"No generation {generation_id}")
        return queries.prompt_neighbours(conn, sim, generation_id, record["prompt"])

    try:
        data, unavailable = await run(datasette, request, database, work, tables=["generations", "training_images", "domains"]), None
    except queries.SimilarityUnavailable as error:
        data, unavailable = {"training": [], "prompts": []}, str(error)
    clean = {side: [{k: v for k, v in row.items() if k not in ("text_html", "safe_url")} for row in rows] for side, rows in data.items()}
    return await _fragment(datasette, request, "spellbook_neighbours.html", {"n": data, "unavailable": unavailable, "database": database.name},
                           fmt, {"generation": generation_id, "similarity_unavailable": unavailable, **clean})


async def lookalikes_view(datasette, request):
    """An artist's look-alikes: training images close to the ones whose captions name the artist,
    whose own captions do not. As a fragment of the artist report, .json or .csv."""
    import csv
    import io

    from spellbook.plugins._site import path_text
    from spellbook.queries import similar as queries
    from spellbook.queries.reports import canonical_artist
    from spellbook.text.fts import fts_query

    name = canonical_artist(path_text(request, "name"))
    fmt = request.url_vars.get("format")
    database = await spellbook_database(datasette)
    sim = similarity(datasette, database)
    if sim.available:
        await ready(sim)
    match = fts_query(f'"{name}"')
    try:
        data = await run(datasette, request, database, lambda conn: queries.lookalikes(conn, sim, match, limit=int_arg(request, "_size", 60, 1, 500)),
                         tables=["training_images", "domains"])
        unavailable = None
    except queries.SimilarityUnavailable as error:
        data, unavailable = {"seeds": 0, "rows": []}, str(error)
    rows = [{k: v for k, v in row.items() if k not in ("text_html", "safe_url", "why", "fused")} for row in data["rows"]]
    if fmt == "csv":
        buffer = io.StringIO()
        columns = ["id", "key", "url", "caption", "domain", "similarity", "like"]
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows([[row.get(c) for c in columns] for row in rows])
        slug = "".join(c if c.isalnum() else "-" for c in name)[:80]
        return Response(buffer.getvalue(), content_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="spellbook-lookalikes-{slug}.csv"'})
    return await _fragment(datasette, request, "spellbook_lookalikes.html",
                           {"name": name, "data": data, "unavailable": unavailable, "database": database.name}, fmt,
                           {"artist": name, "seeds": data["seeds"], "similarity_unavailable": unavailable, "note": LOOKALIKE_NOTE, "rows": rows})


LOOKALIKE_NOTE = ("Look-alikes are training images whose CLIP embeddings are close to those of images captioned with the "
                  "artist's name. Similarity is not proof that an image is the artist's work or was made from it.")


@hookimpl
def register_routes():
    return [
        (r"^/-/similar(\.(?P<format>json))?$", page_view(similar_view)),
        (r"^/-/prompt/(?P<id>\d{1,19})/neighbours(\.(?P<format>json))?$", page_view(neighbours_view)),
        (r"^/-/artist/(?P<name>[^/]+?)/lookalikes(\.(?P<format>json|csv))?$", page_view(lookalikes_view)),
    ]


@hookimpl
def prepare_jinja2_environment(env):
    env.globals["lookalike_note"] = LOOKALIKE_NOTE
