"""Regenerate a prompt from its page, on this machine: only where the runner is enabled.

`spellbook serve --enable-runner` sets SPELLBOOK_RUNNER=1 (or the plugin setting `runner: true`)
and starts the worker (spellbook.runner.worker). Then the prompt page has a Regenerate button and
a remix form (seed, steps, CFG, sampler, size), and:

    POST /-/prompt/ID/regenerate        queue a job (Datasette's CSRF token; fields bounded), 302 to its page
    GET  /-/regenerate/JOB[.json]       the job: progress, then the result beside the original
    GET  /-/regenerate/JOB/image        the regenerated PNG (?download=1 as an attachment)

Without it (the default, and on any published instance) the button is absent and every one of
these routes answers 404. Jobs live in DB.runner.db beside the database, never in it.
"""
from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from datasette import hookimpl
from datasette.utils.asgi import NotFound, Response

from spellbook.plugins._site import PageError, check_same_site, config, page_view, run, spellbook_database
from spellbook.queries.reports import generation

PROMPT_TABLES = ["generations", "generation_keywords", "keywords", "datasets"]
MAX_RESULT_BYTES = 64 << 20
# What a page may show of a regeneration (never its path on this machine).
SHOWN = ("id", "generation_id", "created_at", "prompt", "negative_prompt", "seed", "steps", "cfg", "sampler", "schedule", "sampler_requested",
         "scheduler_class", "width", "height", "clip_skip", "batch_size", "strength", "model", "model_source", "model_family", "model_hash",
         "model_revision", "model_reason", "loras", "embeddings", "overrides", "not_honoured", "notes", "diffusers_version", "torch_version",
         "compel_version", "device", "dtype", "attention", "seconds", "image_sha256", "source_image", "clip_similarity", "clip_model",
         "phash_distance", "score_note")


def runner_enabled(datasette) -> bool:
    """The `runner` setting, or SPELLBOOK_RUNNER=1 (which only `spellbook serve --enable-runner` sets)."""
    return bool(config(datasette).get("runner")) or os.environ.get("SPELLBOOK_RUNNER") == "1"


def _require_enabled(datasette) -> None:
    if not runner_enabled(datasette):
        raise NotFound("The runner is not enabled on this server")


async def _store_path(datasette) -> tuple[object, Path]:
    from spellbook.runner.store import runner_path

    database = await spellbook_database(datasette, "generations")
    if not database.path:
        raise NotFound("This database has no file beside which jobs could be kept")
    return database, runner_path(database.path)


async def _with_queue(path: Path, fn):
    """fn(queue) in a thread, on a connection of its own: short transactions on DB.runner.db."""
    from spellbook.runner.jobs import JobQueue
    from spellbook.runner.store import RunnerStore

    def work():
        store = RunnerStore(path)
        try:
            return fn(JobQueue(store))
        finally:
            store.close()

    return await asyncio.to_thread(work)


def _id(request, name: str) -> int:
    value = int(request.url_vars[name])
    if value > 2**63 - 1:
        raise NotFound(f"No such {name}")
    return value


async def queue_view(datasette, request):
    from spellbook.runner.jobs import JobError, check_remix

    _require_enabled(datasette)
    if request.method != "POST":
        return Response.redirect(datasette.urls.path(f"/-/prompt/{request.url_vars['id']}"))
    generation_id = _id(request, "id")
    database, path = await _store_path(datasette)
    record = await run(datasette, request, database, lambda conn: generation(conn, generation_id), tables=["generations"])
    if record is None:
        raise NotFound(f"No generation {generation_id}")
    form = await request.post_vars()
    check_same_site(request, form, "Queue a regeneration from its prompt page (the form's token is missing or stale).")
    fields = {} if form.get("remix") != "1" else {name: form.get(name) for name in ("seed", "steps", "cfg", "sampler", "width", "height")}
    try:
        overrides = check_remix(fields)
    except JobError as error:
        raise PageError(400, "Cannot regenerate with those settings", str(error)) from None
    job = await _with_queue(path, lambda queue: queue.add(generation_id, overrides))
    if request.args.get("format") == "json" or "application/json" in request.headers.get("accept", ""):
        return Response.json({"job": _job_json(job), "url": datasette.urls.path(f"/-/regenerate/{job.id}")}, status=201)
    return Response.redirect(datasette.urls.path(f"/-/regenerate/{job.id}"))


