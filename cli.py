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


@cli.command()
@click.argument("dbs", metavar="DB...", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8001, show_default=True)
@click.option("--metadata", "metadata_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Datasette metadata (default: Spellbook's metadata.yml).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Datasette configuration, datasette.yaml (default: Spellbook's).")
@click.option("--local-images/--no-local-images", default=True, show_default=True, help="Show generated images from this machine's disk (never on a published instance).")
def serve(dbs, host, port, metadata_path, config_path, local_images):
    """Serve Spellbook databases read-only in Datasette, with Spellbook's pages.

    Runs `datasette serve --immutable DB ...` with Spellbook's metadata and settings; the
    pages themselves come with the installed package, so plain `datasette serve` shows them too
    (without local images unless its configuration turns `local_images` on).

    \b
    Example:
        spellbook serve spellbook.db --port 8001
    """
    import os

    from spellbook.site import datasette_args

    args = datasette_args(*dbs, metadata_path=metadata_path, config_path=config_path) + ["--host", host, "--port", str(port)]
    if local_images:
        os.environ["SPELLBOOK_LOCAL_IMAGES"] = "1"
    else:
        os.environ.pop("SPELLBOOK_LOCAL_IMAGES", None)
    os.execvp(sys.executable, [sys.executable, "-m", "datasette", *args])


if __name__ == "__main__":
    cli()
