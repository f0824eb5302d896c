"""The prompt side: /-/prompts?q=... (a grid) and /-/prompt/ID, each with a .json twin, and
/-/prompt/ID/image, a generated image on this machine's disk (only where local images are on)."""
from __future__ import annotations

import mimetypes
import urllib.parse
import zipfile
from pathlib import Path

from datasette import hookimpl
from datasette.utils.asgi import NotFound, Response

from spellbook.plugins._site import (
    MAX_PAGE,
    config,
    gone,
    int_arg,
    local_images,
    next_page_url,
    page_view,
    query_arg,
    run,
    spellbook_database,
)
from spellbook.queries.reports import generation, local_image, removal_of
from spellbook.queries.search import search_prompts
from spellbook.text.markup import safe_url

PROMPT_TABLES = ["generations", "generation_keywords", "keywords", "datasets"]
MAX_IMAGE_BYTES = 64 << 20  # a generated image; a bigger file (or zip member) is not served
IMAGE_TYPES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".avif", ".bmp", ".tif", ".tiff"}


def _blur(row: dict, threshold: float) -> bool:
    return row.get("image_nsfw") is not None and row["image_nsfw"] >= threshold


def image_src(datasette, row: dict) -> str | None:
    """What a tile or page shows: the corpus's image URL, else the image on this machine's disk."""
    url = safe_url(row.get("image_url"))
    if url:
        return url
    if row.get("has_local_image") and local_images(datasette):
        return datasette.urls.path(f"/-/prompt/{row['id']}/image")
    return None


async def prompts_view(datasette, request):
    q = query_arg(request, "q")
    settings = config(datasette)
    page_size = int_arg(request, "_size", 60, 1, 500)
    page = int_arg(request, "page", 1, 1, MAX_PAGE)
    database = await spellbook_database(datasette, "generations")
    result = await run(
        datasette, request, database, lambda conn: search_prompts(conn, q, limit=page_size, offset=(page - 1) * page_size), tables=["generations"]
    )
    next_url = next_page_url(request, page, page_size, len(result.rows), result.total)
    if request.url_vars.get("format") == "json":
        rows = [{k: v for k, v in row.items() if k not in ("text_html", "safe_url")} for row in result.rows]
        return Response.json(
            {"query": q, "total": result.total, "total_exact": result.total_exact, "ranked": result.ranked,
             "page": page, "page_size": page_size, "next": next_url, "rows": rows}
        )
    threshold = float(settings["punsafe_blur_threshold"])
    for row in result.rows:
        row["blurred"] = _blur(row, threshold)
    return Response.html(
        await datasette.render_template(
            "spellbook_prompts.html",
            {
                "q": q,
                "result": result,
                "database": database.name,
                "table_url": datasette.urls.table(database.name, "generations") + ("?" + urllib.parse.urlencode({"_search": q}) if q else ""),
                "next_url": next_url,
            },
            request=request,
        )
    )


def _generation_id(request) -> int:
    generation_id = int(request.url_vars["id"])
    if generation_id > 2**63 - 1:
        raise NotFound(f"No generation {generation_id}")
    return generation_id


async def prompt_view(datasette, request):
    generation_id = _generation_id(request)
    database = await spellbook_database(datasette, "generations")
    record, removal = await run(
        datasette, request, database, lambda conn: (generation(conn, generation_id), removal_of(conn, "generation", item_id=generation_id)), tables=PROMPT_TABLES
    )
    if removal is not None and record is None:
        raise gone(removal)
    if record is None:
        raise NotFound(f"No generation {generation_id}")
    if request.url_vars.get("format") == "json":
        return Response.json(record)
    record["safe_image_url"] = safe_url(record["image_url"])
    record["blurred"] = _blur(record, float(config(datasette)["punsafe_blur_threshold"]))
    return Response.html(
        await datasette.render_template(
            "spellbook_prompt.html",
            {"g": record, "database": database.name, "row_url": datasette.urls.row(database.name, "generations", str(generation_id))},
            request=request,
        )
    )


def read_local_image(root: str, relative: str) -> tuple[bytes, str]:
    """The bytes of an image below root (a folder or a zip), refusing anything that would leave it
    or is not an image of bounded size. NotFound for all of those: nothing about the disk is told."""
    suffix = Path(relative).suffix.lower()
    if suffix not in IMAGE_TYPES:
        raise NotFound("Not an image")
    content_type = mimetypes.types_map.get(suffix, "application/octet-stream") if suffix != ".webp" else "image/webp"
    base = Path(root)
    if base.is_file() and zipfile.is_zipfile(base):
        with zipfile.ZipFile(base) as archive:
            try:
                info = archive.getinfo(relative)
            except KeyError:
                raise NotFound("No such image") from None
            if info.file_size > MAX_IMAGE_BYTES:
                raise NotFound("Image too large to serve")
            return archive.read(info), content_type
    path = (base / relative).resolve()
    if not path.is_relative_to(base.resolve()) or not path.is_file():
        raise NotFound("No such image")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise NotFound("Image too large to serve")
    return path.read_bytes(), content_type


async def prompt_image_view(datasette, request):
    if not local_images(datasette):
        raise NotFound("Local images are not served here")
    generation_id = _generation_id(request)
    database = await spellbook_database(datasette, "generations")
    found = await run(datasette, request, database, lambda conn: local_image(conn, generation_id), tables=["generations"])
    if found is None:
        raise NotFound(f"Generation {generation_id} has no image on this machine")
    body, content_type = read_local_image(*found)
    return Response(body, content_type=content_type, headers={"cache-control": "private, max-age=3600", "x-content-type-options": "nosniff"})


@hookimpl
def prepare_jinja2_environment(env, datasette):
    env.filters["prompt_image"] = lambda row: image_src(datasette, row)


@hookimpl
def register_routes():
    return [
        (r"^/-/prompts(\.(?P<format>json))?$", page_view(prompts_view)),
        (r"^/-/prompt/(?P<id>\d{1,19})(\.(?P<format>json))?$", page_view(prompt_view)),
        (r"^/-/prompt/(?P<id>\d{1,19})/image$", page_view(prompt_image_view)),
    ]
