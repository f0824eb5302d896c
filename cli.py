"""The `spellbook` command: a few lines per command, the work is in the library."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from spellbook.ingest.records import InputError


def _fail(error: Exception):
    raise click.ClickException(str(error))


@click.group()
@click.version_option(package_name="spellbook")
def cli():
    """Spellbook: what went into AI image generators, and what people type into them.

    \b
    Example:
        spellbook ingest laion spellbook.db improved_aesthetics_6plus/
        spellbook serve spellbook.db
    """


@cli.group()
def ingest():
    """Read source files into a Spellbook database (created if missing)."""


@ingest.command("laion")
@click.argument("db", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--min-aesthetic", type=float, default=None, help="Skip rows whose aesthetic score is below this.")
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), default=50_000, show_default=True, help="Rows per transaction.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on when stderr is a terminal).")
def ingest_laion(db, paths, min_aesthetic, batch_size, progress):
    """Ingest LAION(-Aesthetics) parquet files, or folders of them.

    Reads the V1 schema (aesthetic), the V2 schema (AESTHETIC_SCORE) and URL+TEXT files.
    Re-running is safe: rows already present are counted, not duplicated, and an
    interrupted ingest resumes where it stopped.

    \b
    Example:
        spellbook ingest laion spellbook.db improved_aesthetics_6plus/ --min-aesthetic 6.5
    """
    from spellbook.ingest.load import ingest_training_files

    show = sys.stderr.isatty() if progress is None else progress
    try:
        summary = ingest_training_files(db, paths, min_aesthetic=min_aesthetic, batch_size=batch_size, progress=show)
    except InputError as error:
        _fail(error)
    click.echo(summary.report())
    if summary.failed:
        sys.exit(1)


@ingest.command("prompts")
@click.argument("db", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--format",
    "source_format",
    type=click.Choice(["diffusiondb-parquet", "diffusiondb-json", "diffusiondb-part", "diffusiondb-csv", "lexica-json", "krea-csv", "i2p-csv", "image-metadata"]),
    default=None,
    help="Source format (detected when not given).",
)
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), default=50_000, show_default=True, help="Rows per transaction.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on when stderr is a terminal).")
def ingest_prompts(db, paths, source_format, batch_size, progress):
    """Ingest prompt corpora: DiffusionDB, Lexica, Krea open-prompts, I2P, or a folder of images.

    DiffusionDB's images come one zip per part: give a downloaded part (its zip, or the folder it
    was extracted to) and its generations get their images, also after metadata.parquet.

    \b
    Example:
        spellbook ingest prompts spellbook.db metadata.parquet
        spellbook ingest prompts spellbook.db images/part-000001.zip
        spellbook ingest prompts spellbook.db lexica.json --format lexica-json
        spellbook ingest prompts spellbook.db ~/Pictures/sd-outputs/
    """
    from spellbook.ingest.load import ingest_prompt_files

    show = sys.stderr.isatty() if progress is None else progress
    try:
        summary = ingest_prompt_files(db, paths, source_format=source_format, batch_size=batch_size, progress=show)
    except InputError as error:
        _fail(error)
    click.echo(summary.report())
    if summary.failed:
        sys.exit(1)


@cli.group()
def synth():
    """Write clearly labelled synthetic data, for tests and benchmarks at scale."""


def _synthesise(kind: str, out: Path, rows: int, seed: int, label: str) -> None:
    from spellbook.ingest import synth as generator

    try:
        getattr(generator, f"synth_{kind}")(out, rows=rows, seed=seed)
    except InputError as error:
        _fail(error)
    click.echo(f"wrote {rows:,} synthetic {label} rows to {out}")


@synth.command("laion")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--rows", type=click.IntRange(1), default=1_000_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def synth_laion(out, rows, seed):
    """Synthetic LAION-Aesthetics V2 parquet whose distributions follow the real samples.

    \b
    Example:
        spellbook synth laion synthetic-6plus.parquet --rows 12096835 --seed 1
    """
    _synthesise("laion", out, rows, seed, "LAION-Aesthetics V2")


@synth.command("prompts")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--rows", type=click.IntRange(1), default=2_000_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def synth_prompts(out, rows, seed):
    """Synthetic DiffusionDB metadata.parquet rows built from real prompt structure.

    \b
    Example:
        spellbook synth prompts synthetic-diffusiondb.parquet --rows 2000000
    """
    _synthesise("prompts", out, rows, seed, "DiffusionDB-shaped")


def _model_options(command):
    """--model / --pretrained / --device, the same on every command that loads a model."""
    command = click.option("--device", type=click.Choice(["cpu", "cuda", "mps"]), default="cpu", show_default=True, help="Where the model runs.")(command)
    command = click.option("--download/--no-download", default=True, show_default=True, help="Fetch missing weights from the Hugging Face hub.")(command)
    command = click.option("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file (default: openai with the default model).")(command)
    command = click.option("--model", "model_name", default=None,
                           help="open_clip model name, hf-hub:ORG/REPO or local-dir:PATH (default: ViT-L-14, with openai weights).")(command)
    return command


def _model(model_name, pretrained, device, download=True):
    from spellbook.embeddings.models import DEFAULT_MODEL, DEFAULT_PRETRAINED, get_model

    if model_name is None:
        model_name, pretrained = DEFAULT_MODEL, pretrained or DEFAULT_PRETRAINED
    return get_model(model_name, pretrained, device, download)


def _run_embedding(task):
    from spellbook.embeddings.embed import EmbedError
    from spellbook.embeddings.models import ModelError
    from spellbook.embeddings.store import StoreError

    try:
        summary = task()
    except (EmbedError, ModelError, StoreError, InputError) as error:
        _fail(error)
    click.echo(summary.report())


@cli.group()
def embed():
    """Fill the vector store beside a database (DB.vectors.db): resumable and idempotent.

    \b
    Example:
        spellbook embed laion spellbook.db laion2B-en/img_emb/
        spellbook embed texts spellbook.db --prompts
        spellbook embed images spellbook.db --generations
    """


_PRECISION = click.option("--precision", type=click.Choice(["float16", "int8"]), default="float16", show_default=True, help="How vectors are stored (float16 keeps recall@10 >= 0.95 at 12M vectors; int8 halves the file: bench/VECTORS.md).")
_PROGRESS = click.option("--progress/--no-progress", default=None, help="Progress bar (default: on when stderr is a terminal).")


@embed.command("laion")
@click.argument("db", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@_model_options
@_PRECISION
@_PROGRESS
def embed_laion(db, paths, model_name, pretrained, device, download, precision, progress):
    """Import LAION's published image embeddings (img_emb_NNNN.npy beside metadata_NNNN.parquet),
    joined to the training images by URL and caption. No model is loaded: --model names the
    model the embeddings were made with (LAION-5B's are OpenAI ViT-L/14, the default).

    \b
    Example:
        spellbook embed laion spellbook.db laion2B-en/img_emb/img_emb_0000.npy
    """
    from spellbook.embeddings.embed import import_laion

    show = sys.stderr.isatty() if progress is None else progress
    _run_embedding(lambda: import_laion(db, paths, _model(model_name, pretrained, device, download), precision, progress=show))


@embed.command("texts")
@click.argument("db", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--captions", is_flag=True, help="Training captions.")
@click.option("--prompts", is_flag=True, help="Prompts (each distinct text once).")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many rows this run.")
@_model_options
@_PRECISION
@_PROGRESS
def embed_texts_command(db, captions, prompts, limit, model_name, pretrained, device, download, precision, progress):
    """Embed training captions and/or prompts with the text tower.

    \b
    Example:
        spellbook embed texts spellbook.db --prompts --model ViT-B-32 --pretrained laion2b_s34b_b79k
    """
    from spellbook.embeddings.embed import embed_texts

    if not captions and not prompts:
        raise click.UsageError("say --captions, --prompts or both")
    show = sys.stderr.isatty() if progress is None else progress
    model = _model(model_name, pretrained, device, download)
    for wanted, collection in ((captions, "training_caption"), (prompts, "generation_prompt")):
        if wanted:
            _run_embedding(lambda: embed_texts(db, model, collection, precision, limit=limit, progress=show))


@embed.command("images")
@click.argument("db", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--generations", is_flag=True, help="Generated images on this machine's disk (image folders, DiffusionDB parts).")
@click.option("--training-urls", is_flag=True, help="Training images fetched by their URLs (every fetch recorded in link_checks).")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many rows this run.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=16, show_default=True, help="URL fetches in flight at once.")
@_model_options
@_PRECISION
@_PROGRESS
def embed_images_command(db, generations, training_urls, limit, concurrency, model_name, pretrained, device, download, precision, progress):
    """Embed images with the image tower: local generated images, or training images by URL.

    \b
    Example:
        spellbook embed images spellbook.db --training-urls --limit 10000 --concurrency 32
    """
    from spellbook.embeddings.embed import embed_images

    if not generations and not training_urls:
        raise click.UsageError("say --generations, --training-urls or both")
    show = sys.stderr.isatty() if progress is None else progress
    model = _model(model_name, pretrained, device, download)
    limits = None
    if training_urls:
        from spellbook.embeddings.fetch import FetchLimits

        limits = FetchLimits(concurrency=concurrency)
    for wanted, collection in ((generations, "generation_image"), (training_urls, "training_image")):
        if wanted:
            _run_embedding(lambda: embed_images(db, model, collection, precision, limit=limit, progress=show, fetch_limits=limits))


@cli.command("index")
@click.argument("db", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rebuild", is_flag=True, help="Build from scratch instead of adding the new vectors.")
def index_command(db, rebuild):
    """Build or extend the similarity index of every collection in DB.vectors.db.

    \b
    Example:
        spellbook index spellbook.db
    """
    from spellbook.embeddings.indexing import build_indexes
    from spellbook.embeddings.store import StoreError

    try:
        summaries = build_indexes(db, rebuild=rebuild)
    except (StoreError, ValueError) as error:
        _fail(error)
    for summary in summaries:
        click.echo(summary.report())
    if not summaries:
        click.echo("no vectors to index (run spellbook embed first)")


def _size(ctx, param, value):
    if value is None:
        return None
    import re

    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", value)
    if not match:
        raise click.BadParameter("give it as WIDTHxHEIGHT, e.g. 512x768")
    return int(match.group(1)), int(match.group(2))


@cli.command("regenerate")
@click.argument("db", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("ids", nargs=-1, type=click.IntRange(0))
@click.option("--query", default=None, help="Also regenerate the prompts matching this full-text search.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="At most this many matches of --query.")
@click.option("--model", default=None, help="Hub id, diffusers folder or .safetensors/.ckpt file (default: the row's checkpoint, or its corpus's model).")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Checkpoints to find by the image's Model hash (A1111's rules).")
@click.option("--lora-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where <lora:NAME:W> tags are looked up.")
@click.option("--embeddings-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Textual-inversion embeddings named in prompts.")
@click.option("--config", "config_dir", default=None, help="Diffusers folder (or hub id) whose configuration single-file checkpoints use.")
@click.option("--device", type=click.Choice(["cuda", "mps", "cpu"]), default=None, help="Where the pipeline runs (default: cuda, then mps, then cpu).")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default=None, help="Weights' precision (default: float16 on GPUs, float32 on the CPU).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder for the PNGs (default: regenerations/ beside DB).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None, help="Override the recorded seed.")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="Override the recorded steps.")
@click.option("--cfg", type=float, default=None, help="Override the recorded CFG scale.")
@click.option("--sampler", default=None, help="Override the sampler (any spelling: 'DPM++ 2M Karras', 'euler_ancestral', 'k_lms').")
@click.option("--size", callback=_size, default=None, metavar="WxH", help="Override the size (rounded to multiples of 8).")
@click.option("--negative", default=None, help="Override the negative prompt.")
@click.option("--init-image", default=None, metavar="PATH|ID", help="Image to image: start from this file, or from generation ID's image.")
@click.option("--strength", type=click.FloatRange(0.0, 1.0), default=None, help="Image to image: how much to change the start image (default 0.75).")
@click.option("--batch-size", type=click.IntRange(1, 64), default=1, show_default=True, help="Images per pipeline call where their settings allow.")
@click.option("--download", is_flag=True, help="Let diffusers fetch models and configurations from the Hugging Face hub.")
@click.option("--compile", "compile_unet", is_flag=True, help="torch.compile the UNet (slow first image, faster after).")
def regenerate_command(db, ids, query, limit, model, models_dir, lora_dir, embeddings_dir, config_dir, device, dtype, out, seed, steps, cfg,
                       sampler, size, negative, init_image, strength, batch_size, download, compile_unet):
    """Regenerate indexed prompts with their own settings on this machine's GPU (or CPU).

    Every setting comes from the indexed row; each option overrides one ("remix"). The PNGs
    carry the generation data as A1111 writes it, and DB.runner.db records every parameter
    used. Whatever cannot be honoured (a LoRA not found, an unknown sampler, a hires-fix pass)
    is printed and recorded.

    \b
    Example:
        spellbook regenerate spellbook.db 1234 --models-dir ~/sd/models/Stable-diffusion --lora-dir ~/sd/models/Lora
        spellbook regenerate spellbook.db --query "greg rutkowski" --limit 20 --model runwayml/stable-diffusion-v1-5 --batch-size 4
        spellbook regenerate spellbook.db 1234 --seed 7 --steps 30 --sampler "DPM++ 2M Karras" --size 512x768
    """
    from spellbook.runner.pipelines import RunnerError
    from spellbook.runner.regenerate import Overrides, RunnerOptions, regenerate

    if not ids and not query:
        raise click.UsageError("give generation IDs, --query, or both")
    width, height = size or (None, None)
    overrides = Overrides(seed=seed, steps=steps, cfg=cfg, sampler=sampler, width=width, height=height, negative=negative,
                          init_image=init_image, strength=strength)
    options = RunnerOptions(model=model, models_dir=models_dir and str(models_dir), lora_dir=lora_dir and str(lora_dir),
                            embeddings_dir=embeddings_dir and str(embeddings_dir), config=config_dir, device=device, dtype=dtype,
                            out=out and str(out), download=download, compile=compile_unet, batch_size=batch_size)
    try:
        results = regenerate(db, ids, overrides, options, query=query, limit=limit)
    except RunnerError as error:
        _fail(error)
    for result in results:
        click.echo(result.report())
    if not results:
        click.echo("nothing to regenerate: no generation matched")
    if any(result.error for result in results):
        sys.exit(1)


@cli.command("check-optout")
@click.argument("db", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sample", type=click.IntRange(1), default=None, help="Check this many images picked at random (default: every image not checked yet).")
@click.option("--domain", default=None, help="Only images from this registered domain.")
@click.option("--recheck", is_flag=True, help="Also images checked before (their result is replaced).")
@click.option("--max-age-days", type=click.FloatRange(0), default=7.0, show_default=True, help="Re-read a site's ai.txt and tdmrep.json when older than this.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--timeout", "total_timeout", type=click.FloatRange(0.5), default=15.0, show_default=True, help="Seconds for one URL (its redirects included).")
@click.option("--retries", type=click.IntRange(0, 5), default=1, show_default=True)
@click.option("--spawning-key", envvar="SPAWNING_OPTS_KEY", default=None, help="A Spawning API key: also ask its Do-Not-Train registry (env SPAWNING_OPTS_KEY).")
@click.option("--spawning-url", default=None, help="The registry's bulk endpoint (default: Spawning's).")
@click.option("--allow-network", "networks", multiple=True, help="A private network the checks may reach (a local mirror), e.g. 10.1.2.0/24 (repeatable).")
@click.option("--seed", type=int, default=None, help="Seed of the random sample.")
def check_optout_command(db, sample, domain, recheck, max_age_days, concurrency, total_timeout, retries, spawning_key, spawning_url, networks, seed):
    """Check whether images' owners opted out of AI training, and store what was found.

    Per image URL: the X-Robots-Tag header (noai, noimageai), TDMRep (the tdm-reservation
    header and the site's /.well-known/tdmrep.json), the site's /ai.txt; with --spawning-key,
    the Spawning Do-Not-Train registry. Requests are bounded (timeouts, size, retries) and never
    go to a private address. Results show on the pages (an "opted out" badge and filter, /-/optout).

    \b
    Example:
        spellbook check-optout spellbook.db --sample 1000
        spellbook check-optout spellbook.db --domain deviantart.net
    """
    from spellbook.embeddings.fetch import FetchLimits
    from spellbook.ingest.optout import SPAWNING_URL, check_optout

    try:
        limits = FetchLimits(concurrency=concurrency, total_timeout=total_timeout, retries=retries, allowed_networks=tuple(networks))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--allow-network") from None

    def progress(done, total):
        click.echo(f"  {done:,} / {total:,}", err=True)

    try:
        summary = check_optout(db, sample=sample, domain=domain, limits=limits, spawning_key=spawning_key,
                               spawning_url=spawning_url or SPAWNING_URL, recheck=recheck, max_age_days=max_age_days, seed=seed, progress=progress)
    except InputError as error:
        _fail(error)
    click.echo(summary.report())


@cli.command("remove")
@click.argument("db", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", "urls", multiple=True, help="A training image's URL (repeatable).")
@click.option("--key", "keys", multiple=True, help="A row's stable key (repeatable).")
@click.option("--hash", "hashes", multiple=True, help="LAION's hash column (repeatable).")
@click.option("--domain", "domains", multiple=True, help="Every training image of a registered domain (repeatable).")
@click.option("--file", "files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="A file of URLs, one a line (repeatable).")
@click.option("--not-in", "releases", multiple=True, type=click.Path(exists=True, path_type=Path), help="A newer release (Re-LAION): remove every training row it no longer has.")
@click.option("--generation", "generations", multiple=True, type=int, help="A generation's id (repeatable).")
@click.option("--reason", required=True, help="Why: shown on the removed rows' pages (410) and in `spellbook removals`.")
@click.option("--by", "requested_by", default=None, help="Who asked for it.")
def remove_command(db, urls, keys, hashes, domains, files, releases, generations, reason, requested_by):
    """Take rows down from every surface: search, similarity, reports, counts, pages (410).

    The rows are deleted with their FTS entries, vectors and counts; their keys are kept so no
    later ingest brings them back. `spellbook publish` leaves no byte of them in the copy.

    \b
    Example:
        spellbook remove spellbook.db --url https://example.com/a.jpg --reason "artist's request #12"
        spellbook remove spellbook.db --not-in relaion2B-en-research-safe/ --reason "not in Re-LAION"
    """
    from spellbook.ingest.removals import remove, remove_missing

    asked = [("url", list(urls) + [line.strip() for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]),
             ("key", keys), ("hash", hashes), ("domain", domains)]
    if not any(values for _, values in asked) and not releases and not generations:
        raise click.UsageError("say what to remove: --url, --key, --hash, --domain, --file, --not-in or --generation")
    try:
        for kind, values in asked:
            if values:
                click.echo(remove(db, kind, values, reason, requested_by=requested_by).report())
        if generations:
            click.echo(remove(db, "id", generations, reason, item="generation", requested_by=requested_by).report())
        if releases:
            click.echo(remove_missing(db, releases, reason).report())
    except InputError as error:
        _fail(error)


@cli.command("removals")
@click.argument("db", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@click.option("--requests", "requests_db", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A removal-requests database (what a hosted site's /-/request-removal form stored): list its requests.")
@click.option("--status", type=click.Choice(["pending", "applied", "rejected"]), default=None, help="With --requests: only those.")
@click.option("--apply", "apply_id", type=click.IntRange(1), default=None, help="With --requests: remove what request ID asks for from DB, and mark it applied.")
@click.option("--reject", "reject_id", type=click.IntRange(1), default=None, help="With --requests: mark request ID rejected.")
@click.option("--by", "decided_by", default=None, help="With --apply or --reject: who decided.")
@click.option("--reason", default=None, help="With --apply: the reason the removed rows' pages show (default: the requester's).")
def removals_command(db, as_json, requests_db, status, apply_id, reject_id, decided_by, reason):
    """List what was removed: what, how many rows, why, who asked, when.

    With --requests, list the removal requests a hosted site's form stored instead, and apply
    (--apply ID: a `spellbook remove` on DB) or reject (--reject ID) one of them. Apply them to
    the source database, then publish again.

    \b
    Example:
        spellbook removals spellbook.db
        spellbook removals spellbook.db --requests removal-requests.db --status pending
        spellbook removals spellbook.db --requests removal-requests.db --apply 12 --by alice
    """
    import json

    if requests_db is None:
        if apply_id or reject_id or status:
            raise click.UsageError("--apply, --reject and --status need --requests REQUESTS_DB")
        _list_removals(db, as_json)
        return
    from spellbook.ingest.removal_requests import RequestError, apply_request, list_requests, reject_request

    if apply_id and reject_id:
        raise click.UsageError("--apply or --reject, not both")
    try:
        if apply_id:
            request, summary = apply_request(requests_db, db, apply_id, by=decided_by, reason=reason)
            click.echo(json.dumps(request, indent=1) if as_json else f"request #{request['id']} applied: {summary.report()}")
            return
        if reject_id:
            request = reject_request(requests_db, reject_id, by=decided_by)
            click.echo(json.dumps(request, indent=1) if as_json else f"request #{request['id']} rejected")
            return
        rows = list_requests(requests_db, status)
    except (RequestError, InputError) as error:
        _fail(error)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for row in rows:
        click.echo(f"#{row['id']}  {row['created_at']}  [{row['status']}]  {row['kind']} {row['value']}: {row['reason']}"
                   + (f" (contact: {row['contact']})" if row["contact"] else ""))
    if not rows:
        click.echo("no requests" + (f" {status}" if status else ""))


def _list_removals(db, as_json):
    import json

    from spellbook.ingest.removals import list_removals

    rows = list_removals(db)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for row in rows:
        click.echo(f"{row['created_at']}  {row['kind']} {row['value']}: {row['rows_removed']:,} rows; {row['reason']}" + (f" (by {row['requested_by']})" if row["requested_by"] else ""))
    if not rows:
        click.echo("nothing removed")


@cli.group()
def publish():
    """Publish databases as a hosted, read-only Spellbook (see README: Publishing).

    \b
    Example:
        spellbook publish docker spellbook.db --out build/
    """


_PUBLISH_OPTIONS = [
    click.argument("dbs", metavar="DB...", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)),
    click.option("--hide-unsafe", type=click.FloatRange(0, 1), default=None, help="Leave out rows whose predicted-unsafe score is at or over this."),
    click.option("--title", default=None, help="The site's title."),
    click.option("--removal-requests", "removal_requests", default=None, metavar="PATH_IN_CONTAINER",
                 help="Turn on the /-/request-removal form, storing requests in this file on a mounted volume (off by default)."),
]


def _publish_options(command):
    for option in reversed(_PUBLISH_OPTIONS):
        command = option(command)
    return command


def _build(dbs, out, hide_unsafe, title, removal_requests=None):
    from spellbook.publish import PublishError, build_context

    try:
        return build_context(list(dbs), out, hide_unsafe, title, removal_requests=removal_requests)
    except (PublishError, InputError) as error:
        _fail(error)


@publish.command("docker")
@_publish_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="The build context to write.")
def publish_docker(dbs, hide_unsafe, title, removal_requests, out):
    """Write a Docker build context: the published databases, an inspect file and a Dockerfile.

    \b
    Example:
        spellbook publish docker spellbook.db --out build/ && docker build -t spellbook build/
    """
    built = _build(dbs, out, hide_unsafe, title, removal_requests)
    click.echo(f"wrote {built['out']}: {', '.join(Path(d['path']).name for d in built['databases'])}, {built['wheel']}, Dockerfile")
    for database in built["databases"]:
        if database["hidden"]:
            click.echo(f"    {database['name']}: {database['hidden']:,} rows hidden as predicted unsafe")


@publish.command("cloudrun")
@_publish_options
@click.option("--service", required=True, help="The Cloud Run service.")
@click.option("--project", default=None, help="The Google Cloud project (default: gcloud's).")
@click.option("--region", default=None)
@click.option("--dry-run", is_flag=True, help="Build the context and print the gcloud commands without running them.")
def publish_cloudrun(dbs, hide_unsafe, title, removal_requests, service, project, region, dry_run):
    """Build the image with Cloud Build and deploy it to Cloud Run.

    \b
    Example:
        spellbook publish cloudrun spellbook.db --service spellbook --region europe-west1
    """
    _deploy("cloudrun", dbs, hide_unsafe, title, service, project, region, dry_run, removal_requests)


@publish.command("fly")
@_publish_options
@click.option("--app", "app", required=True, help="The Fly.io app.")
@click.option("--dry-run", is_flag=True, help="Build the context and print the flyctl command without running it.")
def publish_fly(dbs, hide_unsafe, title, removal_requests, app, dry_run):
    """Deploy to Fly.io with flyctl (a fly.toml beside the Dockerfile).

    \b
    Example:
        spellbook publish fly spellbook.db --app my-spellbook
    """
    _deploy("fly", dbs, hide_unsafe, title, app, None, None, dry_run, removal_requests)


def _deploy(target, dbs, hide_unsafe, title, name, project, region, dry_run, removal_requests=None):
    from spellbook.publish import PublishError, deploy, deploy_commands, temporary_context

    context = temporary_context()
    _build(dbs, context, hide_unsafe, title, removal_requests)
    try:
        for line in deploy(deploy_commands(target, context, name, project, region), dry_run):
            click.echo(("would run: " if dry_run else "ran: ") + line)
    except PublishError as error:
        _fail(error)
    click.echo(f"build context: {context}")


@cli.command()
@click.argument("dbs", metavar="DB...", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8001, show_default=True)
@click.option("--metadata", "metadata_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Datasette metadata (default: Spellbook's metadata.yml).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Datasette configuration, datasette.yaml (default: Spellbook's).")
@click.option("--local-images/--no-local-images", default=True, show_default=True, help="Show generated images from this machine's disk (never on a published instance).")
@click.option("--model", "model_name", default=None, help="The model that encodes similarity queries (default: the one the vectors were made with).")
@click.option("--pretrained", default=None, help="Its open_clip pretrained tag or checkpoint file.")
@click.option("--enable-runner", is_flag=True, help="Regenerate button and queue on prompt pages, with a worker on this machine (never on a published instance).")
@click.option("--removal-requests", "removal_requests", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Turn on the /-/request-removal form, storing requests in this file (created if missing; never one of DB...).")
def serve(dbs, host, port, metadata_path, config_path, local_images, model_name, pretrained, enable_runner, removal_requests):
    """Serve Spellbook databases read-only in Datasette, with Spellbook's pages.

    Runs `datasette serve --immutable DB ...` with Spellbook's metadata and settings; the
    pages themselves come with the installed package, so plain `datasette serve` shows them too
    (without local images unless its configuration turns `local_images` on).

    \b
    Example:
        spellbook serve spellbook.db --port 8001
        spellbook serve spellbook.db --removal-requests removal-requests.db
        SPELLBOOK_MODELS_DIR=~/sd/models/Stable-diffusion spellbook serve spellbook.db --enable-runner
    """
    import os

    from spellbook.site import SERVER_ENV, datasette_args

    args = datasette_args(*dbs, metadata_path=metadata_path, config_path=config_path) + ["--host", host, "--port", str(port)]
    if local_images:
        os.environ["SPELLBOOK_LOCAL_IMAGES"] = "1"
    else:
        os.environ.pop("SPELLBOOK_LOCAL_IMAGES", None)
    for name, value in (("SPELLBOOK_MODEL", model_name), ("SPELLBOOK_PRETRAINED", pretrained)):
        if value:
            os.environ[name] = value
    if removal_requests:
        if any(removal_requests.resolve() == Path(db).resolve() for db in dbs):
            raise click.UsageError("--removal-requests is a file of its own, not one of the databases served")
        os.environ["SPELLBOOK_REMOVAL_REQUESTS_DB"] = str(removal_requests.resolve())
    else:
        os.environ.pop("SPELLBOOK_REMOVAL_REQUESTS_DB", None)
    if enable_runner:
        from spellbook.runner.serving import serve_with_worker

        os.environ["SPELLBOOK_RUNNER"] = "1"
        sys.exit(serve_with_worker([sys.executable, "-m", "datasette", *args], [str(db) for db in dbs]))
    os.environ.pop("SPELLBOOK_RUNNER", None)
    for name, value in SERVER_ENV.items():
        os.environ.setdefault(name, value)
    os.execvp(sys.executable, [sys.executable, "-m", "datasette", *args])


if __name__ == "__main__":
    cli()