async def _job_state(datasette, job_id: int):
    _, path = await _store_path(datasette)
    if not path.exists():
        raise NotFound(f"No job {job_id}")

    def read(queue):
        job = queue.get(job_id)
        if job is None:
            return None, None, 0
        regeneration = queue.store.regeneration(job.regeneration_id) if job.regeneration_id else None
        return job, regeneration, queue.position(job) if job.status == "queued" else 0

    job, regeneration, position = await _with_queue(path, read)
    if job is None:
        raise NotFound(f"No job {job_id}")
    return job, regeneration, position


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.])(?:/[^\s/'\"()<>,;]+)+/([^\s/'\"()<>,;]*)")


def _without_paths(value):
    """Text as a page may show it: an absolute path on this machine shortened to its last part."""
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(lambda match: "…/" + match.group(1), value)
    if isinstance(value, list):
        return [_without_paths(item) for item in value]
    if isinstance(value, dict):
        return {key: _without_paths(item) for key, item in value.items()}
    return value


def _shown(regeneration: dict | None) -> dict | None:
    from spellbook.text.samplers import a1111_name

    if regeneration is None:
        return None
    shown = {key: _without_paths(regeneration.get(key)) for key in SHOWN}
    shown["sampler_a1111"] = a1111_name(shown["sampler"])
    return shown


def _job_json(job) -> dict:
    data = job.as_json()
    data["error"], data["message"] = _without_paths(data["error"]), _without_paths(data["message"])
    return data


async def job_view(datasette, request):
    _require_enabled(datasette)
    job_id = _id(request, "job")
    job, regeneration, position = await _job_state(datasette, job_id)
    database = await spellbook_database(datasette, "generations")
    record = await run(datasette, request, database, lambda conn: generation(conn, job.generation_id), tables=PROMPT_TABLES)
    image_url = datasette.urls.path(f"/-/regenerate/{job.id}/image") if regeneration else None
    if request.url_vars.get("format") == "json":
        return Response.json({
            "job": _job_json(job), "queue_position": position, "regeneration": _shown(regeneration), "image_url": image_url,
            "download_url": image_url + "?download=1" if image_url else None, "prompt_url": datasette.urls.path(f"/-/prompt/{job.generation_id}"),
        })
    if record is None:
        raise NotFound(f"No generation {job.generation_id}")
    return Response.html(
        await datasette.render_template(
            "spellbook_regenerate.html",
            {"job": job, "job_error": _without_paths(job.error), "job_message": _without_paths(job.message), "g": record, "r": _shown(regeneration), "position": position, "image_url": image_url, "database": database.name},
            request=request,
        )
    )


async def image_view(datasette, request):
    _require_enabled(datasette)
    job_id = _id(request, "job")
    job, regeneration, _ = await _job_state(datasette, job_id)
    if regeneration is None:
        raise NotFound(f"Job {job_id} has no image yet")
    database = await spellbook_database(datasette, "generations")
    await run(datasette, request, database, lambda conn: None, tables=["generations"])  # the same view checks as the prompt page
    path = Path(regeneration["image_path"])
    if path.suffix.lower() != ".png" or not path.is_file() or path.stat().st_size > MAX_RESULT_BYTES:
        raise NotFound("The regenerated image is no longer on this machine")
    headers = {"cache-control": "private, max-age=3600", "x-content-type-options": "nosniff"}
    if request.args.get("download"):
        headers["content-disposition"] = f'attachment; filename="spellbook-{job.generation_id}-regeneration-{regeneration["id"]}.png"'
    return Response(await asyncio.to_thread(path.read_bytes), content_type="image/png", headers=headers)


@hookimpl
def prepare_jinja2_environment(env, datasette):
    from spellbook.runner.samplers import REMIX_SAMPLERS
    from spellbook.runner.jobs import REMIX_LIMITS

    env.globals["spellbook_runner_enabled"] = lambda: runner_enabled(datasette)
    env.globals["spellbook_remix_samplers"] = REMIX_SAMPLERS
    env.globals["spellbook_remix_limits"] = REMIX_LIMITS


@hookimpl
def register_routes():
    return [
        (r"^/-/prompt/(?P<id>\d{1,19})/regenerate$", page_view(queue_view)),
        (r"^/-/regenerate/(?P<job>\d{1,19})(\.(?P<format>json))?$", page_view(job_view)),
        (r"^/-/regenerate/(?P<job>\d{1,19})/image$", page_view(image_view)),
    ]
